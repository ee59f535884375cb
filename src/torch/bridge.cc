#include "dtrain/torch/bridge.h"

#include <cstring>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"

namespace dtrain::torchx {

std::vector<engine::ParamInfo> param_infos(const torch::nn::Module& module) {
  std::vector<engine::ParamInfo> out;
  for (const auto& p : module.named_parameters()) {
    DT_ENFORCE(p.value().scalar_type() == torch::kFloat, "parameter ", p.key(),
               " is not float32; the engine reduces float32 gradients");
    out.push_back({p.key(), static_cast<size_t>(p.value().numel())});
  }
  return out;
}

void attach_hooks(torch::nn::Module& module, engine::GradientEngine& engine) {
  auto params = module.parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].register_hook([&engine, i](torch::Tensor grad) {
      auto g = grad.contiguous();
      engine.on_gradient(i, std::span<const float>(g.data_ptr<float>(), g.numel()));
    });
  }
}

void write_back(torch::nn::Module& module, const engine::GradientEngine& engine) {
  auto params = module.parameters();
  torch::NoGradGuard guard;
  for (size_t i = 0; i < params.size(); ++i) {
    auto reduced = engine.reduced(i);
    auto src =
        torch::from_blob(const_cast<float*>(reduced.data()), params[i].sizes(), torch::kFloat);
    if (!params[i].mutable_grad().defined()) {
      params[i].mutable_grad() = src.clone();
    } else {
      params[i].mutable_grad().copy_(src);
    }
  }
}

namespace {
std::vector<torch::Tensor> state_tensors(const torch::nn::Module& module) {
  std::vector<torch::Tensor> out = module.parameters();
  for (const auto& b : module.buffers()) out.push_back(b);
  return out;
}
}  // namespace

uint64_t parameter_checksum(const torch::nn::Module& module) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& t : state_tensors(module)) {
    auto c = t.contiguous();
    const auto* bytes = static_cast<const uint8_t*>(c.data_ptr());
    const size_t n = c.numel() * c.element_size();
    for (size_t i = 0; i < n; ++i) {
      h ^= bytes[i];
      h *= 1099511628211ull;
    }
  }
  return h;
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
