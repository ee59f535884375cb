// Local SGD and post-local SGD (--algorithm local:H=..., specs/localsgd.md).
//
// Every rank takes local optimizer steps on its own shard; after each averaging time of the
// schedule (train/local_sgd_schedule.h) the ranks replace their models by the average. With
// warmup=S the first S steps are synchronous data parallelism (gradients averaged through the
// engine, as --algorithm sync), local steps after them.
//
// The average goes through a reducer (--average, default the --reduce spec) applied to the change
// of the model since the last average, delta = x - x_avg: x_avg += reduce(delta), on every rank,
// so the replicas are identical after every averaging whatever the reducer (a compressor's error
// stays in its error feedback, on the delta; OmniReduce carries only the blocks that changed,
// e.g. the embedding rows a rank's batches touched). The averaging reducer runs in its own
// engine, so its state (residuals) is separate from the gradient reducer's of the warm-up; at
// the switch the gradient reducer's residuals are left behind unused (they belong to gradients
// of steps that were already applied). A reducer that applies momentum (momentum correction)
// cannot average a model delta and is refused. Optimizer state (momentum, Adam's moments) stays
// each rank's own and is not averaged: with H = 1 and SGD or SGD with momentum this equals
// synchronous SGD (the average of the ranks' momentum buffers evolves as the synchronous one).
//
// Between averagings every rank holds its own model and optimizer state, so a checkpoint is a
// set of per-rank files with a manifest written last (checkpoint.h: save_rank_checkpoint).
#include <cmath>
#include <cstdio>

#include "dtrain/collective/collective.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/torch/bridge.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/local_sgd_schedule.h"
#include "schemes.h"

namespace dtrain::train {
namespace {

class LocalSgdScheme : public Scheme {
 public:
  explicit LocalSgdScheme(Run& run)
      : run_(run),
        schedule_(LocalSgdSchedule::parse(run.o.algorithm)),
        average_spec_(run.o.average.empty() ? run.o.reduce : run.o.average) {
    DT_ENFORCE(!run.eng->reducer().applies_momentum(), "--reduce ", run.o.reduce,
               " applies momentum inside the reducer; with --algorithm ", run.o.algorithm,
               " the local steps would run without it: drop momentum= and use --optimizer "
               "momentum (Local SGD keeps the optimizer's momentum on every rank)");
    auto reducer = reduce::make_reducer(average_spec_, run.g);
    DT_ENFORCE(!reducer->applies_momentum(), run.o.average.empty() ? "--reduce " : "--average ",
               average_spec_,
               " cannot average models: it applies momentum correction to what it reduces, and "
               "a model's change is not a gradient; drop momentum= from it");
    average_ = std::make_unique<engine::GradientEngine>(
        torchx::param_infos(*run.model), run.schedule, std::move(reducer),
        engine::parse_on_nonfinite(run.o.on_nonfinite), &run.timeline);
    spread_every_ = std::max<int64_t>(1, run.o.log_every / schedule_.period);
  }

  std::string describe() const override {
    return "algorithm " + schedule_.str() + ", averaging through " + average_spec_ +
           (schedule_.warmup > 0 ? ", warm-up gradients through " + run_.o.reduce : "") +
           ", schedule " + run_.o.schedule;
  }

  CheckpointMeta resume(const std::string& dir) override {
    std::vector<std::byte> state;
    std::vector<torch::Tensor> extra;
    CheckpointMeta start = load_rank_checkpoint(run_.g.rank(), run_.world, dir, *run_.model,
                                                *run_.optimizer, &state, &extra);
    check_resumable(start, run_.world, run_.o.model, dir);
    const std::string path = dir + " (rank " + std::to_string(run_.g.rank()) + "'s file)";
    restore_schedule(run_.o.schedule, start.schedule, *run_.eng, nullptr, path);
    restore_schedule(run_.o.schedule, start.schedule, *average_, nullptr, path);
    ByteReader in(state, "--resume " + path + ": reducer states");
    const auto gradient_state = in.get_vector<std::byte>("gradient reducer state");
    const auto average_state = in.get_vector<std::byte>("averaging reducer state");
    rounds_ = in.get<int64_t>("rounds");
    in.finish();
    run_.eng->reducer().load_state(gradient_state);
    average_->reducer().load_state(average_state);
    const auto params = run_.model->parameters();
    DT_ENFORCE(extra.size() == params.size(), "--resume ", path, ": ", extra.size(),
               " averaged tensors for ", params.size(), " parameters");
    anchor_ = std::move(extra);
    return start;
  }

  bool broadcast_at_start() const override { return false; }

  void on_start(int64_t step) override {
    // Local steps from the start: they start from rank 0's model, which everyone now holds.
    if (anchor_.empty() && !schedule_.synchronous(step)) set_anchor();
  }

  bool communicate(int64_t step) const override { return schedule_.synchronous(step); }

  void after_step(int64_t step, const StepResult&) override {
    averaged_ = false;
    if (schedule_.synchronous(step)) {
      ++rounds_;
      // The last synchronous step: the local phase starts from the model it leaves.
      if (!schedule_.synchronous(step + 1)) set_anchor();
      last_sync_ = true;
      return;
    }
    last_sync_ = false;
    if (schedule_.average_after(step)) average(step);
  }

  nlohmann::json step_figures() const override {
    if (last_sync_) return reducer_figures(run_.eng->reducer());
    if (!averaged_) return nullptr;
    nlohmann::json out = reducer_figures(average_->reducer());
    if (!out.is_object()) out = nlohmann::json::object();
    out["average_round"] = rounds_;
    out["local_steps"] = local_steps_;
    if (spread_ >= 0) out["spread"] = spread_;
    return out;
  }

  void save(int epoch, int64_t position, int64_t step, const nlohmann::json& progress) override {
    if (run_.out_dir.empty()) return;
    if (anchor_.empty()) set_anchor();
    ByteWriter state;
    state.put_vector(run_.eng->reducer().save_state());
    state.put_vector(average_->reducer().save_state());
    state.put<int64_t>(rounds_);
    CheckpointMeta m{step,          epoch,
                     position,      run_.o.seed,
                     run_.world,    run_.o.model,
                     run_.o.reduce, schedule_record(run_.o.schedule, *run_.eng, nullptr)};
    m.optimizer = optimizer_name(*run_.optimizer);
    m.progress = progress;
    save_rank_checkpoint(run_.g, run_.out_dir, m, *run_.model, *run_.optimizer, state.take(),
                         anchor_);
  }

  // Between averagings the replicas differ: evaluate their average (a dense allreduce of the
  // parameters, off the training clock and outside the scheme's bytes), then put every rank's
  // own model back.
  void with_evaluation_model(const std::function<void()>& evaluate) override {
    if (averaged_ || last_sync_ || anchor_.empty()) {
      evaluate();  // every rank holds the same model
      return;
    }
    torch::NoGradGuard guard;
    std::vector<torch::Tensor> own;
    for (auto& p : run_.model->parameters()) {
      own.push_back(p.detach().clone());
      collective::AllreduceOptions ao(run_.g);
      ao.output = collective::View(p.data_ptr<float>(), static_cast<size_t>(p.numel()),
                                   collective::DataType::kFloat32);
      ao.op = collective::ReduceOp::kAvg;
      collective::allreduce(ao);
    }
    evaluate();
    auto params = run_.model->parameters();
    for (size_t i = 0; i < params.size(); ++i) params[i].detach().copy_(own[i]);
  }

  uint64_t bytes_sent() const override {
    return run_.eng->reducer().bytes_sent() + average_->reducer().bytes_sent();
  }
  uint64_t bytes_received() const override {
    return run_.eng->reducer().bytes_received() + average_->reducer().bytes_received();
  }
  int64_t rounds() const override { return rounds_; }
  engine::EngineStats comm_stats() const override {
    engine::EngineStats s = run_.eng->stats();
    const engine::EngineStats& a = average_->stats();
    s.comm_s += a.comm_s;
    s.wait_s += a.wait_s;
    s.hidden_s += a.hidden_s;
    s.skipped_steps += a.skipped_steps;
    return s;
  }

  void finish(nlohmann::json& final_record) override {
    final_record["algorithm"] = schedule_.str();
    final_record["averagings"] = averagings_;
  }

 private:
  void set_anchor() {
    anchor_.clear();
    for (const auto& p : run_.model->parameters()) anchor_.push_back(p.detach().clone());
  }

  // x_avg += reduce(x - x_avg); x = x_avg, on every rank.
  void average(int64_t step) {
    torch::NoGradGuard guard;
    auto params = run_.model->parameters();
    engine::GradientEngine& eng = *average_;
    eng.begin_step(rounds_);
    // Last parameters first: the engine's buckets are in backprop order, so the first bucket
    // fills first and its reduction overlaps the remaining differences.
    std::vector<torch::Tensor> delta(params.size());
    for (size_t k = params.size(); k-- > 0;) {
      delta[k] = (params[k].detach() - anchor_[k]).contiguous();
      eng.on_gradient(k, {delta[k].data_ptr<float>(), static_cast<size_t>(delta[k].numel())});
    }
    const bool ok = eng.finish();
    const bool measure = (averagings_ % spread_every_) == 0;
    double spread2 = 0;
    for (size_t k = 0; k < params.size(); ++k) {
      auto p = params[k].detach();
      if (!ok) {
        // A non-finite average with --on-nonfinite skip: every rank returns to the last average.
        p.copy_(anchor_[k]);
        continue;
      }
      const auto avg = eng.reduced(k);
      auto avg_t =
          torch::from_blob(const_cast<float*>(avg.data()), delta[k].sizes(), torch::kFloat32);
      if (measure) spread2 += (delta[k] - avg_t).pow(2).sum().item<double>();
      anchor_[k].add_(avg_t);
      p.copy_(anchor_[k]);
    }
    // The replicas' spread before averaging: root mean over ranks of |x_r - mean x|^2.
    spread_ = measure && ok ? std::sqrt(run_.global_mean(spread2)) : -1.0;
    local_steps_ = schedule_.period_at(step);
    ++rounds_;
    ++averagings_;
    averaged_ = true;
  }

  Run& run_;
  LocalSgdSchedule schedule_;
  std::string average_spec_;
  std::unique_ptr<engine::GradientEngine> average_;  // the averaging reducer's engine
  std::vector<torch::Tensor> anchor_;                // the model at the last averaging
  int64_t rounds_ = 0;                               // synchronous steps + averagings
  int64_t averagings_ = 0;  // this run's averagings (for the spread's cadence)
  int64_t spread_every_ = 1;
  int64_t local_steps_ = 0;  // of the latest averaging's period
  double spread_ = -1;
  bool averaged_ = false;   // the latest step ended with an averaging
  bool last_sync_ = false;  // the latest step was synchronous
};

}  // namespace

std::unique_ptr<Scheme> make_local_sgd_scheme(Run& run) {
  return std::make_unique<LocalSgdScheme>(run);
}

}  // namespace dtrain::train
