// Small helpers the bench subcommands share: sizes with units, percentiles of timings, and the
// slowest rank's time of a collective.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::app {

// "4K", "64M", "1G", "100MB" (powers of two for K/M/G; "MB" is 10^6); `flag` names the option in
// errors.
size_t parse_size(const std::string& s, const std::string& flag);
// 1536 -> "1.5K".
std::string human_size(size_t bytes);
// The p-quantile (0..1) by nearest rank; 0 for an empty list.
double percentile(std::vector<double> v, double p);
// The maximum of `secs` over the ranks of g (every rank gets it).
double slowest(comm::Group& g, double secs);
// Writes `results` (indented) to the --json file at path; IoError naming it if that fails.
void write_json_file(const std::string& path, const nlohmann::json& results);

}  // namespace dtrain::app
