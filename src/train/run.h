// What every training scheme shares (internal to train/): the options and group, the data, the
// model and optimizer, the gradient engine with --reduce, the run directory and its metrics.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "data_source.h"
#include "dtrain/comm/group.h"
#include "dtrain/engine/engine.h"
#include "dtrain/engine/timeline.h"
#include "dtrain/torch/grad_views.h"
#include "dtrain/torch/models.h"
#include "dtrain/train/metrics.h"
#include "dtrain/train/trainer.h"

namespace dtrain::train {

// Pieces Run is built from, also used by schemes that run without a group (Downpour).
// The optimizer of --optimizer (sgd, momentum, adam) over the module's parameters.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o,
                                                        torch::nn::Module& model);
// The model of --model, initialised from --seed (the same on every rank).
std::shared_ptr<torchx::Net> make_model(const TrainOptions& o, const TensorData& d);
// DIR/config.json: the run's settings.
void write_config(const TrainOptions& o, const TensorData& d, int world, const std::string& dir);

struct Run {
  // Loads the data, builds the model from --seed, the optimizer and the gradient engine.
  Run(const TrainOptions& options, comm::Group& group);

  // After the scheme has restored a checkpoint: rank 0's parameters are broadcast (unless
  // `broadcast` is false: every rank restored its own), .grad is pointed at the engine's memory,
  // and rank 0 opens the run directory (config.json, metrics.jsonl appended on --resume).
  void start(bool broadcast = true);
  // The mean of `v` over the ranks.
  double global_mean(double v);
  // Every rank's timeline events into one Chrome trace on rank 0 (all ranks call it).
  void write_timeline(const std::string& path);

  const TrainOptions& o;
  comm::Group& g;
  const bool lead;
  const int world;
  TensorData data;
  std::shared_ptr<torchx::Net> model;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  engine::Timeline timeline;
  engine::Schedule schedule;
  std::unique_ptr<engine::GradientEngine> eng;  // gradients: each .grad views its memory
  std::unique_ptr<torchx::GradViews> grad_views;
  std::string out_dir;  // --out, or the --resume directory
  MetricsLog metrics;
  int64_t per_step = 0;  // samples per rank and step (batch x micro-batches)
  int64_t steps_per_epoch = 0;
};

}  // namespace dtrain::train
