#include "evaluation.h"

#include <algorithm>

#include "dtrain/collective/collective.h"

namespace dtrain::train {

namespace {

// Correct predictions, summed loss and count over test samples [lo, hi).
void evaluate_slice(torchx::Net& model, const TensorData& d, int64_t lo, int64_t hi,
                    double sums[3]) {
  torch::NoGradGuard guard;
  sums[0] = sums[1] = 0;
  sums[2] = double(hi - lo);
  for (int64_t b = lo; b < hi; b += 1024) {
    int64_t e = std::min(hi, b + 1024);
    auto logits = model.forward(d.x_test.slice(0, b, e));
    auto y = d.y_test.slice(0, b, e);
    sums[0] += logits.argmax(1).eq(y).sum().item<double>();
    sums[1] +=
        torch::nn::functional::cross_entropy(
            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
            .item<double>();
  }
}

}  // namespace

std::pair<double, double> evaluate(torchx::Net& model, const TensorData& d, comm::Group& g) {
  const int64_t n = d.x_test.size(0);
  const int64_t lo = n * g.rank() / g.size(), hi = n * (g.rank() + 1) / g.size();
  double sums[3];  // correct, loss sum, count
  evaluate_slice(model, d, lo, hi, sums);
  collective::AllreduceOptions o(g);
  o.output = collective::View(sums, 3, collective::DataType::kFloat64);
  collective::allreduce(o);
  return {sums[0] / std::max(1.0, sums[2]), sums[1] / std::max(1.0, sums[2])};
}

std::pair<double, double> evaluate(torchx::Net& model, const TensorData& d) {
  double sums[3];
  evaluate_slice(model, d, 0, d.x_test.size(0), sums);
  return {sums[0] / std::max(1.0, sums[2]), sums[1] / std::max(1.0, sums[2])};
}

bool TargetTracker::add(int64_t step, double time_s, double accuracy) {
  if (!enabled() || reached()) return false;
  const bool at_target = accuracy >= target_;
  if (at_target && previous_at_target_) {
    reached_step_ = step;
    reached_time_s_ = time_s;
    return true;
  }
  previous_at_target_ = at_target;
  return false;
}

nlohmann::json TargetTracker::state() const {
  return {{"previous_at_target", previous_at_target_},
          {"reached_step", reached_step_},
          {"reached_time_s", reached_time_s_}};
}

void TargetTracker::restore(const nlohmann::json& state) {
  previous_at_target_ = state.value("previous_at_target", false);
  reached_step_ = state.value("reached_step", int64_t{-1});
  reached_time_s_ = state.value("reached_time_s", -1.0);
}

}  // namespace dtrain::train
