// The gradient engine: buckets, a background communication thread, and the step barrier.
//
// Parameters are assigned to buckets in the order backprop produces their gradients (reverse
// registration order). As each gradient arrives (from a LibTorch hook) it is copied into its
// bucket; a full bucket is handed to one communication thread, which reduces buckets strictly in
// bucket-index order on every rank (never in readiness order, which differs between ranks and
// would pair up different buckets: a hang). finish() waits for all buckets, so the optimizer
// sees averaged gradients; communication of early buckets overlaps the rest of backprop.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/engine/timeline.h"
#include "dtrain/reduce/reducer.h"

namespace dtrain::engine {

// --schedule single | wfbp | fused[:MB]
struct Schedule {
  enum class Kind { kSingle, kWfbp, kFused } kind = Kind::kFused;
  double fused_mb = 25;  // bucket cap for fused (PyTorch DDP's default)
  double first_mb = 1;   // the first bucket is small so communication starts early
  static Schedule parse(const std::string& spec);
  std::string str() const;
};

enum class OnNonFinite { kAbort, kSkip };
OnNonFinite parse_on_nonfinite(const std::string& s);

struct ParamInfo {
  std::string name;
  size_t numel = 0;
};

// Buckets as lists of parameter indices, given parameters in readiness order.
std::vector<std::vector<size_t>> plan_buckets(const std::vector<ParamInfo>& params,
                                              const std::vector<size_t>& ready_order,
                                              const Schedule& schedule);

struct EngineStats {
  double comm_s = 0;    // time the communication thread spent reducing
  double wait_s = 0;    // time finish() blocked (communication not hidden)
  double hidden_s = 0;  // communication that ran while backprop was still running
  uint64_t skipped_steps = 0;
};

class GradientEngine {
 public:
  GradientEngine(std::vector<ParamInfo> params, const Schedule& schedule,
                 std::unique_ptr<reduce::GradientReducer> reducer, OnNonFinite on_nonfinite,
                 Timeline* timeline);
  ~GradientEngine();
  GradientEngine(const GradientEngine&) = delete;
  GradientEngine& operator=(const GradientEngine&) = delete;

  void begin_step(int64_t step);
  // Param `index`'s gradient is ready (called from backprop).
  void on_gradient(size_t index, std::span<const float> grad);
  // Zero-fills parameters that received no gradient, waits for every bucket, rethrows a
  // communication error. Returns false when the step must be skipped (non-finite gradient with
  // OnNonFinite::kSkip); throws Error naming the bucket's parameters with kAbort.
  bool finish();
  // The reduced gradient of a parameter (valid after finish()).
  std::span<const float> reduced(size_t index) const;

  size_t num_buckets() const { return buckets_.size(); }
  const std::vector<size_t>& bucket_params(size_t b) const { return buckets_[b].params; }
  const EngineStats& stats() const { return stats_; }
  reduce::GradientReducer& reducer() { return *reducer_; }

 private:
  struct Bucket {
    std::vector<size_t> params;
    std::vector<size_t> offsets;
    std::vector<float> data;
    size_t pending = 0;
    bool ready = false;
    bool done = false;
    bool nonfinite = false;
    std::chrono::steady_clock::time_point comm_start, comm_end;
  };
  void comm_loop();
  void mark_ready(size_t bucket);  // with mu_ held

  std::vector<ParamInfo> params_;
  std::vector<size_t> bucket_of_;  // param -> bucket
  std::vector<size_t> offset_of_;  // param -> offset in bucket
  std::vector<bool> seen_;
  std::vector<Bucket> buckets_;
  std::unique_ptr<reduce::GradientReducer> reducer_;
  OnNonFinite on_nonfinite_;
  Timeline* timeline_;
  EngineStats stats_;

  std::mutex mu_;
  std::condition_variable cv_;
  int64_t step_ = -1;
  std::chrono::steady_clock::time_point step_start_;  // backprop begins right after begin_step
  size_t next_ = 0;                                   // next bucket index the comm thread reduces
  size_t done_count_ = 0;
  bool in_step_ = false;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread comm_;
};

}  // namespace dtrain::engine
