// The epoch and step loop every training scheme runs (internal to train/): shards, steps,
// evaluations at the --eval-every cadence and at epoch ends, time to target, metrics records
// with one schema, progress and checkpoints. A scheme says what differs: whether a step averages
// gradients, what happens after it (e.g. Local SGD's model averaging), and how a checkpoint is
// saved and restored.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "dtrain/train/checkpoint.h"
#include "run.h"
#include "step.h"

namespace dtrain::train {

class Scheme {
 public:
  virtual ~Scheme() = default;
  // "sync, reduce dense, schedule fused:25": for the banner.
  virtual std::string describe() const = 0;
  // Restores the --resume checkpoint (before Run::start) and returns where to continue.
  virtual CheckpointMeta resume(const std::string& dir) = 0;
  // Whether Run::start broadcasts rank 0's parameters (false when every rank restored its own).
  virtual bool broadcast_at_start() const { return true; }
  // After Run::start, before step `step` (the first this run takes).
  virtual void on_start(int64_t step) {}
  // Whether step `step` (0-based) averages gradients through the engine.
  virtual bool communicate(int64_t step) const = 0;
  // After step `step` (0-based) was taken (e.g. model averaging, mgwfbp's plan).
  virtual void after_step(int64_t step, const StepResult& result) {}
  // Scalars of the latest step for its "reduce" record (no collective); empty: no record.
  virtual nlohmann::json step_figures() const { return nullptr; }
  // Saves a checkpoint of `step` steps done, continuing at (epoch, position), with the loop's
  // `progress` (CheckpointMeta::progress). All ranks call it.
  virtual void save(int epoch, int64_t position, int64_t step, const nlohmann::json& progress) = 0;
  // Runs `evaluate` on a model every rank holds alike (Local SGD: the replicas' average).
  virtual void with_evaluation_model(const std::function<void()>& evaluate) { evaluate(); }
  // Bytes this rank moved so far (all of the scheme's reducers), and communication rounds.
  virtual uint64_t bytes_sent() const = 0;
  virtual uint64_t bytes_received() const = 0;
  virtual int64_t rounds() const = 0;
  // Communication time of the scheme's engines (gradients, and models where averaged).
  virtual engine::EngineStats comm_stats() const = 0;
  // Fields for the final record (and the console) after the loop.
  virtual void finish(nlohmann::json& final_record) {}
};

// Trains from `start` to the end (or --max-steps) and writes the records; all ranks call it.
TrainResult run_loop(Run& run, Scheme& scheme, const CheckpointMeta& start);

}  // namespace dtrain::train
