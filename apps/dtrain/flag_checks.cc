#include "flag_checks.h"

#include <charconv>
#include <cmath>

#include "bench_util.h"
#include "dtrain/common/error.h"

namespace dtrain::app {
namespace {

// The whole of `s` as a number of type T, else false.
template <typename T>
bool parse_whole(const std::string& s, T& out) {
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && ptr == end;
}

std::string got(const std::string& input) {
  return " (got " + (input.empty() ? std::string("nothing") : input) + ")";
}

// Shortest text of a bound: 31536000, not 31536000.000000 or 3.1536e+07.
std::string number_text(double v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

}  // namespace

CLI::Validator integer_in(long long lo, long long hi) {
  return CLI::Validator(
      [lo, hi](std::string& input) {
        long long v = 0;
        if (parse_whole(input, v) && v >= lo && v <= hi) return std::string();
        return "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
               got(input);
      },
      "INT in [" + std::to_string(lo) + " - " + std::to_string(hi) + "]");
}

CLI::Validator positive_integer() {
  return CLI::Validator(
      [](std::string& input) {
        long long v = 0;
        if (parse_whole(input, v) && v >= 1) return std::string();
        return "must be a positive integer" + got(input);
      },
      "POSITIVE");
}

CLI::Validator positive_number(double max) {
  const bool bounded = std::isfinite(max);
  return CLI::Validator(
      [max, bounded](std::string& input) {
        double v = 0;
        if (parse_whole(input, v) && std::isfinite(v) && v > 0 && v <= max) return std::string();
        return "must be a positive number" +
               (bounded ? " of at most " + number_text(max) : std::string()) + got(input);
      },
      bounded ? "POSITIVE <= " + number_text(max) : "POSITIVE");
}

CLI::Validator size_at_least(size_t min_bytes, const std::string& min_what) {
  return CLI::Validator(
      [min_bytes, min_what](std::string& input) {
        size_t bytes = 0;
        try {
          bytes = parse_size(input, "size");
        } catch (const Error&) {
          return "must be a size such as 4K, 64M, 1G or 100MB" + got(input);
        }
        if (bytes < min_bytes) return "must be at least " + min_what + got(input);
        return std::string();
      },
      "SIZE >= " + human_size(min_bytes));
}

}  // namespace dtrain::app
