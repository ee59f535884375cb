#include "step.h"

#include <chrono>

namespace dtrain::train {
namespace {

using Clock = std::chrono::steady_clock;
double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

StepResult train_step(Run& run, const torch::Tensor& index, int64_t s, int64_t step,
                      bool communicate) {
  const TrainOptions& o = run.o;
  engine::GradientEngine& eng = *run.eng;
  StepResult r;
  auto t0 = Clock::now();
  auto t2 = t0, t3 = t0;
  eng.begin_step(step, o.accumulate, communicate);
  for (int m = 0; m < o.accumulate; ++m) {
    if (m > 0) eng.next_micro_batch();
    const int64_t at = s * run.per_step + m * o.batch_size;
    t0 = Clock::now();
    auto bi = index.slice(0, at, at + o.batch_size);
    auto x = run.data.x_train.index_select(0, bi);
    auto y = run.data.y_train.index_select(0, bi);
    const auto t1 = Clock::now();
    auto loss = torch::nn::functional::cross_entropy(run.model->forward(x), y);
    t2 = Clock::now();
    eng.backward_started();
    (o.accumulate > 1 ? loss / double(o.accumulate) : loss).backward();
    t3 = Clock::now();
    r.data_s += secs(t0, t1);
    r.forward_s += secs(t1, t2);
    r.backward_s += secs(t2, t3);
    r.loss += loss.item<double>() / o.accumulate;
  }
  r.applied = eng.finish();
  const auto t4 = Clock::now();
  if (r.applied) run.optimizer->step();
  const auto t5 = Clock::now();
  run.timeline.record("backward", engine::Timeline::kCompute, t2, t3, step);
  run.timeline.record("wait", engine::Timeline::kCompute, t3, t4, step);
  run.timeline.record("optimizer", engine::Timeline::kCompute, t4, t5, step);
  r.wait_s = secs(t3, t4);
  r.optimizer_s = secs(t4, t5);
  r.last_backward_s = secs(t2, t3);
  return r;
}

}  // namespace dtrain::train
