// dtrain::DistributedModel: the engine's gradient path around a user's module (dtrain.h).
#include <cstdlib>
#include <cstring>

#include "dtrain/collective/collective.h"
#include "dtrain/dtrain.h"
#include "dtrain/engine/engine.h"
#include "dtrain/engine/mgwfbp.h"
#include "dtrain/reduce/reducer.h"
#include "dtrain/torch/bridge.h"
#include "dtrain/torch/grad_views.h"

namespace dtrain {
std::shared_ptr<comm::Group> join(const comm::GroupOptions& options) {
  return comm::Group::connect(comm::with_environment(options));
}

DistributedModel::DistributedModel(torch::nn::Module& module, std::shared_ptr<comm::Group> group,
                                   DistributedOptions options)
    : module_(module), group_(std::move(group)), options_(std::move(options)) {
  DT_ENFORCE(group_ != nullptr, "DistributedModel: no group (dtrain::join() makes one)");
  // Every spec is checked before any collective, so a typo fails alike on every rank.
  reduce::validate_reducer_spec(options_.reduce);
  const auto schedule = engine::Schedule::parse(options_.schedule);
  const auto on_nonfinite = engine::parse_on_nonfinite(options_.on_nonfinite);
  DT_ENFORCE(schedule.kind != engine::Schedule::Kind::kMgwfbp || options_.reduce == "dense",
             "schedule mgwfbp plans the dense allreduce; reduce '", options_.reduce,
             "' has other costs: use fused, wfbp or single with it");
  DT_ENFORCE(!module_.parameters().empty(), "DistributedModel: the module has no parameters");
  for (const auto& p : module_.parameters()) {
    DT_ENFORCE(p.scalar_type() == torch::kFloat && p.device().is_cpu(),
               "DistributedModel: parameters must be float32 on the CPU; one is ", p.scalar_type(),
               " on ", p.device());
  }
  torchx::broadcast_parameters(module_, *group_);
  engine_ = std::make_unique<engine::GradientEngine>(torchx::param_infos(module_), schedule,
                                                     reduce::make_reducer(options_.reduce, *group_),
                                                     on_nonfinite, nullptr);
  views_ = std::make_unique<torchx::GradViews>(module_, *engine_);
  DT_ENFORCE(options_.start_step >= 0, "DistributedModel: start_step must be >= 0, got ",
             options_.start_step);
  step_ = options_.start_step;
  if (schedule.kind == engine::Schedule::Kind::kMgwfbp) {
    mgwfbp_ = std::make_unique<engine::MgwfbpScheduler>(*engine_, *group_);
  }
}

DistributedModel::~DistributedModel() {
  if (open_) {  // a step abandoned by an exception: let its reductions end before the memory goes
    try {
      engine_->finish();
    } catch (...) {
    }
  }
  views_.reset();  // each .grad gets its own copy (grad_views.h)
}

void DistributedModel::begin_step(int micro_batches) {
  DT_ENFORCE(micro_batches >= 1, "DistributedModel::begin_step: micro_batches must be >= 1, got ",
             micro_batches);
  DT_ENFORCE(!open_, "DistributedModel::begin_step: step ", step_,
             " is still open (call step() or synchronize() first)");
  // mgwfbp measures during its first steps and installs its plan after one: between steps, as
  // the .grad views move with the buckets.
  if (mgwfbp_ && step_ > 0 && mgwfbp_->after_step()) views_->refresh();
  if (options_.broadcast_buffers && group_->size() > 1) broadcast_buffers();
  // zero_grad(set_to_none) or user code may have dropped or replaced a .grad: every parameter's
  // .grad is its bucket view again, so no rank's optimizer skips a parameter the others update.
  views_->refresh(/*force=*/true);
  engine_->begin_step(step_, micro_batches);
  open_ = true;
}

void DistributedModel::next_micro_batch() {
  DT_ENFORCE(open_, "DistributedModel::next_micro_batch: no step is open (call begin_step())");
  engine_->next_micro_batch();
}

void DistributedModel::broadcast_buffers() {
  // All buffers in one broadcast (a ResNet has a hundred), packed byte for byte into 4-byte words.
  torch::NoGradGuard no_grad;
  auto buffers = module_.buffers();
  if (buffers.empty()) return;
  int64_t total = 0;
  for (const auto& b : buffers) {
    DT_ENFORCE(b.device().is_cpu(), "DistributedModel: a buffer is on ", b.device(),
               "; buffers must be on the CPU");
    total += (b.numel() * b.element_size() + 3) / 4 * 4;
  }
  if (buffer_bytes_.numel() != total) buffer_bytes_ = torch::empty({total}, torch::kUInt8);
  auto* bytes = buffer_bytes_.data_ptr<uint8_t>();
  int64_t at = 0;
  for (const auto& b : buffers) {
    const auto c = b.contiguous();
    const int64_t n = c.numel() * c.element_size();
    std::memcpy(bytes + at, c.data_ptr(), n);
    at += (n + 3) / 4 * 4;
  }
  collective::BroadcastOptions o(*group_);
  o.data = collective::View(bytes, total / 4, collective::DataType::kInt32);
  o.root = 0;
  collective::broadcast(o);
  at = 0;
  for (auto& b : buffers) {
    const int64_t n = b.numel() * b.element_size();
    if (b.is_contiguous()) {
      std::memcpy(b.data_ptr(), bytes + at, n);
    } else {
      b.copy_(torch::from_blob(bytes + at, b.sizes(), b.scalar_type()));
    }
    at += (n + 3) / 4 * 4;
  }
}

void DistributedModel::backward(const torch::Tensor& loss) {
  DT_ENFORCE(open_, "DistributedModel::backward: call begin_step() before the forward pass");
  engine_->backward_started();
  loss.backward();
}

bool DistributedModel::synchronize() {
  DT_ENFORCE(open_, "DistributedModel::synchronize: no step is open (call begin_step())");
  open_ = false;
  ++step_;
  return engine_->finish();
}

bool DistributedModel::applies_momentum() const {
  return engine_->reducer().applies_momentum();
}

bool DistributedModel::step(torch::optim::Optimizer& optimizer) {
  // The step is closed first, so that a refused optimizer leaves nothing open.
  const bool applied = synchronize();
  if (applies_momentum()) {
    auto* sgd = dynamic_cast<torch::optim::SGD*>(&optimizer);
    bool plain = sgd != nullptr;
    if (sgd) {
      for (const auto& g : sgd->param_groups()) {
        plain = plain && static_cast<const torch::optim::SGDOptions&>(g.options()).momentum() == 0;
      }
    }
    DT_ENFORCE(plain, "reduce '", options_.reduce,
               "' applies momentum inside the reducer (momentum correction): use SGD without "
               "momentum, or drop momentum= from the spec");
  }
  if (applied) optimizer.step();
  return applied;
}

std::vector<std::byte> DistributedModel::save_reducer_state() const {
  return engine_->reducer().save_state();
}

void DistributedModel::load_reducer_state(std::span<const std::byte> state) {
  engine_->reducer().load_state(state);
}

uint64_t DistributedModel::bytes_sent() const {
  return engine_->reducer().bytes_sent();
}

uint64_t DistributedModel::bytes_received() const {
  return engine_->reducer().bytes_received();
}

}  // namespace dtrain
