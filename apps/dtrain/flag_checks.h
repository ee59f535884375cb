// Checks of numeric flags whose errors say in words what is wrong, with the value given, e.g.
// "--workers: must be an integer from 1 to 256 (got abc)" (CLI11 prepends the flag name). They
// run while the command line is parsed, so a bad value fails once, before any rank starts.
// CLI11's own CLI::Range / PositiveNumber are not used: their messages print the bounds as
// doubles ("Value 0 not in range 0.000000 to 179769...", 300 digits).
#pragma once

#include <CLI/CLI.hpp>

#include <cstddef>
#include <limits>
#include <string>

namespace dtrain::app {

// An integer in [lo, hi]: "must be an integer from lo to hi (got x)".
CLI::Validator integer_in(long long lo, long long hi);

// An integer >= 1: "must be a positive integer (got x)".
CLI::Validator positive_integer();

// A finite number > 0, at most `max`: "must be a positive number (got x)", or "must be a
// positive number of at most max (got x)" when a bound is given.
CLI::Validator positive_number(double max = std::numeric_limits<double>::infinity());

// A size as parse_size() reads it ("4K", "64M", "100MB") of at least `min_bytes`: "must be a size
// such as 4K, 64M, 1G or 100MB (got x)", or "must be at least <min_what> (got x)", where
// `min_what` says the least in words, e.g. "4 bytes (one float)".
CLI::Validator size_at_least(size_t min_bytes, const std::string& min_what);

}  // namespace dtrain::app
