// Parsing and naming of the consistency models (see dtrain/ps/consistency.h).
#include "dtrain/ps/consistency.h"

#include "dtrain/common/error.h"
#include "dtrain/reduce/params.h"

namespace dtrain::ps {

Consistency Consistency::parse(const std::string& spec, const std::string& flag) {
  Consistency c;
  if (spec == "bsp") {
    c.tau = 0;
    return c;
  }
  if (spec == "async") return c;
  const size_t colon = spec.find(':');
  if (spec.substr(0, colon) == "bounded") {
    DT_ENFORCE(colon != std::string::npos, flag, ": 'bounded' needs a delay, e.g. bounded:4");
    const auto p = reduce::parse_params("bounded", spec.substr(colon + 1), {"tau"}, flag);
    DT_ENFORCE(p.has("tau"), flag, ": 'bounded' needs a delay, e.g. bounded:4");
    c.tau = static_cast<int64_t>(p.get_size("tau", 0, 0, size_t(1) << 40));
    return c;
  }
  DT_THROW(InvalidArgument, flag, ": unknown consistency model '", spec,
           "' (valid: bsp, async, bounded:T)");
}

std::string Consistency::str() const {
  if (tau == kUnbounded) return "async";
  if (tau == 0) return "bsp";
  return "bounded:" + std::to_string(tau);
}

}  // namespace dtrain::ps
