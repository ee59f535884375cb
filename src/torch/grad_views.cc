#include "dtrain/torch/grad_views.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <atomic>
#include <cstring>

#include "dtrain/common/error.h"

namespace dtrain::torchx {

struct GradViews::Shared {
  std::atomic<engine::GradientEngine*> engine{nullptr};
};

namespace {

torch::Tensor view_of(engine::GradientEngine& eng, size_t i, const torch::Tensor& param) {
  auto mem = eng.grad_memory(i);
  return torch::from_blob(mem.data(), param.sizes(), torch::TensorOptions().dtype(torch::kFloat));
}

bool is_view_of(const torch::Tensor& grad, engine::GradientEngine& eng, size_t i) {
  return grad.defined() && grad.data_ptr() == static_cast<void*>(eng.grad_memory(i).data()) &&
         grad.is_contiguous();
}

class BeforeAccumulate : public torch::autograd::FunctionPreHook {
 public:
  BeforeAccumulate(std::shared_ptr<GradViews::Shared> shared, size_t index)
      : shared_(std::move(shared)), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (auto* eng = shared_->engine.load()) eng->check_accumulate(index_);
    return grads;
  }

 private:
  std::shared_ptr<GradViews::Shared> shared_;
  size_t index_;
};

class AfterAccumulate : public torch::autograd::FunctionPostHook {
 public:
  AfterAccumulate(std::shared_ptr<GradViews::Shared> shared, torch::Tensor param, size_t index)
      : shared_(std::move(shared)), param_(std::move(param)), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& inputs) override {
    auto* eng = shared_->engine.load();
    if (eng == nullptr) return outputs;
    torch::Tensor& grad = param_.mutable_grad();
    if (!is_view_of(grad, *eng, index_)) {
      // .grad was replaced: take its value into the bucket and view the bucket again.
      torch::NoGradGuard guard;
      auto view = view_of(*eng, index_, param_);
      if (grad.defined()) {
        view.copy_(grad);
      } else {
        view.zero_();
      }
      grad = view;
    }
    eng->mark_ready(index_);
    return outputs;
  }

 private:
  std::shared_ptr<GradViews::Shared> shared_;
  torch::Tensor param_;
  size_t index_;
};

}  // namespace

GradViews::GradViews(torch::nn::Module& module, engine::GradientEngine& engine)
    : params_(module.parameters()), shared_(std::make_shared<Shared>()) {
  DT_ENFORCE(params_.size() == engine.num_params(), "the module has ", params_.size(),
             " parameters, the engine ", engine.num_params());
  shared_->engine = &engine;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    DT_ENFORCE(p.requires_grad() && p.is_leaf(), "parameter ", engine.param(i).name,
               " is not a leaf that requires grad");
    DT_ENFORCE(static_cast<size_t>(p.numel()) == engine.param(i).numel, "parameter ",
               engine.param(i).name, " has ", p.numel(), " elements, the engine expects ",
               engine.param(i).numel);
    auto acc = torch::autograd::impl::grad_accumulator(p);
    DT_ENFORCE(acc != nullptr, "parameter ", engine.param(i).name, " has no gradient accumulator");
    acc->add_pre_hook(std::make_unique<BeforeAccumulate>(shared_, i));
    acc->add_post_hook(std::make_unique<AfterAccumulate>(shared_, p, i));
    accumulators_.push_back(std::move(acc));
  }
  version_ = engine.memory_version() - 1;  // force the first refresh
  refresh();
}

GradViews::~GradViews() {
  shared_->engine = nullptr;
  // The module may outlive the engine (a library user's model trained on alone): each .grad gets
  // its own copy of what the view held, never a view of memory about to be freed.
  torch::NoGradGuard guard;
  for (auto& p : params_) {
    if (p.grad().defined()) p.mutable_grad() = p.grad().clone();
  }
}

void GradViews::refresh(bool force) {
  auto* eng = shared_->engine.load();
  if (eng == nullptr || (!force && eng->memory_version() == version_)) return;
  torch::NoGradGuard guard;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto view = view_of(*eng, i, params_[i]);
    params_[i].mutable_grad() = view;
  }
  version_ = eng->memory_version();
}

}  // namespace dtrain::torchx
