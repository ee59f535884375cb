// LibTorch <-> engine on the gradient path: every parameter's .grad is a view of the engine's
// bucket memory, and a post hook on the parameter's gradient accumulator tells the engine the
// gradient is complete (as PyTorch DDP does with gradient_as_bucket_view).
//
// Backprop's AccumulateGrad adds into a defined .grad in place, so gradients land in bucket
// memory directly and the reducers average them there: the optimizer reads the result through
// the same views. A pre hook on the accumulator asks the engine first (a gradient arriving for a
// bucket already being reduced is refused before the memory is touched). Should anything replace
// a parameter's .grad (zero_grad(set_to_none), user code), the post hook copies the new tensor
// into the bucket and re-points .grad, so the result is still right, one copy slower.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "dtrain/engine/engine.h"

namespace dtrain::torchx {

class GradViews {
 public:
  // Parameters are module.parameters() in order: parameter i is the engine's parameter i.
  GradViews(torch::nn::Module& module, engine::GradientEngine& engine);
  // The hooks stay registered on the accumulators but do nothing once this is gone; each .grad
  // becomes a copy of its view (the engine's memory may be freed next).
  ~GradViews();
  GradViews(const GradViews&) = delete;
  GradViews& operator=(const GradViews&) = delete;

  // Points .grad at the engine's memory again if the engine moved it (set_buckets with a new
  // parameter order), or always with `force` (code that replaced or dropped a .grad, e.g.
  // zero_grad(set_to_none)). Call between steps.
  void refresh(bool force = false);

  struct Shared;  // what the hooks hold: the engine, or null once this is gone

 private:
  std::vector<torch::Tensor> params_;
  std::shared_ptr<Shared> shared_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // keep hooks alive
  uint64_t version_ = 0;
};

}  // namespace dtrain::torchx
