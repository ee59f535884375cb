// The gradient engine: gradient memory in buckets, a background communication thread, and the
// step barrier.
//
// All gradients live in one flat buffer laid out in the order backprop produces them; a bucket
// is a contiguous range of it. LibTorch's .grad of each parameter is a view of its range (see
// torch/grad_views.h), so backprop accumulates straight into bucket memory and the reducers
// average it in place: no copy in, no copy back. A post hook on each parameter's gradient
// accumulator calls mark_ready(); callers without LibTorch hand gradients to on_gradient(), which
// adds them in. A bucket whose parameters are all ready goes to the communication thread, which
// reduces buckets strictly in bucket-index order on every rank (never in readiness order, which
// differs between ranks and would pair up different buckets: a hang). finish() waits for all
// buckets, so the optimizer sees averaged gradients; communication of early buckets overlaps the
// rest of backprop.
//
// A step may span several micro-batches (gradient accumulation): begin_step() zeroes the memory,
// micro-batches before the last only accumulate, and the last one (next_micro_batch() up to
// micro_batches - 1) triggers the reductions. A gradient that arrives for a parameter whose
// bucket is already handed over is an error naming the parameter and step, raised before the
// memory is touched (from the accumulator's pre hook, or on_gradient()).
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

// --schedule single | wfbp | fused[:MB] | mgwfbp
struct Schedule {
  enum class Kind { kSingle, kWfbp, kFused, kMgwfbp } kind = Kind::kFused;
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
  std::vector<int64_t> shape;  // empty: flat
};

// Buckets as lists of parameter indices, given parameters in readiness order. mgwfbp has no
// fixed buckets: it starts as `single` while it measures, then installs its plan (mgwfbp.h).
using Buckets = std::vector<std::vector<size_t>>;
Buckets plan_buckets(const std::vector<ParamInfo>& params, const std::vector<size_t>& ready_order,
                     const Schedule& schedule);

struct EngineStats {
  double comm_s = 0;    // time the communication thread spent reducing
  double wait_s = 0;    // time finish() blocked (communication not hidden)
  double hidden_s = 0;  // communication that ran while backprop was still running
  uint64_t skipped_steps = 0;
};

class GradientEngine {
 public:
  // `buckets` must list every parameter exactly once.
  GradientEngine(std::vector<ParamInfo> params, Buckets buckets,
                 std::unique_ptr<reduce::GradientReducer> reducer, OnNonFinite on_nonfinite,
                 Timeline* timeline);
  // Buckets from plan_buckets with readiness = reverse registration order.
  GradientEngine(std::vector<ParamInfo> params, const Schedule& schedule,
                 std::unique_ptr<reduce::GradientReducer> reducer, OnNonFinite on_nonfinite,
                 Timeline* timeline);
  ~GradientEngine();
  GradientEngine(const GradientEngine&) = delete;
  GradientEngine& operator=(const GradientEngine&) = delete;

  // Installs a new bucket layout (between steps) and tells the reducer. When the parameters'
  // order is unchanged the gradient memory stays where it is; otherwise it moves and
  // memory_version() changes (views must be re-attached). The gradients held are kept.
  void set_buckets(Buckets buckets);
  const Buckets& buckets() const { return buckets_list_; }
  uint64_t memory_version() const { return memory_version_; }
  // The parameter's range of the gradient memory (what its .grad views).
  std::span<float> grad_memory(size_t index);

  // Starts a step of `micro_batches` micro-batches: zeroes the gradient memory. A step with
  // communicate = false (Local SGD's local steps) accumulates the gradients and reduces nothing:
  // finish() only checks them, and each rank's optimizer steps on its own gradient.
  void begin_step(int64_t step, int micro_batches = 1, bool communicate = true);
  // Moves to the next micro-batch of the step; the last one reduces.
  void next_micro_batch();
  // Backprop of the current micro-batch starts now (times readiness for the cost model).
  void backward_started();
  // Throws InvalidArgument if a gradient of param `index` may not be accumulated now (its bucket
  // was handed to communication this step, or no step is open). Touches nothing.
  void check_accumulate(size_t index);
  // Param `index`'s gradient has been accumulated into grad_memory(index) (LibTorch path).
  void mark_ready(size_t index);
  // Adds `grad` into grad_memory(index), then mark_ready (callers without LibTorch).
  void on_gradient(size_t index, std::span<const float> grad);
  // Marks parameters that received no gradient (they contribute what they hold: zeros unless an
  // earlier micro-batch reached them), waits for every bucket, rethrows a communication error.
  // Returns false when the step must be skipped (non-finite gradient with OnNonFinite::kSkip);
  // throws Error naming the bucket's parameters with kAbort.
  bool finish();
  // The reduced gradient of a parameter (valid after finish()).
  std::span<const float> reduced(size_t index) const;

  size_t num_params() const { return params_.size(); }
  const ParamInfo& param(size_t index) const { return params_[index]; }
  size_t num_buckets() const { return buckets_.size(); }
  const std::vector<size_t>& bucket_params(size_t b) const { return buckets_list_[b]; }
  const EngineStats& stats() const { return stats_; }
  reduce::GradientReducer& reducer() { return *reducer_; }
  const reduce::GradientReducer& reducer() const { return *reducer_; }
  // Of the latest reducing micro-batch: parameters in the order their gradients became ready,
  // and for each parameter the seconds from backward_started() to its readiness (-1: none).
  const std::vector<size_t>& ready_order() const { return ready_order_; }
  const std::vector<double>& ready_seconds() const { return ready_s_; }

 private:
  struct Bucket {
    size_t begin = 0, end = 0;  // elements of memory_
    size_t pending = 0;
    bool ready = false;
    bool nonfinite = false;
    std::chrono::steady_clock::time_point comm_start, comm_end;
  };
  void comm_loop();
  void note_ready(size_t index);                     // with mu_ held
  void check_accumulate_locked(size_t index) const;  // with mu_ held
  bool check_finite();  // finish()'s verdict on the buckets' non-finite flags
  bool last_micro_batch() const { return micro_ + 1 == micro_batches_; }
  bool reducing() const { return communicate_ && last_micro_batch(); }

  std::vector<ParamInfo> params_;
  Buckets buckets_list_;
  std::vector<float> memory_;
  uint64_t memory_version_ = 0;
  std::vector<size_t> bucket_of_;  // param -> bucket
  std::vector<size_t> offset_of_;  // param -> element offset in memory_
  std::vector<bool> seen_;
  std::vector<Bucket> buckets_;
  std::unique_ptr<reduce::GradientReducer> reducer_;
  OnNonFinite on_nonfinite_;
  Timeline* timeline_;
  EngineStats stats_;
  std::vector<size_t> ready_order_;
  std::vector<double> ready_s_;

  std::mutex mu_;
  std::condition_variable cv_;
  int64_t step_ = -1;
  int micro_batches_ = 1;
  int micro_ = 0;
  bool communicate_ = true;
  std::chrono::steady_clock::time_point step_start_;  // backprop of the reducing batch
  size_t next_ = 0;                                   // next bucket index the comm thread reduces
  size_t done_count_ = 0;
  bool in_step_ = false;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread comm_;
};

}  // namespace dtrain::engine
