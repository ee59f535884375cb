// `--schedule mgwfbp`: the MG-WFBP merge plan (plan/mgwfbp.h) measured and installed on a live
// engine.
//
// Works as follows. The engine starts with one bucket (`single`), so that backprop runs without
// communication beside it while the hooks time it. Over the warm-up steps (after the first
// `skip`, which pay for first-touch and allocator growth) each parameter's readiness time is
// recorded; a layer's backward time tb is the gap between its readiness and the previous one's
// (the first layer's is counted from the start of backward). At the end of the warm-up all ranks
// time our allreduce (the dense reducer's own path, agreement checked once per size) over sizes
// from 4 KiB to the model's size and fit t_c(M) = alpha + beta M with a size->time table
// (plan::measure: the slowest rank's time per iteration, so every rank fits the same model).
// Rank 0 takes its medians of tb and its hook order, runs the merge rule and broadcasts
// (order, layers, cost model, plan) as JSON; every rank installs the same buckets. The inputs and
// the plan are kept (to_json) so the plan can be recomputed from what was logged, and the
// checkpoint stores them, so a resumed run uses the same buckets without measuring again.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/engine/engine.h"
#include "dtrain/plan/cost_model.h"
#include "dtrain/plan/mgwfbp.h"

namespace dtrain::engine {

struct MgwfbpOptions {
  int skip_steps = 3;        // first steps not timed
  int warmup_steps = 12;     // steps timed for tb (after skip_steps)
  int allreduce_iters = 40;  // per size up to 256 KiB; fewer above (at least 5)
};

class MgwfbpScheduler {
 public:
  MgwfbpScheduler(GradientEngine& engine, comm::Group& group, MgwfbpOptions options = {});

  // After every finished step, on every rank. On the step that ends the warm-up it measures,
  // plans and installs the buckets (collectives: every rank must call it at the same step).
  // Returns true when it installed the plan.
  bool after_step();
  bool planned() const { return planned_; }

  // Everything the plan came from and the plan itself: {"order": hook order (parameter
  // indices), "layers": [...], "cost": {...}, "plan": {...}, "buckets": [[...]]}.
  const nlohmann::json& record() const { return record_; }
  // Installs a recorded plan (from a checkpoint) without measuring. Validates it.
  void restore(const nlohmann::json& record);
  double predicted_s() const { return plan_.predicted_s; }
  // Predicted backward+communication time of other groupings of the same layers, e.g.
  // "single", "wfbp", "fused:25" (the schedules of Schedule::parse).
  double predict(const Schedule& schedule) const;
  // The plan as a table (plan::describe).
  std::string describe() const;

 private:
  Buckets buckets_of(const plan::MergePlan& plan) const;

  GradientEngine& engine_;
  comm::Group& group_;
  MgwfbpOptions options_;
  const reduce::DenseReducer* dense_;  // the engine's reducer: mgwfbp plans the dense path only
  int steps_seen_ = 0;
  std::vector<std::vector<double>> gaps_;  // per parameter: its tb in each timed step
  std::vector<size_t> order_;              // rank 0's hook order (first produced first)
  std::vector<plan::Layer> layers_;        // forward order: layer l = order_[L-1-l]
  plan::CostModel cost_;
  plan::MergePlan plan_;
  nlohmann::json record_;
  bool planned_ = false;
};

}  // namespace dtrain::engine
