// Synchronous data parallelism (--algorithm sync): the engine averages the gradients of every
// step, bucket by bucket while backprop runs, so every rank applies the same averaged gradient to
// the same parameters and the replicas stay identical without further synchronisation. With
// --schedule mgwfbp the buckets come from a plan measured during the first steps. One checkpoint
// file, written by rank 0, holds the model, the optimizer, every rank's reducer state and the
// bucket layout.
#include "schemes.h"

#include <cstdio>

#include "dtrain/common/file.h"
#include "dtrain/engine/mgwfbp.h"
#include "dtrain/train/checkpoint.h"

namespace dtrain::train {
namespace {

class SyncScheme : public Scheme {
 public:
  explicit SyncScheme(Run& run) : run_(run) {
    if (run.schedule.kind == engine::Schedule::Kind::kMgwfbp) {
      mgwfbp_ = std::make_unique<engine::MgwfbpScheduler>(*run.eng, run.g);
    }
  }

  std::string describe() const override {
    return "reduce " + run_.o.reduce + ", schedule " + run_.o.schedule;
  }

  CheckpointMeta resume(const std::string& dir) override {
    const std::string path = dir + "/checkpoint.pt";
    std::vector<std::byte> reducer_state;
    CheckpointMeta start = load_checkpoint(path, *run_.model, *run_.optimizer, &reducer_state);
    check_resumable(start, run_.world, run_.o.model, dir);
    rounds_ = start.step;
    restore_schedule(run_.o.schedule, start.schedule, *run_.eng, mgwfbp_.get(), path);
    run_.eng->reducer().load_state(
        own_reducer_state(reducer_state, run_.g.rank(), run_.world, path));
    return start;
  }

  bool communicate(int64_t) const override { return true; }

  void after_step(int64_t step, const StepResult& r) override {
    ++rounds_;
    if (!mgwfbp_) return;
    if (mgwfbp_->planned()) {
      planned_steps_ += 1;
      planned_backward_comm_s_ += r.last_backward_s + r.wait_s;
    }
    if (mgwfbp_->after_step()) {
      run_.grad_views->refresh();
      if (run_.lead && !run_.o.quiet) {
        std::printf("mgwfbp plan after %lld steps:\n%s", (long long)step + 1,
                    mgwfbp_->describe().c_str());
        std::fflush(stdout);
      }
    }
  }

  nlohmann::json step_figures() const override { return reducer_figures(run_.eng->reducer()); }

  void save(int epoch, int64_t position, int64_t step, const nlohmann::json& progress) override {
    if (run_.out_dir.empty()) return;
    const auto states = gather_reducer_states(run_.g, run_.eng->reducer().save_state());
    if (!run_.lead) return;
    CheckpointMeta m{step,          epoch,
                     position,      run_.o.seed,
                     run_.world,    run_.o.model,
                     run_.o.reduce, schedule_record(run_.o.schedule, *run_.eng, mgwfbp_.get())};
    m.optimizer = optimizer_name(*run_.optimizer);
    m.progress = progress;
    save_checkpoint(run_.out_dir + "/checkpoint.pt", m, *run_.model, *run_.optimizer, states);
  }

  uint64_t bytes_sent() const override { return run_.eng->reducer().bytes_sent(); }
  uint64_t bytes_received() const override { return run_.eng->reducer().bytes_received(); }
  int64_t rounds() const override { return rounds_; }
  engine::EngineStats comm_stats() const override { return run_.eng->stats(); }

  void finish(nlohmann::json& final_record) override {
    if (!mgwfbp_ || !mgwfbp_->planned()) return;
    // Predicted against measured backward + non-overlapped communication per step (the last
    // micro-batch's backward and finish()'s wait), over the steps that ran on the plan.
    const double measured = planned_steps_ > 0 ? planned_backward_comm_s_ / planned_steps_ : 0;
    nlohmann::json predicted = {{"mgwfbp", mgwfbp_->predicted_s()}};
    for (const char* other : {"single", "wfbp", "fused:25"}) {
      predicted[other] = mgwfbp_->predict(engine::Schedule::parse(other));
    }
    final_record["mgwfbp_predicted_s"] = mgwfbp_->predicted_s();
    final_record["mgwfbp_measured_s"] = measured;
    final_record["mgwfbp_planned_steps"] = planned_steps_;
    if (run_.lead && !run_.o.quiet) {
      std::printf(
          "mgwfbp: predicted backward+communication %.3f ms/step, measured %.3f ms/step over %lld "
          "steps (%+.1f%%); the same model predicts single %.3f, wfbp %.3f, fused:25 %.3f ms\n",
          1e3 * mgwfbp_->predicted_s(), 1e3 * measured, (long long)planned_steps_,
          measured > 0 ? 100.0 * (mgwfbp_->predicted_s() / measured - 1) : 0.0,
          1e3 * predicted["single"].get<double>(), 1e3 * predicted["wfbp"].get<double>(),
          1e3 * predicted["fused:25"].get<double>());
    }
    if (run_.lead && !run_.out_dir.empty()) {
      nlohmann::json record = mgwfbp_->record();
      record["predicted_s"] = predicted;
      record["measured_s"] = measured;
      record["measured_steps"] = planned_steps_;
      write_file_atomic(run_.out_dir + "/plan.json", record.dump(2) + "\n", /*durable=*/false);
    }
  }

 private:
  Run& run_;
  std::unique_ptr<engine::MgwfbpScheduler> mgwfbp_;
  int64_t rounds_ = 0;         // steps whose gradients were averaged
  int64_t planned_steps_ = 0;  // mgwfbp: steps run on the plan, and their backward + wait time
  double planned_backward_comm_s_ = 0;
};

}  // namespace

std::unique_ptr<Scheme> make_sync_scheme(Run& run) {
  return std::make_unique<SyncScheme>(run);
}

}  // namespace dtrain::train
