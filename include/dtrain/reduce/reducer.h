// GradientReducer: what the engine calls on each bucket of gradients. It leaves the aggregated
// (averaged) gradient in place and counts the bytes it moved. Implementations combine a compressor
// with a communication pattern; a spec string picks one (`dense`, `omnireduce:block=256`,
// `topk:0.01`, `exdyna:0.001`, `qcs:rows=32`).
//
// The protocol, run on one thread, in the same order on every rank:
//   set_layout(layout)          before the first step, and again whenever the buckets change
//                               (a new MG-WFBP plan, a bucket rebuild); the reducer resets or
//                               re-keys its per-bucket state in on_layout()
//   begin_step(step)            once per step, before its first bucket
//   reduce(b, grad)             for b = 0, 1, ..., B-1, in bucket-index order
//   end_step()                  after the last bucket of the step
// A reducer therefore knows which bucket it reduces, the parameters (names, shapes) in it, and
// where a step begins and ends; it never counts its own calls. reduce_step() runs a whole step
// for callers that hold their buckets themselves (tests, benchmarks).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/collective/allreduce.h"
#include "dtrain/comm/group.h"

namespace dtrain::reduce {

// One parameter's place in a bucket: elements [offset, offset + numel) of the bucket.
struct TensorSlot {
  std::string name;
  std::vector<int64_t> shape;  // empty: a flat vector of numel elements
  size_t offset = 0;
  size_t numel = 0;
  bool operator==(const TensorSlot&) const = default;
};

struct BucketLayout {
  size_t numel = 0;
  std::vector<TensorSlot> tensors;
  bool operator==(const BucketLayout&) const = default;
};

struct Layout {
  std::vector<BucketLayout> buckets;
  // One flat tensor per bucket ("bucket<i>"), for callers without parameter shapes.
  static Layout flat(std::span<const size_t> bucket_sizes);
  bool operator==(const Layout&) const = default;
};

class GradientReducer {
 public:
  virtual ~GradientReducer() = default;

  // Installs the bucket layout. When it differs from the current one, on_layout() is called so
  // the reducer can reset or re-key its per-bucket state. Not during a step.
  void set_layout(const Layout& layout);
  const Layout& layout() const { return layout_; }
  virtual void begin_step(uint64_t step);
  // Reduce bucket `bucket` in place. grad.size() must be the layout's numel for the bucket.
  virtual void reduce(size_t bucket, std::span<float> grad) = 0;
  virtual void end_step();

  // A whole step over `buckets` (in bucket order); installs Layout::flat of their sizes when no
  // layout is set yet. A later size change is an InvalidArgument naming the bucket.
  void reduce_step(uint64_t step, std::span<const std::span<float>> buckets);
  void reduce_step(uint64_t step, std::span<float> bucket);

  virtual std::string name() const = 0;
  // Bytes this rank has sent and received so far (payload on the wire).
  uint64_t bytes_sent() const { return bytes_sent_; }
  uint64_t bytes_received() const { return bytes_received_; }
  // Reducer state saved in checkpoints (e.g. error-feedback residuals); empty by default. The
  // state belongs to the current layout: restore the layout first, then the state.
  virtual std::vector<std::byte> save_state() const { return {}; }
  virtual void load_state(std::span<const std::byte> state);
  // Figures of the latest step worth logging (e.g. ExDyna's achieved density, threshold and
  // imbalance; OmniReduce's union density), as (name, value) pairs. The trainer writes them into
  // its per-step metrics records. Empty by default.
  virtual std::vector<std::pair<std::string, double>> step_metrics() const { return {}; }
  // Vector-valued figures of the latest step, returned at a low rate (e.g. ExDyna's
  // per-partition counts every 50 steps); the trainer writes them like step_metrics().
  virtual std::vector<std::pair<std::string, std::vector<double>>> step_vectors() const {
    return {};
  }
  // True if the reducer applies momentum itself (momentum correction): the optimizer must not
  // apply it a second time.
  virtual bool applies_momentum() const { return false; }

 protected:
  // Called by set_layout() after layout() has changed; `previous` is the old layout (empty
  // before the first). The default keeps nothing per bucket, so does nothing.
  virtual void on_layout(const Layout& previous) {}
  // Throws InvalidArgument unless `bucket` exists in the layout with grad_size elements.
  void check_bucket(size_t bucket, size_t grad_size) const;
  uint64_t step() const { return step_; }
  bool in_step() const { return in_step_; }

  uint64_t bytes_sent_ = 0;
  uint64_t bytes_received_ = 0;

 private:
  Layout layout_;
  uint64_t step_ = 0;
  bool in_step_ = false;
};

// Averages with our allreduce (ring for large buckets, halving-doubling for small ones): each
// rank sends and receives about 2(N-1)/N of the bucket. The call agreement (sizes, type, op) is
// checked on the first step of each layout and after a reconnect(); later calls skip that round
// (a mismatch then never pairs and fails at the deadline, naming the ranks).
class DenseReducer : public GradientReducer {
 public:
  explicit DenseReducer(comm::Group& group) : group_(group) {}
  void reduce(size_t bucket, std::span<float> grad) override;
  std::string name() const override { return "dense"; }
  // Which allreduce runs at which size. Algorithms add in different orders, so a checkpoint
  // stores it and a resumed run sets it back (bit-exact resume across versions of the default).
  const collective::AllreduceSwitch& size_switch() const { return switch_; }
  void set_size_switch(const collective::AllreduceSwitch& s);

 protected:
  void on_layout(const Layout& previous) override;

 private:
  comm::Group& group_;
  collective::AllreduceSwitch switch_;
  std::vector<bool> verified_;  // per bucket, for verified_generation_
  uint64_t verified_generation_ = 0;
};

// Names the registry knows, for help texts and errors.
std::vector<std::string> reducer_names();
// Builds a reducer from a spec like "dense". Throws InvalidArgument listing the valid names.
std::unique_ptr<GradientReducer> make_reducer(const std::string& spec, comm::Group& group);
// Parses and checks a spec as make_reducer does, through the same parsing functions, and throws
// the same InvalidArgument, without a Group (the CLI checks --reduce before workers start).
void validate_reducer_spec(const std::string& spec);

// Density warm-up (Deep Gradient Compression), shared by the sparsifying reducers' `warmup=W`:
// the density sent at step t is
//   d(t) = d0 (target / d0)^(t / W)  for t < W,   target for t >= W (and when W = 0),
// with d0 = max(kWarmupStart, target): a geometric interpolation from mildly sparse (a quarter
// of the entries) at step 0 down to the target at step W, the same relative decrease every step
// (a threshold-controlled reducer such as ExDyna can follow it). t is the step number the
// reducer is given (begin_step), so a resumed run continues the same schedule.
constexpr double kWarmupStart = 0.25;
double warmup_density(double target, uint64_t warmup, uint64_t step);

}  // namespace dtrain::reduce
