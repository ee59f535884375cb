// GradientReducer: what the engine calls on each bucket of gradients. It leaves the aggregated
// (averaged) gradient in place and counts the bytes it moved. Implementations combine a compressor
// with a communication pattern; a spec string picks one (`dense`, later `omnireduce:block=256`,
// `topk:0.01+allgather`, `exdyna:0.001`, `qcs:ratio=32`).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::reduce {

class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  // Reduce one bucket in place. Called in bucket-index order, the same order on every rank.
  virtual void reduce(std::span<float> grad, uint64_t step) = 0;
  virtual std::string name() const = 0;
  // Bytes this rank has sent and received so far (payload on the wire).
  uint64_t bytes_sent() const { return bytes_sent_; }
  uint64_t bytes_received() const { return bytes_received_; }
  // Reducer state saved in checkpoints (e.g. error-feedback residuals); empty by default.
  virtual std::vector<std::byte> save_state() const { return {}; }
  virtual void load_state(std::span<const std::byte> state);
  // Figures of the latest step worth logging (e.g. ExDyna's achieved density, threshold and
  // imbalance; OmniReduce's union density), as (name, value) pairs. The trainer writes them into
  // its per-step metrics records. Empty by default.
  virtual std::vector<std::pair<std::string, double>> step_metrics() const { return {}; }
  // True if the reducer applies momentum itself (momentum correction): the optimizer must not
  // apply it a second time.
  virtual bool applies_momentum() const { return false; }

 protected:
  uint64_t bytes_sent_ = 0;
  uint64_t bytes_received_ = 0;
};

// Averages with our ring allreduce: each rank sends and receives 2(N-1)/N of the bucket.
class DenseReducer : public GradientReducer {
 public:
  explicit DenseReducer(comm::Group& group) : group_(group) {}
  void reduce(std::span<float> grad, uint64_t step) override;
  std::string name() const override { return "dense"; }

 private:
  comm::Group& group_;
};

// Names the registry knows, for help texts and errors.
std::vector<std::string> reducer_names();
// Builds a reducer from a spec like "dense". Throws InvalidArgument listing the valid names.
std::unique_ptr<GradientReducer> make_reducer(const std::string& spec, comm::Group& group);

}  // namespace dtrain::reduce
