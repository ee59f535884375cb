// The OmniReduce reducer: one sparse::omnireduce (SUM) per bucket, then the average. The block
// statistics of every bucket of a step add up to the step's densities, which the trainer logs.
#include <cmath>

#include "dtrain/common/error.h"
#include "dtrain/reduce/omnireduce.h"
#include "dtrain/reduce/params.h"

namespace dtrain::reduce {

OmniReduceReducer::OmniReduceReducer(comm::Group& group, const sparse::OmniReduceOptions& options)
    : group_(group), options_(options) {
  options_.group = &group;
}

std::string OmniReduceReducer::name() const {
  return detail::concat(
      "omnireduce:block=", options_.block,
      ",aggregators=", options_.aggregators ? options_.aggregators : group_.size(),
      ",colocate=1,slots=", options_.slots, ",fusion=", options_.blocks_per_message);
}

void OmniReduceReducer::begin_step(uint64_t step) {
  GradientReducer::begin_step(step);
  blocks_ = union_ = local_ = 0;
}

void OmniReduceReducer::end_step() {
  GradientReducer::end_step();
  last_blocks_ = blocks_;
  last_union_ = union_;
  last_local_ = local_;
}

void OmniReduceReducer::reduce(size_t bucket, std::span<float> grad) {
  check_bucket(bucket, grad.size());
  sparse::OmniReduceOptions o = options_;
  o.data = grad;
  // Buckets keep their sizes step after step: the handshake checks each size at first use.
  o.verify = verified_.insert(grad.size()).second;
  const sparse::OmniReduceStats s = sparse::omnireduce(o);
  const float inv = 1.0f / static_cast<float>(group_.size());
  for (float& v : grad) v *= inv;
  bytes_sent_ += s.bytes_sent;
  bytes_received_ += s.bytes_received;
  blocks_ += (grad.size() + options_.block - 1) / options_.block;
  union_ += s.blocks_union;
  local_ += s.blocks_nonzero_local;
}

std::vector<std::pair<std::string, double>> OmniReduceReducer::step_metrics() const {
  // The latest finished step's figures.
  if (last_blocks_ == 0) return {};
  return {{"union_density", double(last_union_) / double(last_blocks_)},
          {"local_density", double(last_local_) / double(last_blocks_)}};
}

void OmniReduceSettings::apply(sparse::OmniReduceOptions& o) const {
  o.block = block;
  o.aggregators = aggregators;
  o.slots = slots;
  o.blocks_per_message = fusion;
}

OmniReduceSettings parse_omnireduce_options(const std::string& params) {
  const Params p =
      parse_params("omnireduce", params, {"block", "aggregators", "colocate", "slots", "fusion"});
  OmniReduceSettings s;
  s.block = p.get_size("block", s.block, 1, size_t{1} << 24);
  s.aggregators = static_cast<int>(p.get_size("aggregators", 0, 0, 1 << 16));
  s.slots = static_cast<int>(p.get_size("slots", static_cast<size_t>(s.slots), 1, 1 << 16));
  s.fusion = p.get_size("fusion", s.fusion, 1, size_t{1} << 16);
  const size_t colocate = p.get_size("colocate", 1, 0, 1);
  DT_ENFORCE(colocate == 1,
             "--reduce omnireduce: colocate=0 (dedicated aggregator ranks) is offered by `dtrain "
             "bench omnireduce --servers N`; training runs its aggregators inside the workers "
             "(colocate=1)");
  return s;
}

std::unique_ptr<GradientReducer> make_omnireduce_reducer(const std::string& params,
                                                         comm::Group& group) {
  sparse::OmniReduceOptions o(group);
  parse_omnireduce_options(params).apply(o);
  return std::make_unique<OmniReduceReducer>(group, o);
}

}  // namespace dtrain::reduce
