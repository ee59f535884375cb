// dtrain for your own LibTorch model: the one header a program includes.
//
//   auto group = dtrain::join();                     // from the launcher's environment
//   dtrain::DistributedModel dist(*model, group, {.reduce = "exdyna:0.01"});
//   for (...) {
//     dist.begin_step();                             // zeroes the gradients, syncs buffers
//     auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
//     dist.backward(loss);                           // buckets are reduced while backprop runs
//     dist.step(optimizer);                          // waits for them, then optimizer.step()
//   }
//
// What it does, as PyTorch DDP and Horovod's DistributedOptimizer do:
//  - At construction, rank 0's parameters and buffers are broadcast to every rank (and checked).
//  - Every parameter's .grad becomes a view of the engine's bucket memory. The gradient path is
//    the one `dtrain train` uses: buckets per `schedule` ("fused:25", "wfbp", "single",
//    "mgwfbp"), each reduced by the `reduce` spec (every --reduce spec: "dense", "fp16",
//    "topk:0.01", "exdyna:0.01", "omnireduce", "qcs:rows=128", "powersgd:rank=4", ...) as soon as
//    its gradients are complete. After step()/synchronize(), .grad holds the average over the
//    ranks (or the compressor's estimate of it).
//  - With broadcast_buffers (DDP's default), rank 0's buffers (e.g. BatchNorm statistics) are sent
//    to every rank at each begin_step().
//  - Reducers that apply momentum themselves (e.g. "exdyna:density=0.01,momentum=0.9") expect a
//    plain SGD optimizer: step() refuses an SGD optimizer with momentum.
//  - save_reducer_state()/load_reducer_state() carry a compressor's error feedback and momentum
//    across a checkpoint (one blob per rank).
// Errors are dtrain's (dtrain/common/error.h): InvalidArgument naming a bad spec, the ranks'
// failures as in the rest of dtrain (comm/group.h).
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/common/error.h"

namespace dtrain {

namespace engine {
class GradientEngine;
class MgwfbpScheduler;
}  // namespace engine
namespace torchx {
class GradViews;
}  // namespace torchx

// Connects this process to its group. What `options` leaves empty comes from the environment:
// rank and size from DTRAIN_RANK/DTRAIN_WORLD_SIZE (or Open MPI's, PMI's, Slurm's; see
// comm/rendezvous.h), the rendezvous from DTRAIN_RENDEZVOUS (file:///shared/dir or
// redis://host:port), the address from DTRAIN_HOST or DTRAIN_IFACE. A process started alone (no
// environment) is a group of one.
std::shared_ptr<comm::Group> join(const comm::GroupOptions& options = {});

struct DistributedOptions {
  std::string reduce = "dense";        // a --reduce spec
  std::string schedule = "fused:25";   // a --schedule: single | wfbp | fused[:MB] | mgwfbp
  std::string on_nonfinite = "abort";  // abort | skip (the step, on every rank)
  bool broadcast_buffers = true;       // rank 0's buffers to all at each begin_step()
  // The number of steps already taken, for a run resumed from a checkpoint: reducers that vary
  // with the step (density warm-up, a compressor's step-seeded choices) go on where they were.
  int64_t start_step = 0;
};

// The module must outlive the DistributedModel. Once it is destroyed, each .grad holds a copy of
// its last value and the module trains on alone, undistributed.
class DistributedModel {
 public:
  // Every rank of `group` constructs it with the same module structure and options.
  DistributedModel(torch::nn::Module& module, std::shared_ptr<comm::Group> group,
                   DistributedOptions options = {});
  ~DistributedModel();
  DistributedModel(const DistributedModel&) = delete;
  DistributedModel& operator=(const DistributedModel&) = delete;

  // Before a step's forward pass: zeroes the gradients (the optimizer's zero_grad is not needed;
  // calling it does no harm), sends rank 0's buffers to every rank, and lets an mgwfbp schedule
  // install its plan. With micro_batches > 1 the step accumulates that many backward passes
  // (next_micro_batch() between them) and reduces once, after the last.
  void begin_step(int micro_batches = 1);
  void next_micro_batch();
  // loss.backward(), timed for the schedule's cost model. Calling loss.backward() directly also
  // works; mgwfbp then measures from begin_step() instead.
  void backward(const torch::Tensor& loss);
  // Waits until every bucket is reduced. Returns false when the step is to be skipped (a
  // non-finite gradient with on_nonfinite "skip"): do not step the optimizer then.
  bool synchronize();
  // synchronize(), then optimizer.step() unless the step is skipped. Returns whether it stepped.
  // When the reducer applies momentum itself (applies_momentum()), an optimizer other than SGD
  // without momentum is refused (InvalidArgument, after the step has been closed).
  bool step(torch::optim::Optimizer& optimizer);
  bool applies_momentum() const;

  // This rank's reducer state (error feedback, momentum, warm-started factors), for checkpoints;
  // load it back into a DistributedModel built with the same module, options and group size.
  std::vector<std::byte> save_reducer_state() const;
  void load_reducer_state(std::span<const std::byte> state);

  // The group, for collectives of the user's own between steps only: from begin_step() to
  // synchronize() the engine's thread uses it, and a group serves one thread at a time (use
  // group().split() for a group of your own).
  comm::Group& group() { return *group_; }
  int rank() const { return group_->rank(); }
  int size() const { return group_->size(); }
  int64_t steps() const { return step_; }
  // Bytes this rank's reducer sent and received so far.
  uint64_t bytes_sent() const;
  uint64_t bytes_received() const;

 private:
  torch::nn::Module& module_;
  std::shared_ptr<comm::Group> group_;
  DistributedOptions options_;
  std::unique_ptr<engine::GradientEngine> engine_;
  std::unique_ptr<torchx::GradViews> views_;
  std::unique_ptr<engine::MgwfbpScheduler> mgwfbp_;
  int64_t step_ = 0;
  bool open_ = false;           // begin_step() called, synchronize() not yet
  torch::Tensor buffer_bytes_;  // staging for the buffers' broadcast
  void broadcast_buffers();
};

}  // namespace dtrain
