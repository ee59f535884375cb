// L-BFGS whose vectors live elsewhere: Sandblaster's coordinator (DistBelief) holds scalars only.
//
// Every vector is a name, and every vector operation is one of four commands the parameter
// server's shards run on their own key ranges (ps::Client's dot/axpy/scale/copy): the parameters
// "w", the gradient "g", the direction "d", the previous point and gradient "w_prev"/"g_prev",
// and the history pairs "s<k>"/"y<k>" (k < history, a ring). Only dot products come back.
//
//   ClientVectorOps ops(client);                       // or any VectorOps
//   auto r = minimize_lbfgs(ops, [&] { return f_and_g_at_w(); }, {.history = 10});
//
// `evaluate` computes the objective at the point held in "w" and leaves its gradient in "g". The
// direction is the two-loop recursion (Nocedal & Wright, Algorithm 7.4) with the initial Hessian
// scaled by s'y / y'y; the step is a backtracking line search on the Armijo condition (the first
// step, with no history, is min(1, 1/|g|) as in LibTorch's LBFGS). A pair with s'y <= 0 is not
// kept (it would break positive definiteness; a convex objective never produces one).
#pragma once

#include <functional>
#include <string>

namespace dtrain::train {

struct VectorOps {
  virtual ~VectorOps() = default;
  virtual double dot(const std::string& a, const std::string& b) = 0;
  virtual void axpy(double alpha, const std::string& x, const std::string& y) = 0;  // y += a x
  virtual void scale(double alpha, const std::string& x) = 0;                       // x *= a
  virtual void copy(const std::string& from, const std::string& to) = 0;
};

struct LbfgsOptions {
  int history = 10;
  int max_evaluations = 100;        // objective evaluations in all (line-search trials included)
  double tolerance_grad = 1e-7;     // stop when |g| <= this
  double tolerance_change = 1e-10;  // stop when |f_prev - f| <= this * max(1, |f|), twice in a row
  double armijo = 1e-4;             // sufficient decrease: f <= f_prev + armijo * t * g'd
  int max_backtracks = 30;          // halvings of the step before the search gives up
};

struct LbfgsIteration {
  int iteration = 0;
  int evaluations = 0;  // so far
  double f = 0;
  double grad_norm = 0;
  double step = 0;  // the accepted step length t
};

struct LbfgsResult {
  double f = 0;
  double grad_norm = 0;
  int iterations = 0;
  int evaluations = 0;
  // Why it stopped: "gradient", "change", "budget", "line search" (no decrease along steepest
  // descent either), "non-finite gradient".
  std::string stop;
};

LbfgsResult minimize_lbfgs(VectorOps& ops, const std::function<double()>& evaluate,
                           const LbfgsOptions& options,
                           const std::function<void(const LbfgsIteration&)>& on_iteration = {});

}  // namespace dtrain::train
