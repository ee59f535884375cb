#include "dtrain/train/sandblaster_lbfgs.h"

#include <cmath>
#include <deque>
#include <vector>

#include "dtrain/common/error.h"

namespace dtrain::train {
namespace {

struct Pair {
  int slot;    // vectors "s<slot>" and "y<slot>"
  double rho;  // 1 / s'y
};

std::string s_of(int slot) {
  return "s" + std::to_string(slot);
}
std::string y_of(int slot) {
  return "y" + std::to_string(slot);
}

}  // namespace

LbfgsResult minimize_lbfgs(VectorOps& ops, const std::function<double()>& evaluate,
                           const LbfgsOptions& o,
                           const std::function<void(const LbfgsIteration&)>& on_iteration) {
  DT_ENFORCE(o.history >= 1, "L-BFGS: history must be >= 1, got ", o.history);
  DT_ENFORCE(o.max_evaluations >= 1, "L-BFGS: max_evaluations must be >= 1, got ",
             o.max_evaluations);
  LbfgsResult r;
  double f = evaluate();
  r.evaluations = 1;
  DT_ENFORCE(std::isfinite(f), "L-BFGS: the objective at the initial point is ", f);
  double gg = ops.dot("g", "g");
  std::deque<Pair> history;     // oldest first
  double gamma = 1;             // s'y / y'y of the newest pair
  std::vector<int> free_slots;  // slots not in the history
  for (int k = o.history - 1; k >= 0; --k) free_slots.push_back(k);
  auto finish = [&](const char* why) {
    r.f = f;
    r.grad_norm = std::sqrt(gg);
    r.stop = why;
    return r;
  };
  if (std::sqrt(gg) <= o.tolerance_grad) return finish("gradient");
  DT_ENFORCE(std::isfinite(gg), "L-BFGS: the gradient at the initial point is not finite");

  int small_changes = 0;  // consecutive iterations whose change was below tolerance_change
  for (int it = 1;; ++it) {
    // d = -H g by the two-loop recursion.
    ops.copy("g", "d");
    std::vector<double> alpha(history.size());
    for (size_t i = history.size(); i-- > 0;) {
      alpha[i] = history[i].rho * ops.dot(s_of(history[i].slot), "d");
      ops.axpy(-alpha[i], y_of(history[i].slot), "d");
    }
    if (!history.empty()) ops.scale(gamma, "d");
    for (size_t i = 0; i < history.size(); ++i) {
      const double beta = history[i].rho * ops.dot(y_of(history[i].slot), "d");
      ops.axpy(alpha[i] - beta, s_of(history[i].slot), "d");
    }
    ops.scale(-1.0, "d");
    double gd = ops.dot("g", "d");
    if (!(gd < 0)) {  // not a descent direction (rounding): start over from steepest descent
      for (const auto& p : history) free_slots.push_back(p.slot);
      history.clear();
      small_changes = 0;  // the short step that follows a reset is not a stall
      ops.copy("g", "d");
      ops.scale(-1.0, "d");
      gd = -gg;
    }
    double t = history.empty() ? std::min(1.0, 1.0 / std::sqrt(gg)) : 1.0;

    // Backtracking line search from w_prev along d.
    ops.copy("w", "w_prev");
    ops.copy("g", "g_prev");
    const double f_prev = f;
    bool accepted = false;
    for (int bt = 0; bt <= o.max_backtracks && r.evaluations < o.max_evaluations; ++bt) {
      if (bt > 0) {
        t *= 0.5;
        ops.copy("w_prev", "w");
      }
      ops.axpy(t, "d", "w");
      f = evaluate();
      ++r.evaluations;
      if (std::isfinite(f) && f <= f_prev + o.armijo * t * gd) {
        accepted = true;
        break;
      }
    }
    if (!accepted) {  // back to the last point that was accepted
      ops.copy("w_prev", "w");
      ops.copy("g_prev", "g");
      f = f_prev;
      if (!history.empty() && r.evaluations < o.max_evaluations) {
        // The quasi-Newton direction failed: forget the history, try steepest descent once.
        for (const auto& p : history) free_slots.push_back(p.slot);
        history.clear();
        small_changes = 0;
        --it;
        continue;
      }
      r.iterations = it - 1;
      return finish(r.evaluations >= o.max_evaluations ? "budget" : "line search");
    }
    r.iterations = it;

    // The new pair: s = w - w_prev, y = g - g_prev.
    if (free_slots.empty()) {  // the history is full: its oldest pair makes room
      free_slots.push_back(history.front().slot);
      history.pop_front();
    }
    const int slot = free_slots.back();
    free_slots.pop_back();
    ops.copy("w", s_of(slot));
    ops.axpy(-1.0, "w_prev", s_of(slot));
    ops.copy("g", y_of(slot));
    ops.axpy(-1.0, "g_prev", y_of(slot));
    const double sy = ops.dot(s_of(slot), y_of(slot));
    const double yy = ops.dot(y_of(slot), y_of(slot));
    if (sy > 1e-16 * yy && yy > 0) {
      history.push_back({slot, 1.0 / sy});
      gamma = sy / yy;
    } else {
      free_slots.push_back(slot);
    }
    gg = ops.dot("g", "g");
    if (!std::isfinite(gg)) return finish("non-finite gradient");
    if (on_iteration) on_iteration({it, r.evaluations, f, std::sqrt(gg), t});
    if (std::sqrt(gg) <= o.tolerance_grad) return finish("gradient");
    // A stall is two small changes in a row: one alone may be a short step after the history
    // was reset (seen with float32 gradients summed in varying order), not the optimum.
    if (std::abs(f_prev - f) <= o.tolerance_change * std::max(1.0, std::abs(f))) {
      if (++small_changes >= 2) return finish("change");
    } else {
      small_changes = 0;
    }
    if (r.evaluations >= o.max_evaluations) return finish("budget");
  }
}

}  // namespace dtrain::train
