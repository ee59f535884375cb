// Local SGD on a convex problem, simulated in one process: the experiment of Stich, "Local SGD
// Converges Fast and Communicates Little" (ICLR 2019), behind `dtrain bench localsgd`.
//
// The problem is l2-regularised binary logistic regression over sparse rows, everything in float64:
//   f(x) = 1/n sum_i log(1 + exp(-y_i <a_i, x>)) + lambda/2 |x|^2,   y_i in {-1, +1}, |a_i| = 1.
// f* comes from Newton's method (dense d x d Hessian, Cholesky, backtracking line search) run until
// the gradient is at rounding level, so f(x) - f* is measured down to ~1e-12.
//
// The simulator runs K replicas of the model. Step t (0-based, counted per worker) is the same on
// every replica: replica k draws b row indices uniformly with replacement from its own stream,
// KeyedRng({seed, k}), b calls of below(n) per step in order, and takes
//   x_k <- x_k - eta_t (lambda x_k + 1/b sum_s g(a_s, y_s, x_k)),
// with all b sample gradients taken at the same x_k. After step t, when the LocalSgdSchedule of
// the `--algorithm` spec says average_after(t), every replica is replaced by the mean of the K
// (one communication round). So H = 1 is mini-batch SGD with batch K b over the same samples, and
// K = 1 is plain SGD. The measured iterate is the mean of the replicas at a checkpoint (equal to
// every replica when the checkpoint is an averaging time) and, optionally, the paper's weighted
// average x_hat = sum_t w_t xbar_t / sum_t w_t with w_t = (a + t)^2 over the steps taken.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "dtrain/data/dataset.h"

namespace dtrain::train::convex {

// n rows a_i of a d-column sparse matrix (CSR), labels +-1, and the l2 weight.
struct Problem {
  std::string name;
  size_t dim = 0;
  std::vector<size_t> row_start{0};  // size() + 1
  std::vector<uint32_t> col;
  std::vector<double> val;
  std::vector<double> label;  // +1 or -1
  double lambda = 0;          // mu: f is lambda-strongly convex

  size_t size() const { return label.size(); }
  // L = max_i |a_i|^2 / 4 + lambda: the smoothness constant of every sample's loss.
  double smoothness() const;
};

// A generated problem shaped like LIBSVM's w8a: binary features whose frequencies fall off as a
// power law (about 12 non-zeros of 300 per row on average, at least one), each row scaled to unit
// norm; labels y = sign(<w*, a> - median) of a planted Gaussian w*, each flipped with probability
// label_noise. lambda = 1/n.
struct W8aLikeOptions {
  size_t n = 49749;
  size_t dim = 300;
  double label_noise = 0.05;
  uint64_t seed = 1;
};
Problem make_w8a_like(const W8aLikeOptions& o);

// A binary task from Fashion-MNIST (data::load_fashion_mnist): rows of class `positive` (y = +1)
// and `negative` (y = -1), at most max_rows of them (0: all), in dataset order. The standardised
// pixels are mapped back to [0, 1] (so black pixels are zeros of the sparse rows), then each row
// is scaled to unit norm. lambda = 1/n. Throws InvalidArgument when a class has no row.
Problem make_fmnist_binary(const data::Dataset& d, int positive, int negative, size_t max_rows);

// f(x) in float64.
double objective(const Problem& p, std::span<const double> x);
// f(x), with its gradient written to g (size dim).
double objective_and_gradient(const Problem& p, std::span<const double> x, std::span<double> g);

struct Optimum {
  std::vector<double> x;
  double value = 0;      // f*
  double grad_norm = 0;  // |grad f(x)| at the returned x
  int iterations = 0;
  // |grad|^2 / (2 lambda): strong convexity bounds f(x) - f* (the error in f*) by this.
  double error_bound = 0;
};
// Newton's method from x = 0 until |grad| <= grad_tol, the Newton decrement (an estimate of
// f(x) - f*) is below 1e-20, or no step decreases f; at most max_iter iterations. A solve that
// stops short shows in grad_norm and error_bound.
Optimum solve(const Problem& p, double grad_tol = 1e-13, int max_iter = 100);

// Step sizes eta_t (t = steps taken by a worker, 0-based):
//   theory           eta_t = 4 / (mu (a + t)), a = max(16 kappa, H) + 1, kappa = L / mu (spec)
//   const:ETA        eta_t = ETA
//   decay:ETA0,T0    eta_t = ETA0 T0 / (T0 + t)
// `theory` is the decay family with ETA0 = 4 / (mu a), T0 = a; resolve() fills those in.
struct StepSize {
  enum class Kind { kTheory, kConst, kDecay };
  Kind kind = Kind::kTheory;
  double eta0 = 0;
  double t0 = 0;  // 0 for const

  // Throws InvalidArgument naming --lr-schedule on a bad spec (ETA <= 0, T0 <= 0, ...).
  static StepSize parse(const std::string& spec);
  // theory -> decay with the problem's constants and the largest H of the sweep; others as is.
  StepSize resolve(const Problem& p, int64_t max_period) const;
  double at(int64_t t) const;
  // The paper's averaging weight offset a (T0; 0 for const, where the weights are uniform).
  double weight_offset() const { return kind == Kind::kConst ? 0 : t0; }
  std::string str() const;
};

struct SimOptions {
  int workers = 1;                      // K
  std::string algorithm = "local:H=1";  // LocalSgdSchedule spec
  int64_t steps = 0;                    // T: local steps per worker
  int batch = 1;                        // b
  StepSize step;                        // resolved (not kTheory)
  uint64_t seed = 1;
  // Step counts (steps taken, ascending, in [1, steps]) at which the iterates are measured.
  std::vector<int64_t> checkpoints;
  bool weighted_average = false;  // also track the paper's weighted average of iterates
};

struct Checkpoint {
  int64_t steps = 0;      // steps per worker taken
  int64_t rounds = 0;     // averagings done
  double grad_evals = 0;  // K * steps * b sample gradients
  double value = 0;       // f(mean of the replicas)
  double weighted = 0;    // f(weighted average); NaN when not tracked
  double spread = 0;      // mean over replicas of |x_k - mean|^2, before this step's averaging
};

struct SimResult {
  std::vector<Checkpoint> checkpoints;
  std::vector<double> mean;  // mean of the replicas after the last step
  int64_t rounds = 0;
};

// Runs the K replicas for opts.steps steps; see the top of this file.
SimResult simulate(const Problem& p, const SimOptions& opts);

// The first checkpoint, among those at most max_steps, whose suboptimality value - f_star
// (weighted: the weighted average's) is <= eps; nullptr if none is.
const Checkpoint* first_reaching(const std::vector<Checkpoint>& cps, double f_star, double eps,
                                 bool weighted = false,
                                 int64_t max_steps = std::numeric_limits<int64_t>::max());

}  // namespace dtrain::train::convex
