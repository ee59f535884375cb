// Test-set evaluation and time to accuracy (internal to train/).
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>

#include "data_source.h"
#include "dtrain/comm/group.h"
#include "dtrain/torch/models.h"

namespace dtrain::train {

// Test accuracy and mean loss of `model`, each rank evaluating a contiguous slice of the test set
// and the sums combined. All ranks call it; every rank must hold the same model.
std::pair<double, double> evaluate(torchx::Net& model, const TensorData& data, comm::Group& group);
// The same on one process, over the whole test set (Downpour's lead replica).
std::pair<double, double> evaluate(torchx::Net& model, const TensorData& data);

// The training clock: wall time since start() minus the time spent in pauses (evaluations).
class TrainingClock {
 public:
  using Clock = std::chrono::steady_clock;
  void start() { start_ = Clock::now(); }
  void pause() { paused_at_ = Clock::now(); }
  void resume() { paused_s_ += std::chrono::duration<double>(Clock::now() - paused_at_).count(); }
  double elapsed() const {
    return std::chrono::duration<double>(Clock::now() - start_).count() - paused_s_;
  }
  double paused() const { return paused_s_; }

 private:
  Clock::time_point start_ = Clock::now(), paused_at_ = start_;
  double paused_s_ = 0;
};

// When the target accuracy counts as reached: at the second of two consecutive evaluations at
// or above it (one lucky evaluation is not enough), at that evaluation's training-clock time.
class TargetTracker {
 public:
  explicit TargetTracker(double target) : target_(target) {}
  // Records an evaluation; true exactly once, at the evaluation that reaches the target.
  bool add(int64_t step, double time_s, double accuracy);
  bool enabled() const { return target_ > 0; }
  bool reached() const { return reached_step_ >= 0; }
  int64_t reached_step() const { return reached_step_; }
  double reached_time_s() const { return reached_time_s_; }
  double target() const { return target_; }
  // For checkpoints: a resumed run continues the pair of evaluations and keeps a reached target.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

 private:
  double target_;
  bool previous_at_target_ = false;
  int64_t reached_step_ = -1;
  double reached_time_s_ = -1;
};

}  // namespace dtrain::train
