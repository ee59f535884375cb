#include "bench_util.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"

namespace dtrain::app {

size_t parse_size(const std::string& s, const std::string& flag) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    throw InvalidArgument(flag + ": '" + s + "' is not a size (e.g. 4K, 64M, 1G, 100MB)");
  }
  const std::string unit = s.substr(pos);
  double mult = 1;
  if (unit == "K" || unit == "KiB")
    mult = 1 << 10;
  else if (unit == "M" || unit == "MiB")
    mult = 1 << 20;
  else if (unit == "G" || unit == "GiB")
    mult = double(1 << 30);
  else if (unit == "KB")
    mult = 1e3;
  else if (unit == "MB")
    mult = 1e6;
  else if (unit == "GB")
    mult = 1e9;
  else if (!unit.empty() && unit != "B")
    throw InvalidArgument(flag + ": unit of '" + s + "' is not one of B, K, M, G, KB, MB, GB");
  // Also keeps the cast below defined: no NaN, infinity or negative count of bytes.
  if (!std::isfinite(v) || v < 0 || v * mult > 0x1p62) {
    throw InvalidArgument(flag + ": '" + s + "' is not a size (e.g. 4K, 64M, 1G, 100MB)");
  }
  return static_cast<size_t>(v * mult);
}

std::string human_size(size_t bytes) {
  if (bytes >= (1u << 30)) return detail::concat(bytes / double(1u << 30), "G");
  if (bytes >= (1u << 20)) return detail::concat(bytes / double(1u << 20), "M");
  if (bytes >= (1u << 10)) return detail::concat(bytes / double(1u << 10), "K");
  return detail::concat(bytes, "B");
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(p * v.size())) - (p > 0 ? 1 : 0);
  return v[std::min(i, v.size() - 1)];
}

double slowest(comm::Group& g, double secs) {
  collective::AllreduceOptions m(g);
  m.output = collective::View(&secs, 1, collective::DataType::kFloat64);
  m.op = collective::ReduceOp::kMax;
  collective::allreduce(m);
  return secs;
}

void write_json_file(const std::string& path, const nlohmann::json& results) {
  std::ofstream out(path);
  out << results.dump(2) << "\n";
  out.close();
  if (!out) throw IoError("cannot write --json file " + path);
}

}  // namespace dtrain::app
