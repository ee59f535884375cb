#include "dtrain/engine/timeline.h"

#include <nlohmann/json.hpp>

namespace dtrain::engine {

void Timeline::record(const std::string& name, Track track, Clock::time_point start,
                      Clock::time_point end, int64_t step, int bucket) {
  if (!enabled_) return;
  auto us = [&](Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(t - origin_).count();
  };
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back({name, track, us(start), us(end) - us(start), step, bucket});
}

std::string Timeline::events_json(int rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& e : events_) {
    nlohmann::json j = {{"name", e.name}, {"ph", "X"},     {"pid", rank},
                        {"tid", e.track}, {"ts", e.ts_us}, {"dur", e.dur_us}};
    j["args"] = {{"step", e.step}};
    if (e.bucket >= 0) j["args"]["bucket"] = e.bucket;
    if (!out.empty()) out += ",\n";
    out += j.dump();
  }
  return out;
}

}  // namespace dtrain::engine
