#include "dtrain/torch/bridge.h"

#include <cstring>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "dtrain/common/hash.h"

namespace dtrain::torchx {

std::vector<engine::ParamInfo> param_infos(const torch::nn::Module& module) {
  std::vector<engine::ParamInfo> out;
  for (const auto& p : module.named_parameters()) {
    DT_ENFORCE(p.value().scalar_type() == torch::kFloat, "parameter ", p.key(),
               " is not float32; the engine reduces float32 gradients");
    out.push_back({p.key(), static_cast<size_t>(p.value().numel()), p.value().sizes().vec()});
  }
  return out;
}

namespace {
std::vector<torch::Tensor> state_tensors(const torch::nn::Module& module) {
  std::vector<torch::Tensor> out = module.parameters();
  for (const auto& b : module.buffers()) out.push_back(b);
  return out;
}
}  // namespace

uint64_t parameter_checksum(const torch::nn::Module& module) {
  Fnv1a h;
  for (const auto& t : state_tensors(module)) {
    auto c = t.contiguous();
    h.bytes(c.data_ptr(), c.numel() * c.element_size());
  }
  return h.digest();
}

void broadcast_parameters(torch::nn::Module& module, comm::Group& group) {
  torch::NoGradGuard guard;
  for (auto& t : state_tensors(module)) {
    DT_ENFORCE(t.is_contiguous(), "parameter tensor is not contiguous");
    collective::BroadcastOptions o(group);
    o.data = collective::View(t.data_ptr(), t.numel() * t.element_size() / 4,
                              collective::DataType::kInt32);
    DT_ENFORCE(t.numel() * t.element_size() % 4 == 0, "parameter bytes not a multiple of 4");
    o.root = 0;
    collective::broadcast(o);
  }
  // Verify: every rank's checksum equals rank 0's.
  int64_t mine = static_cast<int64_t>(parameter_checksum(module));
  std::vector<int64_t> all(group.size());
  collective::AllgatherOptions ag(group);
  ag.input = collective::ConstView(&mine, 1, collective::DataType::kInt64);
  ag.output = all;
  collective::allgather(ag);
  for (int r = 0; r < group.size(); ++r) {
    if (all[r] != all[0]) {
      throw ProtocolError(detail::concat("parameters differ after the broadcast: rank ", r,
                                         " checksum ", all[r], ", rank 0 ", all[0],
                                         " (is every rank running the same model?)"));
    }
  }
}

}  // namespace dtrain::torchx
