// `dtrain bench localsgd`: the convex experiment of Stich, "Local SGD Converges Fast and
// Communicates Little" (ICLR 2019), reproduced on l2-regularised logistic regression.
//
// Works as follows. The problem (a generated w8a-like one, or a binary Fashion-MNIST task) is
// built and solved by Newton's method for f* (train/local_sgd_convex.h). Then every (K, H) of the
// sweep is simulated once for the largest budget T of --steps: the step sizes depend on the step
// count only, never on T, so the run for a smaller T is exactly the first T steps of that run,
// and a smaller T's results are read off its checkpoints. K = 1 runs only H = 1 (one replica:
// averaging is a no-op). Checkpoints lie every (smallest T) / --checkpoints steps, or every H
// steps when H is longer, so each is an averaging time of every run and the measured iterate is
// the model every worker holds; the rounds to reach a target are then exact to one spacing.
//
// The summary checks the paper's three claims at K = --summary-workers:
//   (2) rounds to reach eps per H within each budget T (every H spends the same K T b gradient
//       evaluations), the best H (fewest rounds) and rounds(H = 1) / rounds(best H);
//   (3) the best H at each T, for eps fixed from the smallest T and for eps set per T;
//   (1) linear speedup: steps per worker to reach a target against K, and f - f* at equal
//       gradient evaluations K t = largest T.
// eps = --eps-factor x (f - f* that H = 1 reaches at the end of the smallest T), unless --eps.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>

#include "commands.h"
#include "dtrain/common/error.h"
#include "dtrain/data/dataset.h"
#include "dtrain/train/local_sgd_convex.h"
#include "report.h"

namespace dtrain::app {
namespace {

namespace fs = std::filesystem;
namespace cv = train::convex;

// The periods the spec asks for; the sweep may add longer ones.
constexpr int64_t kSpecMaxPeriod = 32;

struct LocalSgdFlags {
  std::string problem = "w8a";
  size_t n = 49749;
  size_t dim = 300;
  double label_noise = 0.05;
  std::string data_dir = data::kFashionMnistDir;
  std::vector<int> classes = {0, 6};
  std::vector<int> workers = {1, 2, 4, 8};
  std::vector<int64_t> periods = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};
  std::vector<int64_t> steps = {8192, 32768};
  int batch = 1;
  std::string lr = "decay:32,500";
  std::string iterate = "last";
  int checkpoints = 64;
  double eps = 0;
  double eps_factor = 2;
  int summary_workers = 4;
  uint64_t seed = 1;
  std::string out;
};

struct Run {
  int workers = 0;
  int64_t period = 0;
  std::vector<cv::Checkpoint> cps;  // over the largest T
};

class Sweep {
 public:
  Sweep(const LocalSgdFlags& f, cv::Problem p, cv::Optimum opt)
      : f_(f), problem_(std::move(p)), opt_(std::move(opt)) {}

  void add(Run r) { runs_.push_back(std::move(r)); }
  const std::vector<Run>& runs() const { return runs_; }
  const cv::Problem& problem() const { return problem_; }
  double f_star() const { return opt_.value; }

  // K = 1 has only H = 1: every H is the same run there.
  const Run* find(int workers, int64_t period) const {
    if (workers == 1) period = 1;
    for (const auto& r : runs_) {
      if (r.workers == workers && r.period == period) return &r;
    }
    return nullptr;
  }
  double subopt(const cv::Checkpoint& c) const {
    return (f_.iterate == "weighted" ? c.weighted : c.value) - opt_.value;
  }
  const cv::Checkpoint* at(const Run* r, int64_t steps) const {
    if (r == nullptr) return nullptr;
    for (const auto& c : r->cps) {
      if (c.steps == steps) return &c;
    }
    return nullptr;
  }
  // The first checkpoint within budget T with f - f* <= eps.
  const cv::Checkpoint* reach(const Run* r, int64_t budget, double eps) const {
    return r ? cv::first_reaching(r->cps, opt_.value, eps, f_.iterate == "weighted", budget)
             : nullptr;
  }
  double final_subopt(int workers, int64_t period, int64_t budget) const {
    const auto* c = at(find(workers, period), budget);
    return c ? subopt(*c) : NAN;
  }

 private:
  const LocalSgdFlags& f_;
  cv::Problem problem_;
  cv::Optimum opt_;
  std::vector<Run> runs_;
};

std::string sci(double v) {
  if (!std::isfinite(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3e", v);
  return buf;
}

cv::Problem make_problem(const LocalSgdFlags& f) {
  if (f.problem == "w8a") {
    return cv::make_w8a_like(
        {.n = f.n, .dim = f.dim, .label_noise = f.label_noise, .seed = f.seed});
  }
  DT_ENFORCE(f.problem == "fmnist", "--problem: '", f.problem, "' is not w8a or fmnist");
  DT_ENFORCE(f.classes.size() == 2, "--classes takes two Fashion-MNIST classes, e.g. 0,6");
  const auto train = data::load_fashion_mnist(f.data_dir, true);
  return cv::make_fmnist_binary(train, f.classes[0], f.classes[1], f.n);
}

std::vector<int64_t> checkpoint_steps(const LocalSgdFlags& f, int64_t period) {
  const int64_t spacing = std::lcm(f.steps.front() / f.checkpoints, period);
  std::vector<int64_t> out;
  for (int64_t s = spacing; s <= f.steps.back(); s += spacing) out.push_back(s);
  for (int64_t t : f.steps) out.push_back(t);  // each budget's end, even off the spacing
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void print_table(const Sweep& sw, const LocalSgdFlags& f, int64_t budget) {
  std::printf("\nT = %lld steps per worker: f(x) - f* of the %s at t = T/8, T/4, T/2, T\n",
              static_cast<long long>(budget),
              f.iterate == "weighted" ? "weighted average of iterates" : "averaged model");
  std::printf("%3s %5s %8s %12s %10s %10s %10s %10s\n", "K", "H", "rounds", "grad evals", "T/8",
              "T/4", "T/2", "T");
  for (const auto& r : sw.runs()) {
    const auto* end = sw.at(&r, budget);
    if (end == nullptr) continue;
    std::printf("%3d %5lld %8lld %12.4g", r.workers, static_cast<long long>(r.period),
                static_cast<long long>(end->rounds), end->grad_evals);
    for (int64_t div : {8, 4, 2, 1}) {
      const auto* c = budget % div == 0 ? sw.at(&r, budget / div) : nullptr;
      std::printf(" %10s", sci(c ? sw.subopt(*c) : NAN).c_str());
    }
    std::printf("\n");
  }
}

// Claims (2) and (3) for one choice of targets (eps per budget). Returns the best H per budget
// over all periods and over the spec's periods (H <= 32).
struct BestH {
  std::vector<int64_t> all, spec;
  std::vector<double> ratio_all, ratio_spec;
};

BestH rounds_to_target(const Sweep& sw, const LocalSgdFlags& f, const std::vector<double>& eps) {
  const int k = f.summary_workers;
  std::printf("%5s", "H");
  for (size_t i = 0; i < f.steps.size(); ++i) {
    std::printf("   T=%-7lld rounds    steps", static_cast<long long>(f.steps[i]));
  }
  std::printf("\n");
  BestH best;
  best.all.assign(f.steps.size(), 0);
  best.spec.assign(f.steps.size(), 0);
  std::vector<int64_t> best_rounds(f.steps.size(), 0), best_spec_rounds(f.steps.size(), 0);
  for (int64_t h : f.periods) {
    std::printf("%5lld", static_cast<long long>(h));
    for (size_t i = 0; i < f.steps.size(); ++i) {
      const auto* c = sw.reach(sw.find(k, h), f.steps[i], eps[i]);
      if (c == nullptr) {
        std::printf("   %17s %8s", "not reached", "-");
        continue;
      }
      std::printf("   %17lld %8lld", static_cast<long long>(c->rounds),
                  static_cast<long long>(c->steps));
      auto keep = [&](int64_t& best_h, int64_t& rounds) {
        if (best_h == 0 || c->rounds < rounds) best_h = h, rounds = c->rounds;
      };
      keep(best.all[i], best_rounds[i]);
      if (h <= kSpecMaxPeriod) keep(best.spec[i], best_spec_rounds[i]);
    }
    std::printf("\n");
  }
  for (size_t i = 0; i < f.steps.size(); ++i) {
    const auto* base = sw.reach(sw.find(k, 1), f.steps[i], eps[i]);
    auto ratio = [&](int64_t rounds) {
      return base && rounds > 0 ? double(base->rounds) / rounds : NAN;
    };
    best.ratio_all.push_back(ratio(best_rounds[i]));
    best.ratio_spec.push_back(ratio(best_spec_rounds[i]));
    std::printf(
        "T=%lld: best H %lld (%.1fx fewer rounds than H=1); among H <= %lld: best H %lld "
        "(%.1fx)%s\n",
        static_cast<long long>(f.steps[i]), static_cast<long long>(best.all[i]), best.ratio_all[i],
        static_cast<long long>(kSpecMaxPeriod), static_cast<long long>(best.spec[i]),
        best.ratio_spec[i],
        best.all[i] == f.periods.back() ? "  [best H is the largest swept]" : "");
  }
  return best;
}

void summary(const Sweep& sw, const LocalSgdFlags& f) {
  const int k = f.summary_workers;
  if (sw.find(k, 1) == nullptr || sw.find(1, 1) == nullptr) {
    std::printf("\nNo summary: it needs K=1 and K=%d with H=1 in the sweep.\n", k);
    return;
  }
  const double base_eps = f.eps > 0 ? f.eps : f.eps_factor * sw.final_subopt(k, 1, f.steps.front());
  std::printf(
      "\n== Claims (2) and (3) at K=%d: rounds to reach eps within each budget T (every H "
      "spends the same K T b gradient evaluations)\n",
      k);
  std::printf("eps = %s (%s), the same for every T:\n", sci(base_eps).c_str(),
              f.eps > 0 ? "--eps" : "--eps-factor x f-f* of H=1 at the end of the smallest T");
  const auto fixed = rounds_to_target(sw, f, std::vector<double>(f.steps.size(), base_eps));
  std::vector<double> per_t;
  for (int64_t t : f.steps) per_t.push_back(f.eps_factor * sw.final_subopt(k, 1, t));
  std::printf("\neps_T = %.3g x f-f* of H=1 at the end of each T (", f.eps_factor);
  for (size_t i = 0; i < per_t.size(); ++i)
    std::printf("%s%s", i ? ", " : "", sci(per_t[i]).c_str());
  std::printf("):\n");
  const auto strict = rounds_to_target(sw, f, per_t);

  std::printf("\n== Claim (1): linear speedup, at the largest T = %lld\n",
              static_cast<long long>(f.steps.back()));
  const int64_t big = f.steps.back();
  const double lin_eps = f.eps_factor * sw.final_subopt(1, 1, big);
  std::printf("f - f* at equal gradient evaluations (K workers after T/K steps each):\n%5s", "H");
  for (int w : f.workers) std::printf(" %10s", ("K=" + std::to_string(w)).c_str());
  std::printf("\n");
  for (int64_t h : f.periods) {
    std::printf("%5lld", static_cast<long long>(h));
    for (int w : f.workers) {
      const auto* c = big % w == 0 ? sw.at(sw.find(w, h), big / w) : nullptr;
      std::printf(" %10s", sci(c ? sw.subopt(*c) : NAN).c_str());
    }
    std::printf("\n");
  }
  std::printf("steps per worker to reach %s (%.3g x f-f* of K=1 at T), speedup over K=1:\n%5s",
              sci(lin_eps).c_str(), f.eps_factor, "H");
  for (int w : f.workers) std::printf(" %16s", ("K=" + std::to_string(w)).c_str());
  std::printf("\n");
  bool linear = true;
  const auto* one = sw.reach(sw.find(1, 1), big, lin_eps);
  for (int64_t h : f.periods) {
    std::printf("%5lld", static_cast<long long>(h));
    for (int w : f.workers) {
      const auto* c = sw.reach(sw.find(w, h), big, lin_eps);
      char cell[40] = "-";
      if (c && one) {
        const double speedup = double(one->steps) / double(c->steps);
        std::snprintf(cell, sizeof(cell), "%lld (%.2fx)", static_cast<long long>(c->steps),
                      speedup);
        if (h == 1 && speedup < 0.8 * w) linear = false;
      } else if (h == 1) {
        linear = false;
      }
      std::printf(" %16s", cell);
    }
    std::printf("\n");
  }

  std::printf("\n== Verdict\n");
  std::printf("(1) linear speedup (H=1: steps to the target fall >= 0.8 K-fold with K): %s\n",
              linear ? "holds" : "does not hold");
  bool fewer = true;
  for (double r : fixed.ratio_all) fewer = fewer && r >= 4;
  std::printf("(2) >= 4x fewer rounds than H=1 at equal gradient evaluations (eps fixed): %s (",
              fewer ? "holds" : "does not hold");
  for (size_t i = 0; i < f.steps.size(); ++i) {
    std::printf("%sT=%lld: %.1fx at H=%lld, %.1fx at H<=%lld", i ? "; " : "",
                static_cast<long long>(f.steps[i]), fixed.ratio_all[i],
                static_cast<long long>(fixed.all[i]), fixed.ratio_spec[i],
                static_cast<long long>(kSpecMaxPeriod));
  }
  std::printf(")\n");
  auto grows = [&](const std::vector<int64_t>& b) { return b.back() > b.front(); };
  auto list = [](const std::vector<int64_t>& b) {
    std::string s;
    for (int64_t h : b) s += (s.empty() ? "" : " -> ") + std::to_string(h);
    return s;
  };
  std::printf(
      "(3) best H grows with T: eps fixed: %s (%s), among H<=%lld %s (%s); eps per T: %s "
      "(%s), among H<=%lld %s (%s)\n",
      grows(fixed.all) ? "holds" : "does not hold", list(fixed.all).c_str(),
      static_cast<long long>(kSpecMaxPeriod), grows(fixed.spec) ? "holds" : "does not hold",
      list(fixed.spec).c_str(), grows(strict.all) ? "holds" : "does not hold",
      list(strict.all).c_str(), static_cast<long long>(kSpecMaxPeriod),
      grows(strict.spec) ? "holds" : "does not hold", list(strict.spec).c_str());
}

void write_csv(const Sweep& sw, const LocalSgdFlags& f, const fs::path& path) {
  std::ofstream out(path, std::ios::trunc);
  // suboptimality: of the mean of the replicas (the averaged model); weighted_suboptimality: of
  // the paper's weighted average, when --iterate weighted tracks it.
  const bool weighted = f.iterate == "weighted";
  out << "problem,K,H,T,steps,rounds,grad_evals,suboptimality,"
      << (weighted ? "weighted_suboptimality," : "") << "spread\n";
  char line[256];
  for (const auto& r : sw.runs()) {
    for (int64_t budget : f.steps) {
      for (const auto& c : r.cps) {
        if (c.steps > budget) break;
        std::snprintf(line, sizeof(line), "%s,%d,%lld,%lld,%lld,%lld,%.0f,%.6e,", f.problem.c_str(),
                      r.workers, static_cast<long long>(r.period), static_cast<long long>(budget),
                      static_cast<long long>(c.steps), static_cast<long long>(c.rounds),
                      c.grad_evals, c.value - sw.f_star());
        out << line;
        if (weighted) {
          std::snprintf(line, sizeof(line), "%.6e,", c.weighted - sw.f_star());
          out << line;
        }
        std::snprintf(line, sizeof(line), "%.3e\n", c.spread);
        out << line;
      }
    }
  }
  out.close();
  if (!out) DT_THROW(IoError, "--out: cannot write ", path.string());
}

bool on_path(const char* program) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  for (size_t start = 0; start <= dirs.size();) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::error_code ec;
    if (end > start && fs::exists(fs::path(dirs.substr(start, end - start)) / program, ec))
      return true;
    start = end + 1;
  }
  return false;
}

// Suboptimality against rounds and against gradient evaluations at K = --summary-workers over
// the largest T, one curve per H, with the fixed eps as a dashed line.
void write_plots(const Sweep& sw, const LocalSgdFlags& f, const fs::path& dir) {
  if (!on_path("gnuplot")) {
    std::printf("plots: skipped (gnuplot is not on PATH; install gnuplot-nox)\n");
    return;
  }
  const int k = f.summary_workers;
  const double eps = f.eps > 0 ? f.eps : f.eps_factor * sw.final_subopt(k, 1, f.steps.front());
  std::ofstream dat(dir / "localsgd_k.dat", std::ios::trunc);
  std::string curves_r, curves_e;
  int block = 0;
  for (int64_t h : f.periods) {
    const Run* r = sw.find(k, h);
    if (r == nullptr || k == 1) continue;
    dat << (block ? "\n\n" : "") << "# H=" << h << ": rounds grad_evals suboptimality\n";
    for (const auto& c : r->cps) {
      if (sw.subopt(c) > 0) dat << c.rounds << " " << c.grad_evals << " " << sw.subopt(c) << "\n";
    }
    const std::string style = " with lines linewidth 2 linetype " + std::to_string(block % 8 + 1) +
                              " dashtype " + std::to_string(block / 8 + 1) +
                              " title 'H=" + std::to_string(h) + "'";
    curves_r += "'localsgd_k.dat' index " + std::to_string(block) + " using 1:3" + style + ", ";
    curves_e += "'localsgd_k.dat' index " + std::to_string(block) + " using 2:3" + style + ", ";
    ++block;
  }
  dat.close();
  if (block == 0) return;
  char eps_line[96];
  std::snprintf(eps_line, sizeof(eps_line), "%.9g with lines dashtype 2 lc 'black' title 'eps'\n",
                eps);
  std::ofstream gp(dir / "localsgd.gp", std::ios::trunc);
  const std::string title = f.problem + ", K=" + std::to_string(k) +
                            ", b=" + std::to_string(f.batch) + ", " + f.lr +
                            ", T=" + std::to_string(f.steps.back());
  for (const auto& [stem, xlabel, curves] :
       {std::tuple{"suboptimality_vs_rounds", "communication rounds", curves_r},
        std::tuple{"suboptimality_vs_grad_evals", "gradient evaluations (K t b)", curves_e}}) {
    gp << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
       << "  set terminal pngcairo size 1000,620 noenhanced font 'Sans,11'\n"
       << "} else {\n  set terminal png size 1000,620 noenhanced\n}\n"
       << "set output '" << stem << ".png'\nreset\nset grid\nset logscale xy\n"
       << "set format y '%.0e'\nset key outside right top\n"
       << "set title 'Local SGD: f(x) - f* vs " << xlabel << " (" << title << ")'\n"
       << "set xlabel '" << xlabel << "'\nset ylabel 'f(x) - f*'\n"
       << "plot " << curves << eps_line << "unset output\n";
  }
  gp.close();
  run_gnuplot(dir.string(), "localsgd.gp");
  std::printf("plots: %s, %s\n", (dir / "suboptimality_vs_rounds.png").c_str(),
              (dir / "suboptimality_vs_grad_evals.png").c_str());
}

void validate(LocalSgdFlags& f) {
  auto sorted_unique = [](auto& v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  };
  sorted_unique(f.workers);
  sorted_unique(f.periods);
  sorted_unique(f.steps);
  DT_ENFORCE(!f.workers.empty() && f.workers.front() >= 1, "--workers: counts must be >= 1");
  DT_ENFORCE(!f.periods.empty() && f.periods.front() >= 1, "--H: periods must be >= 1");
  DT_ENFORCE(!f.steps.empty() && f.steps.front() >= 1, "--steps: budgets must be >= 1");
  DT_ENFORCE(f.checkpoints >= 1 && f.steps.front() % f.checkpoints == 0, "--checkpoints ",
             f.checkpoints, " must divide the smallest --steps ", f.steps.front());
  DT_ENFORCE(f.batch >= 1, "--batch must be >= 1, got ", f.batch);
  DT_ENFORCE(f.iterate == "last" || f.iterate == "weighted", "--iterate: '", f.iterate,
             "' is not last or weighted");
  DT_ENFORCE(f.eps >= 0 && f.eps_factor > 0, "--eps must be >= 0 and --eps-factor > 0");
  DT_ENFORCE(f.problem == "w8a" || f.problem == "fmnist", "--problem: '", f.problem,
             "' is not w8a or fmnist");
  cv::StepSize::parse(f.lr);  // a bad --lr-schedule fails before the solve
}

void run(LocalSgdFlags f) {
  validate(f);
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto problem = make_problem(f);
  const double nnz = double(problem.col.size()) / double(problem.size());
  std::printf(
      "problem %s: n=%zu d=%zu, %.1f non-zeros per row, unit-norm rows, lambda=1/n=%.3g, "
      "L=%.4g, kappa=L/lambda=%.4g\n",
      problem.name.c_str(), problem.size(), problem.dim, nnz, problem.lambda, problem.smoothness(),
      problem.smoothness() / problem.lambda);
  auto opt = cv::solve(problem);
  std::printf(
      "f* = %.15g (Newton, %d iterations, |grad f| = %.2e, so f* is exact to %.1e; %.1f s)\n",
      opt.value, opt.iterations, opt.grad_norm, opt.error_bound, seconds());
  const auto step = cv::StepSize::parse(f.lr).resolve(problem, f.periods.back());
  std::printf("step size %s -> %s: eta_0 = %.4g, eta_T = %.4g (T = %lld)\n", f.lr.c_str(),
              step.str().c_str(), step.at(0), step.at(f.steps.back()),
              static_cast<long long>(f.steps.back()));
  std::printf("batch b=%d per worker; iterate: %s; seed %llu\n", f.batch, f.iterate.c_str(),
              static_cast<unsigned long long>(f.seed));

  Sweep sw(f, std::move(problem), std::move(opt));
  for (int k : f.workers) {
    for (int64_t h : f.periods) {
      if (k == 1 && h > 1) continue;
      cv::SimOptions o;
      o.workers = k;
      o.algorithm = "local:H=" + std::to_string(h);
      o.steps = f.steps.back();
      o.batch = f.batch;
      o.step = step;
      o.seed = f.seed;
      o.checkpoints = checkpoint_steps(f, h);
      o.weighted_average = f.iterate == "weighted";
      const double start = seconds();
      auto res = cv::simulate(sw.problem(), o);
      std::fprintf(stderr, "K=%d H=%lld: f-f* at T=%lld: %s, %lld rounds (%.1f s)\n", k,
                   static_cast<long long>(h), static_cast<long long>(o.steps),
                   sci(sw.subopt(res.checkpoints.back())).c_str(),
                   static_cast<long long>(res.rounds), seconds() - start);
      sw.add({k, h, std::move(res.checkpoints)});
    }
  }
  for (int64_t budget : f.steps) print_table(sw, f, budget);
  summary(sw, f);
  if (!f.out.empty()) {
    const fs::path dir(f.out);
    std::error_code ec;
    fs::create_directories(dir, ec);
    DT_ENFORCE_AS(IoError, fs::is_directory(dir), "--out ", f.out,
                  " cannot be made a directory: ", ec.message());
    write_csv(sw, f, dir / "localsgd.csv");
    std::printf("\ncsv: %s\n", (dir / "localsgd.csv").c_str());
    write_plots(sw, f, dir);
  }
  std::printf("total %.1f s\n", seconds());
}

}  // namespace

void add_bench_localsgd(CLI::App& bench, int /*argc*/, char** /*argv*/, int& /*exit_code*/) {
  auto flags = std::make_shared<LocalSgdFlags>();
  auto* cmd = bench.add_subcommand(
      "localsgd",
      "Stich's convex Local SGD experiment: K simulated workers, H local steps, logistic "
      "regression; rounds to a target suboptimality per H and T, linear speedup in K");
  cmd->add_option("--problem", flags->problem, "w8a (generated, d=300) or fmnist (w8a)");
  cmd->add_option("--n", flags->n, "Rows: w8a-like size, or a cap for fmnist (0: all) (49749)");
  cmd->add_option("--dim", flags->dim, "Features of the w8a-like problem (300)");
  cmd->add_option("--label-noise", flags->label_noise, "w8a-like label flip rate (0.05)");
  cmd->add_option("--data", flags->data_dir, "Fashion-MNIST directory (default: Debian's copy)");
  cmd->add_option("--classes", flags->classes, "fmnist: positive,negative class (0,6)")
      ->delimiter(',');
  cmd->add_option("--workers", flags->workers, "K values (1,2,4,8)")->delimiter(',');
  cmd->add_option("--H", flags->periods, "Local steps between averagings (1,2,...,2048)")
      ->delimiter(',');
  cmd->add_option("--steps", flags->steps, "Budgets T, steps per worker (8192,32768)")
      ->delimiter(',');
  cmd->add_option("--batch", flags->batch, "Samples per local step per worker (1)");
  cmd->add_option("--lr-schedule", flags->lr,
                  "theory | const:ETA | decay:ETA0,T0 (eta_t = ETA0 T0/(T0+t)) (decay:32,500)");
  cmd->add_option("--iterate", flags->iterate,
                  "last (the averaged model) or weighted (the paper's (a+t)^2-weighted average)");
  cmd->add_option("--checkpoints", flags->checkpoints,
                  "Measurements over the smallest T, same spacing for larger T (64)");
  cmd->add_option("--eps", flags->eps, "Target suboptimality (0: --eps-factor rule)");
  cmd->add_option("--eps-factor", flags->eps_factor,
                  "eps = this x f-f* of H=1 at the end of the smallest T (2)");
  cmd->add_option("--summary-workers", flags->summary_workers, "K of the summary (4)");
  cmd->add_option("--seed", flags->seed, "Seed of the problem and the samples (1)");
  cmd->add_option("--out", flags->out, "Directory for localsgd.csv and the plots");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace dtrain::app
