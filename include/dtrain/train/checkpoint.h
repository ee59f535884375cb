// Checkpoints: one file written atomically (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves either the previous checkpoint or the new one, never half.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

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
};

void save_checkpoint(const std::string& path, const CheckpointMeta& meta, torch::nn::Module& model,
                     torch::optim::Optimizer& optimizer,
                     const std::vector<std::byte>& reducer_state);

// Throws IoError naming the file if it is missing or unreadable, InvalidArgument if it was
// written for another model or world size.
CheckpointMeta load_checkpoint(const std::string& path, torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer,
                               std::vector<std::byte>* reducer_state);

// Parameters only (for comparisons and evaluation).
std::vector<torch::Tensor> load_checkpoint_parameters(const std::string& path);

}  // namespace dtrain::train
