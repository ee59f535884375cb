// Chrome-trace timeline (chrome://tracing, Perfetto): complete events per rank and thread.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace dtrain::engine {

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;
  enum Track : int { kCompute = 0, kComm = 1 };

  explicit Timeline(bool enabled) : enabled_(enabled), origin_(Clock::now()) {}
  bool enabled() const { return enabled_; }
  void record(const std::string& name, Track track, Clock::time_point start, Clock::time_point end,
              int64_t step, int bucket = -1);
  // This rank's events as a JSON array body (comma-separated objects, pid = rank).
  std::string events_json(int rank) const;

 private:
  struct Event {
    std::string name;
    int track;
    double ts_us, dur_us;
    int64_t step;
    int bucket;
  };
  bool enabled_;
  Clock::time_point origin_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
};

}  // namespace dtrain::engine
