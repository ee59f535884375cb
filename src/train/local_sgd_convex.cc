// Local SGD on l2-regularised logistic regression, simulated in one process (Stich, ICLR 2019).
//
// Works as follows. A problem is a CSR matrix of unit-norm rows with +-1 labels. Its optimum
// comes from Newton's method: the Hessian lambda I + 1/n sum_i s_i (1 - s_i) a_i a_i^T is built
// from each row's non-zeros (upper triangle; the rows are sparse, so this costs n nnz^2 / 2, not
// n d^2), factored by Cholesky, and the step is damped by backtracking until f decreases. In
// float64 the gradient reaches ~1e-15, so f* is exact far below any suboptimality we measure.
//
// The simulator keeps the K replicas in one K x d array. A local step of a replica: draw b rows
// from the replica's stream, compute every row's logistic coefficient at the current x (a
// mini-batch gradient, not b sequential steps), shrink x by (1 - eta lambda) for the regulariser,
// then add the sparse rows. An averaging time of the LocalSgdSchedule (the distributed scheme's
// own `--algorithm` object, so the rounds are exactly those of `dtrain train`) replaces every
// replica by the mean: one round. Synchronous steps (`sync`, or the warm-up of post-local SGD)
// average after every step, which for plain SGD is the same as averaging the gradients.
#include "dtrain/train/local_sgd_convex.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dtrain/common/error.h"
#include "dtrain/common/random.h"
#include "dtrain/train/local_sgd_schedule.h"

namespace dtrain::train::convex {
namespace {

// f(x) - f* below which Newton's method stops: far below any suboptimality the bench measures.
constexpr double kNegligible = 1e-20;

// log(1 + exp(m)) without overflow.
double softplus(double m) {
  return m > 0 ? m + std::log1p(std::exp(-m)) : std::log1p(std::exp(m));
}

// 1 / (1 + exp(-m)).
double sigmoid(double m) {
  if (m >= 0) return 1 / (1 + std::exp(-m));
  const double e = std::exp(m);
  return e / (1 + e);
}

double row_dot(const Problem& p, size_t i, const double* x) {
  double z = 0;
  for (size_t q = p.row_start[i]; q < p.row_start[i + 1]; ++q) z += p.val[q] * x[p.col[q]];
  return z;
}

// Uniform on [0, 1) with 53 random bits.
double uniform(KeyedRng& rng) {
  return static_cast<double>(rng.next() >> 11) * 0x1p-53;
}

double gaussian(KeyedRng& rng) {
  const double u = 1 - uniform(rng);  // (0, 1]
  return std::sqrt(-2 * std::log(u)) * std::cos(2 * M_PI * uniform(rng));
}

// Appends a row; scales its values to unit norm.
void add_row(Problem& p, const std::vector<std::pair<uint32_t, double>>& entries, double label) {
  double norm2 = 0;
  for (auto [c, v] : entries) norm2 += v * v;
  const double inv = 1 / std::sqrt(norm2);
  for (auto [c, v] : entries) {
    p.col.push_back(c);
    p.val.push_back(v * inv);
  }
  p.row_start.push_back(p.col.size());
  p.label.push_back(label);
}

double squared_norm(std::span<const double> v) {
  double s = 0;
  for (double e : v) s += e * e;
  return s;
}

// Solves A x = b in place (b becomes x) for symmetric positive definite A (row-major, m x m),
// destroying A. False when A is not numerically positive definite.
bool cholesky_solve(std::vector<double>& a, std::vector<double>& b, size_t m) {
  for (size_t j = 0; j < m; ++j) {
    double* rj = &a[j * m];
    for (size_t k = 0; k < j; ++k) rj[j] -= rj[k] * rj[k];
    if (!(rj[j] > 0)) return false;
    rj[j] = std::sqrt(rj[j]);
    for (size_t i = j + 1; i < m; ++i) {
      double* ri = &a[i * m];
      double s = ri[j];
      for (size_t k = 0; k < j; ++k) s -= ri[k] * rj[k];
      ri[j] = s / rj[j];
    }
  }
  for (size_t i = 0; i < m; ++i) {  // L y = b
    for (size_t k = 0; k < i; ++k) b[i] -= a[i * m + k] * b[k];
    b[i] /= a[i * m + i];
  }
  for (size_t i = m; i-- > 0;) {  // L^T x = y
    for (size_t k = i + 1; k < m; ++k) b[i] -= a[k * m + i] * b[k];
    b[i] /= a[i * m + i];
  }
  return true;
}

double parse_number(const std::string& text, const std::string& spec) {
  size_t pos = 0;
  double v = std::numeric_limits<double>::quiet_NaN();
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  DT_ENFORCE(pos == text.size() && pos > 0 && std::isfinite(v) && v > 0, "--lr-schedule '", spec,
             "': '", text, "' is not a positive number");
  return v;
}

}  // namespace

double Problem::smoothness() const {
  double max_norm2 = 0;
  for (size_t i = 0; i < size(); ++i) {
    double s = 0;
    for (size_t q = row_start[i]; q < row_start[i + 1]; ++q) s += val[q] * val[q];
    max_norm2 = std::max(max_norm2, s);
  }
  return max_norm2 / 4 + lambda;
}

Problem make_w8a_like(const W8aLikeOptions& o) {
  DT_ENFORCE(o.n >= 2 && o.dim >= 1 && o.dim < (size_t(1) << 31), "w8a-like problem: n=", o.n,
             " and d=", o.dim, " must be >= 2 and >= 1");
  DT_ENFORCE(o.label_noise >= 0 && o.label_noise < 0.5, "--label-noise must be in [0, 0.5), got ",
             o.label_noise);
  KeyedRng rng({o.seed, 0x77386121});
  // Feature j appears with probability c / (j + 1)^0.7, c such that a row has ~11.65 non-zeros
  // (w8a's mean) at d = 300; capped at 0.9.
  std::vector<double> freq(o.dim);
  double total = 0;
  for (size_t j = 0; j < o.dim; ++j) total += std::pow(double(j + 1), -0.7);
  const double c = 11.65 * (std::min<double>(o.dim, 300) / 300) / total;
  for (size_t j = 0; j < o.dim; ++j) freq[j] = std::min(0.9, c * std::pow(double(j + 1), -0.7));
  std::vector<double> w_star(o.dim);
  for (auto& w : w_star) w = gaussian(rng);

  Problem p;
  p.name = "w8a-like";
  p.dim = o.dim;
  std::vector<std::vector<std::pair<uint32_t, double>>> rows(o.n);
  std::vector<double> score(o.n);
  for (size_t i = 0; i < o.n; ++i) {
    for (size_t j = 0; j < o.dim; ++j) {
      if (uniform(rng) < freq[j]) rows[i].push_back({static_cast<uint32_t>(j), 1.0});
    }
    if (rows[i].empty()) rows[i].push_back({static_cast<uint32_t>(rng.below(o.dim)), 1.0});
    for (auto [j, v] : rows[i]) score[i] += w_star[j] * v / std::sqrt(double(rows[i].size()));
  }
  std::vector<double> sorted = score;
  std::nth_element(sorted.begin(), sorted.begin() + o.n / 2, sorted.end());
  const double median = sorted[o.n / 2];
  for (size_t i = 0; i < o.n; ++i) {
    double y = score[i] > median ? 1 : -1;
    if (uniform(rng) < o.label_noise) y = -y;
    add_row(p, rows[i], y);
  }
  p.lambda = 1.0 / double(o.n);
  return p;
}

Problem make_fmnist_binary(const data::Dataset& d, int positive, int negative, size_t max_rows) {
  DT_ENFORCE(positive != negative, "--problem fmnist: the two classes must differ, got ", positive,
             " twice");
  Problem p;
  p.name = "fmnist-" + std::to_string(positive) + "v" + std::to_string(negative);
  p.dim = d.dim;
  size_t counts[2] = {0, 0};
  std::vector<std::pair<uint32_t, double>> entries;
  for (size_t i = 0; i < d.size() && (max_rows == 0 || p.size() < max_rows); ++i) {
    if (d.labels[i] != positive && d.labels[i] != negative) continue;
    entries.clear();
    for (size_t j = 0; j < d.dim; ++j) {
      // Back to the byte the IDX file held, so black pixels are exact zeros.
      const double pixel = std::round(
          (d.features[i * d.dim + j] * data::kFashionMnistStd + data::kFashionMnistMean) * 255);
      if (pixel > 0) entries.push_back({static_cast<uint32_t>(j), pixel / 255});
    }
    if (entries.empty()) continue;
    ++counts[d.labels[i] == positive ? 0 : 1];
    add_row(p, entries, d.labels[i] == positive ? 1 : -1);
  }
  DT_ENFORCE(counts[0] > 0 && counts[1] > 0, "--problem fmnist: no rows of class ",
             counts[0] == 0 ? positive : negative);
  p.lambda = 1.0 / double(p.size());
  return p;
}

double objective(const Problem& p, std::span<const double> x) {
  double loss = 0;
  for (size_t i = 0; i < p.size(); ++i) loss += softplus(-p.label[i] * row_dot(p, i, x.data()));
  return loss / double(p.size()) + p.lambda / 2 * squared_norm(x);
}

double objective_and_gradient(const Problem& p, std::span<const double> x, std::span<double> g) {
  DT_ENFORCE(x.size() == p.dim && g.size() == p.dim, "objective_and_gradient: sizes ", x.size(),
             ", ", g.size(), " for d=", p.dim);
  std::fill(g.begin(), g.end(), 0.0);
  double loss = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double m = -p.label[i] * row_dot(p, i, x.data());
    loss += softplus(m);
    const double coef = -p.label[i] * sigmoid(m);
    for (size_t q = p.row_start[i]; q < p.row_start[i + 1]; ++q) g[p.col[q]] += coef * p.val[q];
  }
  const double inv_n = 1.0 / double(p.size());
  for (size_t j = 0; j < p.dim; ++j) g[j] = g[j] * inv_n + p.lambda * x[j];
  return loss * inv_n + p.lambda / 2 * squared_norm(x);
}

Optimum solve(const Problem& p, double grad_tol, int max_iter) {
  const size_t d = p.dim;
  Optimum opt;
  opt.x.assign(d, 0.0);
  std::vector<double> g(d), hess(d * d), step(d), trial(d);
  double f = objective_and_gradient(p, opt.x, g);
  for (opt.iterations = 0; opt.iterations < max_iter; ++opt.iterations) {
    if (std::sqrt(squared_norm(g)) <= grad_tol) break;
    std::fill(hess.begin(), hess.end(), 0.0);
    for (size_t i = 0; i < p.size(); ++i) {
      const double s = sigmoid(row_dot(p, i, opt.x.data()));
      const double w = s * (1 - s);
      for (size_t q = p.row_start[i]; q < p.row_start[i + 1]; ++q) {
        const double wv = w * p.val[q];
        double* hrow = &hess[p.col[q] * d];
        for (size_t r = q; r < p.row_start[i + 1]; ++r) hrow[p.col[r]] += wv * p.val[r];
      }
    }
    const double inv_n = 1.0 / double(p.size());
    for (size_t j = 0; j < d; ++j) {
      for (size_t k = j; k < d; ++k) hess[k * d + j] = hess[j * d + k] = hess[j * d + k] * inv_n;
      hess[j * d + j] += p.lambda;
    }
    for (size_t j = 0; j < d; ++j) step[j] = -g[j];
    if (!cholesky_solve(hess, step, d)) break;
    double slope = 0;
    for (size_t j = 0; j < d; ++j) slope += g[j] * step[j];
    // The Newton decrement -slope / 2 estimates f(x) - f*: below kNegligible the remaining
    // steps only chase rounding in the gradient (dense rows stall near |grad| ~ 1e-12).
    if (-slope / 2 <= kNegligible) break;
    // Backtracking (Armijo); near the optimum the full Newton step is taken.
    double t = 1, f_trial = f;
    bool decreased = false;
    for (int k = 0; k < 40; ++k, t /= 2) {
      for (size_t j = 0; j < d; ++j) trial[j] = opt.x[j] + t * step[j];
      f_trial = objective(p, trial);
      if (f_trial <= f + 0.25 * t * slope) {
        decreased = true;
        break;
      }
    }
    if (!decreased) break;  // at rounding level: no representable decrease left
    opt.x.swap(trial);
    f = objective_and_gradient(p, opt.x, g);
  }
  opt.value = f;
  opt.grad_norm = std::sqrt(squared_norm(g));
  opt.error_bound = opt.grad_norm * opt.grad_norm / (2 * p.lambda);
  return opt;
}

StepSize StepSize::parse(const std::string& spec) {
  StepSize s;
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (name == "theory") {
    DT_ENFORCE(colon == std::string::npos, "--lr-schedule theory takes no parameters, got '", spec,
               "'");
    return s;
  }
  if (name == "const") {
    s.kind = Kind::kConst;
    s.eta0 = parse_number(args, spec);
    return s;
  }
  DT_ENFORCE(name == "decay", "--lr-schedule '", spec,
             "': unknown schedule (valid: theory, const:ETA, decay:ETA0,T0)");
  const size_t comma = args.find(',');
  DT_ENFORCE(comma != std::string::npos, "--lr-schedule '", spec,
             "': decay takes ETA0,T0 (eta_t = ETA0 T0 / (T0 + t))");
  s.kind = Kind::kDecay;
  s.eta0 = parse_number(args.substr(0, comma), spec);
  s.t0 = parse_number(args.substr(comma + 1), spec);
  return s;
}

StepSize StepSize::resolve(const Problem& p, int64_t max_period) const {
  if (kind != Kind::kTheory) return *this;
  const double mu = p.lambda;
  const double kappa = p.smoothness() / mu;
  const double a = std::max(16 * kappa, double(max_period)) + 1;
  StepSize s;
  s.kind = Kind::kDecay;
  s.eta0 = 4 / (mu * a);
  s.t0 = a;
  return s;
}

double StepSize::at(int64_t t) const {
  DT_ENFORCE(kind != Kind::kTheory, "StepSize::at on an unresolved theory schedule");
  return kind == Kind::kConst ? eta0 : eta0 * t0 / (t0 + double(t));
}

std::string StepSize::str() const {
  char buf[96];
  switch (kind) {
    case Kind::kTheory:
      return "theory";
    case Kind::kConst:
      std::snprintf(buf, sizeof(buf), "const:%.6g", eta0);
      return buf;
    case Kind::kDecay:
      std::snprintf(buf, sizeof(buf), "decay:%.6g,%.6g", eta0, t0);
      return buf;
  }
  return "?";
}

SimResult simulate(const Problem& p, const SimOptions& o) {
  const auto schedule = LocalSgdSchedule::parse(o.algorithm);
  DT_ENFORCE(o.workers >= 1 && o.batch >= 1 && o.steps >= 1, "local SGD simulation: K=", o.workers,
             ", b=", o.batch, ", T=", o.steps, " must all be >= 1");
  DT_ENFORCE(o.step.kind != StepSize::Kind::kTheory, "simulate: resolve the step size first");
  for (size_t c = 0; c < o.checkpoints.size(); ++c) {
    DT_ENFORCE(o.checkpoints[c] >= 1 && o.checkpoints[c] <= o.steps &&
                   (c == 0 || o.checkpoints[c] > o.checkpoints[c - 1]),
               "simulate: checkpoints must ascend within [1, ", o.steps, "], got ",
               o.checkpoints[c]);
  }
  const size_t d = p.dim, n = p.size(), K = size_t(o.workers), b = size_t(o.batch);
  std::vector<double> x(K * d, 0.0), mean(d, 0.0), coef(b), weighted_sum(d, 0.0);
  std::vector<size_t> rows(b);
  std::vector<KeyedRng> rngs;
  for (size_t k = 0; k < K; ++k) rngs.emplace_back(KeyedRng({o.seed, k}));
  double weight_total = 0;
  const double offset = o.step.weight_offset();

  auto compute_mean = [&] {
    std::fill(mean.begin(), mean.end(), 0.0);
    for (size_t k = 0; k < K; ++k) {
      for (size_t j = 0; j < d; ++j) mean[j] += x[k * d + j];
    }
    for (size_t j = 0; j < d; ++j) mean[j] /= double(K);
  };

  SimResult result;
  size_t next_cp = 0;
  for (int64_t t = 0; t < o.steps; ++t) {
    const double eta = o.step.at(t);
    if (o.weighted_average) {
      compute_mean();
      const double w = (offset + double(t)) * (offset + double(t));
      for (size_t j = 0; j < d; ++j) weighted_sum[j] += w * mean[j];
      weight_total += w;
    }
    for (size_t k = 0; k < K; ++k) {
      double* xk = &x[k * d];
      for (size_t s = 0; s < b; ++s) {
        rows[s] = rngs[k].below(n);
        const double y = p.label[rows[s]];
        coef[s] = -y * sigmoid(-y * row_dot(p, rows[s], xk)) * (eta / double(b));
      }
      const double shrink = 1 - eta * p.lambda;
      for (size_t j = 0; j < d; ++j) xk[j] *= shrink;
      for (size_t s = 0; s < b; ++s) {
        for (size_t q = p.row_start[rows[s]]; q < p.row_start[rows[s] + 1]; ++q) {
          xk[p.col[q]] -= coef[s] * p.val[q];
        }
      }
    }
    const bool average = schedule.synchronous(t) || schedule.average_after(t);
    const bool measure = next_cp < o.checkpoints.size() && o.checkpoints[next_cp] == t + 1;
    if ((average && K > 1) || measure) compute_mean();
    Checkpoint cp;
    if (measure) {
      // The spread is taken before the averaging: how far the replicas drifted apart.
      double spread = 0;
      for (size_t k = 0; k < K; ++k) {
        for (size_t j = 0; j < d; ++j) {
          const double dev = x[k * d + j] - mean[j];
          spread += dev * dev;
        }
      }
      cp.spread = spread / double(K);
    }
    if (average) {
      ++result.rounds;
      for (size_t k = 0; k < K && K > 1; ++k) {
        std::copy(mean.begin(), mean.end(), x.begin() + k * d);
      }
    }
    if (measure) {
      ++next_cp;
      cp.steps = t + 1;
      cp.rounds = result.rounds;
      cp.grad_evals = double(K) * double(t + 1) * double(b);
      cp.value = objective(p, mean);
      cp.weighted = std::numeric_limits<double>::quiet_NaN();
      if (o.weighted_average) {
        std::vector<double> avg(d);
        for (size_t j = 0; j < d; ++j) avg[j] = weighted_sum[j] / weight_total;
        cp.weighted = objective(p, avg);
      }
      result.checkpoints.push_back(cp);
    }
  }
  compute_mean();
  result.mean = mean;
  return result;
}

const Checkpoint* first_reaching(const std::vector<Checkpoint>& cps, double f_star, double eps,
                                 bool weighted, int64_t max_steps) {
  for (const auto& cp : cps) {
    if (cp.steps > max_steps) break;
    if ((weighted ? cp.weighted : cp.value) - f_star <= eps) return &cp;
  }
  return nullptr;
}

}  // namespace dtrain::train::convex
