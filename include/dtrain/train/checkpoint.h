// Checkpoints: one file written atomically (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves either the previous checkpoint or the new one, never half.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "dtrain/comm/group.h"
#include "dtrain/engine/engine.h"
#include "dtrain/engine/mgwfbp.h"

#include <string>
#include <vector>

namespace dtrain::train {

struct CheckpointMeta {
  int64_t step = 0;      // steps completed
  int epoch = 0;         // epoch to continue in
  int64_t position = 0;  // steps of that epoch already done
  uint64_t seed = 0;
  int world_size = 1;
  std::string model;
  std::string reduce;
  // How gradients were bucketed and reduced, so a resumed run sums in the same order:
  // {"buckets": [[param, ...], ...], "allreduce": switch, "mgwfbp": plan record}. Null in
  // checkpoints of older versions (their buckets follow from --schedule).
  nlohmann::json schedule;
  // The optimizer's name (sgd, momentum, adam); empty in older checkpoints.
  std::string optimizer;
  // Where the run's clocks and counters stood, so a resumed run continues them: {"time_s",
  // "eval_s", "bytes_sent", "bytes_recv", "target": {...}}. Null in older checkpoints.
  nlohmann::json progress;
};

// "sgd", "momentum" (SGD with momentum) or "adam", as --optimizer names them.
std::string optimizer_name(torch::optim::Optimizer& optimizer);

// `extra`: further tensors of the scheme (e.g. Local SGD's model at the last averaging).
void save_checkpoint(const std::string& path, const CheckpointMeta& meta, torch::nn::Module& model,
                     torch::optim::Optimizer& optimizer,
                     const std::vector<std::byte>& reducer_state,
                     const std::vector<torch::Tensor>& extra = {});

// Throws IoError naming the file if it is missing or unreadable, InvalidArgument if it was
// written for another model, world size or optimizer. `extra` (when given) receives save's extra
// tensors.
CheckpointMeta load_checkpoint(const std::string& path, torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer,
                               std::vector<std::byte>* reducer_state,
                               std::vector<torch::Tensor>* extra = nullptr);

// Checkpoints of schemes whose ranks hold different models (Local SGD between averagings): every
// rank writes its own file, checkpoint-<step>.rank<r>.pt (atomically), then rank 0 writes the
// manifest checkpoint.json naming the set, last and atomically, so a half-written set is never
// taken for a checkpoint; each rank then removes its files of older sets. All ranks call it.
void save_rank_checkpoint(comm::Group& g, const std::string& dir, const CheckpointMeta& meta,
                          torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                          const std::vector<std::byte>& state,
                          const std::vector<torch::Tensor>& extra);
// This rank's part of the set the manifest in `dir` names. IoError naming the manifest or the
// rank's file when missing (a sync checkpoint.pt without a manifest is named as such).
CheckpointMeta load_rank_checkpoint(int rank, int world, const std::string& dir,
                                    torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                    std::vector<std::byte>* state,
                                    std::vector<torch::Tensor>* extra);

// Throws InvalidArgument naming --resume `dir` when the checkpoint was written by another world
// size or for another model.
void check_resumable(const CheckpointMeta& meta, int world, const std::string& model,
                     const std::string& dir);

// Parameters only (for comparisons and evaluation).
std::vector<torch::Tensor> load_checkpoint_parameters(const std::string& path);

// Reducer states differ per rank (error-feedback residuals are each rank's own), so a checkpoint
// keeps all of them. Every rank calls gather_reducer_states at the same points; rank 0 returns
// the blob of every rank's state (empty when no rank has any), the others an empty one.
// own_reducer_state takes this rank's part back out of a blob read from `path`, with errors
// naming the file.
std::vector<std::byte> gather_reducer_states(comm::Group& g, const std::vector<std::byte>& mine);
std::vector<std::byte> own_reducer_state(const std::vector<std::byte>& blob, int rank, int world,
                                         const std::string& path);

// CheckpointMeta::schedule of a run with --schedule `schedule`: its buckets, the dense
// reducer's allreduce switch and the mgwfbp plan once made. restore_schedule reinstalls them
// (the switch always; buckets and plan when the checkpoint was written with the same
// --schedule), so a resumed run sums in the same order and does not measure a new plan.
nlohmann::json schedule_record(const std::string& schedule, const engine::GradientEngine& eng,
                               const engine::MgwfbpScheduler* mgwfbp);
void restore_schedule(const std::string& schedule, const nlohmann::json& j,
                      engine::GradientEngine& eng, engine::MgwfbpScheduler* mgwfbp,
                      const std::string& path);

}  // namespace dtrain::train
