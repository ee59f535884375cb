// What rank 0 tells the user while training: metrics.jsonl records and a progress display
// (a bar redrawn in place on a terminal, plain lines otherwise, nothing when quiet).
#pragma once

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace dtrain::train {

class MetricsLog {
 public:
  MetricsLog() = default;
  // Appends to DIR/metrics.jsonl (when dir is not empty).
  explicit MetricsLog(const std::string& dir, bool append);
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
  std::string path_;
};

class Progress {
 public:
  Progress(bool quiet, int64_t steps_per_epoch);
  void step(int epoch, int64_t step_in_epoch, double loss, double samples_per_s, double mb_sent);
  void epoch_done(const std::string& line);

 private:
  bool quiet_;
  bool tty_;
  int64_t steps_per_epoch_;
  int64_t last_plain_ = -1;
};

}  // namespace dtrain::train
