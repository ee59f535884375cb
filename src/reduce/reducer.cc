#include "dtrain/reduce/reducer.h"

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"
#include "dtrain/reduce/compressed.h"
#include "dtrain/reduce/exdyna.h"
#include "dtrain/reduce/omnireduce.h"

namespace dtrain::reduce {

void GradientReducer::load_state(std::span<const std::byte> state) {
  DT_ENFORCE(state.empty(), "reducer '", name(), "' keeps no state, but the checkpoint holds ",
             state.size(), " bytes of it (was it written with another --reduce?)");
}

void DenseReducer::reduce(std::span<float> grad, uint64_t /*step*/) {
  collective::AllreduceOptions o(group_);
  o.output = grad;
  o.op = collective::ReduceOp::kAvg;
  collective::allreduce(o);
  const int n = group_.size();
  const uint64_t moved = n > 1 ? grad.size_bytes() * 2 * (n - 1) / n : 0;
  bytes_sent_ += moved;
  bytes_received_ += moved;
}

std::vector<std::string> reducer_names() {
  std::vector<std::string> names = {"dense", "omnireduce", "exdyna"};
  for (const auto& n : compressed_reducer_names()) names.push_back(n);
  return names;
}

std::unique_ptr<GradientReducer> make_reducer(const std::string& spec, comm::Group& group) {
  std::string name = spec.substr(0, spec.find(':'));
  if (name == "dense") {
    DT_ENFORCE(spec == "dense", "--reduce '", spec, "': dense takes no parameters");
    return std::make_unique<DenseReducer>(group);
  }
  const std::string params =
      spec.find(':') == std::string::npos ? "" : spec.substr(spec.find(':') + 1);
  if (name == "omnireduce") return make_omnireduce_reducer(params, group);
  if (name == "exdyna") return make_exdyna_reducer(params, group);
  for (const auto& n : compressed_reducer_names()) {
    if (name == n) return make_compressed_reducer(spec, group);
  }
  std::string valid;
  for (const auto& n : reducer_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw InvalidArgument("--reduce '" + spec + "': unknown reducer '" + name + "' (valid: " + valid +
                        ")");
}

}  // namespace dtrain::reduce
