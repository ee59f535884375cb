// Sandblaster L-BFGS: the portion scheduler and the coordinator's L-BFGS against independent
// computations, then whole jobs of the dtrain binary (`--algorithm sandblaster`): the optimum of
// an l2-regularised logistic regression against LibTorch's own L-BFGS in float64, with a slowed
// replica and backup tasks; and a replica killed mid-batch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/common/error.h"
#include "dtrain/data/dataset.h"
#include "dtrain/train/sandblaster_lbfgs.h"
#include "dtrain/train/sandblaster_portions.h"
#include "job_process.h"

namespace {

using dtrain::train::PortionScheduler;
using dtrain_process::records;
using dtrain_process::slurp;
using namespace std::chrono_literals;

// --- the portion scheduler --------------------------------------------------------------------

TEST(PortionScheduler, EveryPortionOnceBeforeAnyBackupAndFastReplicasDoMore) {
  PortionScheduler s(6, /*backup=*/true);
  s.start_batch();
  std::set<int> given;
  // Replica 0 is fast: it asks again each time; replica 1 holds its first portion throughout.
  const int slow_portion = s.next(1);
  given.insert(slow_portion);
  for (int k = 0; k < 5; ++k) {
    const int p = s.next(0);
    ASSERT_GE(p, 0);
    EXPECT_TRUE(given.insert(p).second) << "portion " << p << " handed out twice";
    EXPECT_TRUE(s.finish(0, p));
  }
  EXPECT_EQ(given.size(), 6u);
  EXPECT_FALSE(s.complete());
  // Everything is handed out: the idle replica 0 gets a backup copy of replica 1's portion,
  // and nothing more after that (it never gets a copy it holds).
  EXPECT_EQ(s.next(0), slow_portion);
  EXPECT_EQ(s.backups(), 1);
  EXPECT_EQ(s.next(0), -1);
  EXPECT_TRUE(s.finish(0, slow_portion));  // the backup copy counts first
  EXPECT_TRUE(s.complete());
  EXPECT_FALSE(s.finish(1, slow_portion));  // the original is a duplicate, dropped
  EXPECT_EQ(s.duplicates(), 1);
  EXPECT_EQ(s.counted_by(), (std::vector<int>{6}));
  EXPECT_EQ(s.next(1), -1);  // the batch is complete
}

TEST(PortionScheduler, WithoutBackupsADeadReplicasPortionIsPendingAgain) {
  PortionScheduler s(3, /*backup=*/false);
  s.start_batch();
  const int a = s.next(0), b = s.next(1), c = s.next(2);
  EXPECT_EQ(std::set<int>({a, b, c}), std::set<int>({0, 1, 2}));
  EXPECT_TRUE(s.finish(0, a));
  EXPECT_EQ(s.next(0), -1);  // no backups
  s.forget(1);               // replica 1 died holding b
  EXPECT_EQ(s.next(0), b);
  EXPECT_TRUE(s.finish(0, b));
  EXPECT_TRUE(s.finish(2, c));
  EXPECT_TRUE(s.complete());
  s.start_batch();  // a new batch starts from scratch
  EXPECT_FALSE(s.complete());
  EXPECT_EQ(s.next(2), 0);
}

TEST(PortionScheduler, RejectsAPortionOutsideTheBatch) {
  PortionScheduler s(2, true);
  EXPECT_THROW(s.finish(0, 2), dtrain::InvalidArgument);
  EXPECT_THROW(PortionScheduler(0, true), dtrain::InvalidArgument);
}

// --- L-BFGS over named vectors ----------------------------------------------------------------

// Named vectors in memory (float64), counting the commands.
struct MemoryOps final : dtrain::train::VectorOps {
  explicit MemoryOps(int64_t n) : n(n) {}
  torch::Tensor& at(const std::string& name) {
    auto it = v.find(name);
    if (it == v.end()) it = v.emplace(name, torch::zeros({n}, torch::kFloat64)).first;
    return it->second;
  }
  double dot(const std::string& a, const std::string& b) override {
    ++commands;
    return at(a).dot(at(b)).item<double>();
  }
  void axpy(double alpha, const std::string& x, const std::string& y) override {
    ++commands;
    at(y).add_(at(x), alpha);
  }
  void scale(double alpha, const std::string& x) override {
    ++commands;
    at(x).mul_(alpha);
  }
  void copy(const std::string& from, const std::string& to) override {
    ++commands;
    auto c = at(from).clone();
    at(to) = c;
  }
  int64_t n;
  std::map<std::string, torch::Tensor> v;
  int commands = 0;
};

TEST(ShardedLbfgs, FindsTheMinimumOfAQuadraticWithinItsHistoryBudget) {
  // f(x) = 1/2 x'Ax - b'x, A symmetric positive definite (condition number ~100): the minimum
  // is A^-1 b, solved directly.
  torch::manual_seed(3);
  const int64_t n = 40;
  auto q = std::get<0>(torch::linalg_qr(torch::randn({n, n}, torch::kFloat64)));
  auto A = q.mm(torch::diag(torch::logspace(0, 2, n, 10, torch::kFloat64))).mm(q.t());
  auto b = torch::randn({n}, torch::kFloat64);
  MemoryOps ops(n);
  auto evaluate = [&] {
    auto& x = ops.at("w");
    ops.at("g") = A.mv(x) - b;
    return (0.5 * x.dot(A.mv(x)) - b.dot(x)).item<double>();
  };
  dtrain::train::LbfgsOptions o;
  o.history = 8;
  o.max_evaluations = 300;
  o.tolerance_grad = 1e-10;
  o.tolerance_change = 0;
  const auto r = dtrain::train::minimize_lbfgs(ops, evaluate, o);
  const auto solution = torch::linalg_solve(A, b, true);
  // It stops on a small gradient, or when f no longer changes in float64 (x within about
  // sqrt(eps * condition number) of the minimum then): two unchanged iterations in a row, or a
  // line search that cannot decrease f any more.
  EXPECT_TRUE(r.stop == "gradient" || r.stop == "change" || r.stop == "line search") << r.stop;
  EXPECT_LT((ops.at("w") - solution).abs().max().item<double>(), 1e-6);
  const double f_star = (-0.5 * b.dot(solution)).item<double>();
  EXPECT_NEAR(r.f, f_star, 1e-12 * std::abs(f_star));
  // At most `history` pairs are ever held: s0..s7 and y0..y7, nothing more.
  int pairs = 0;
  for (const auto& [name, t] : ops.v) pairs += (name[0] == 's' || name[0] == 'y') ? 1 : 0;
  EXPECT_EQ(pairs, 2 * o.history);
}

// --- whole jobs -------------------------------------------------------------------------------

class Sandblaster : public dtrain_process::JobTest {
 protected:
  std::vector<std::string> flags(int workers, const std::string& out) {
    return {"train",
            "--algorithm",
            "sandblaster",
            "--workers",
            std::to_string(workers),
            "--servers",
            "2",
            "--model",
            "logreg",
            "--train-subset",
            std::to_string(kSamples),
            "--test-subset",
            "1000",
            "--l2",
            "0.01",
            "--quiet",
            "--out",
            out};
  }
  static constexpr int64_t kSamples = 1200;
};

// The l2-regularised logistic regression of the job, minimised by LibTorch's L-BFGS (strong
// Wolfe line search) in float64 from zero on the same samples.
double reference_optimum(double l2) {
  auto train = dtrain::data::take(
      dtrain::data::load_fashion_mnist(dtrain::data::kFashionMnistDir, true), 1200);
  auto x = torch::from_blob(train.features.data(), {int64_t(train.size()), int64_t(train.dim)},
                            torch::kFloat)
               .to(torch::kFloat64);
  std::vector<int64_t> labels(train.labels.begin(), train.labels.end());
  auto y = torch::tensor(labels, torch::kInt64);
  auto W = torch::zeros({int64_t(train.num_classes), int64_t(train.dim)}, torch::kFloat64)
               .requires_grad_(true);
  auto c = torch::zeros({int64_t(train.num_classes)}, torch::kFloat64).requires_grad_(true);
  auto objective = [&] {
    return torch::nn::functional::cross_entropy(torch::addmm(c, x, W.t()), y) +
           0.5 * l2 * (W.pow(2).sum() + c.pow(2).sum());
  };
  torch::optim::LBFGS lbfgs({W, c}, torch::optim::LBFGSOptions(1)
                                        .max_iter(2000)
                                        .history_size(20)
                                        .tolerance_grad(1e-12)
                                        .tolerance_change(1e-16)
                                        .line_search_fn("strong_wolfe"));
  lbfgs.step([&] {
    lbfgs.zero_grad();
    auto f = objective();
    f.backward();
    return f;
  });
  torch::NoGradGuard g;
  return objective().item<double>();
}

TEST_F(Sandblaster, ReachesLibTorchsOptimumWithASlowReplicaAndBackupTasks) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(3, out);
  for (const char* a : {"--epochs", "300", "--portions", "12", "--slow-rank", "2:4"}) {
    args.push_back(a);
  }
  const int status = finish(start(args, log), 300s);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  // Every replica ends cleanly on the coordinator's stop (none waits on a shard gone).
  EXPECT_EQ(slurp(log).find("failed"), std::string::npos) << slurp(log);
  const auto f = final_record(out);
  ASSERT_TRUE(f.is_object()) << slurp(log);
  const double reference = reference_optimum(0.01);
  // The objective at the shards' final parameters, recomputed in float64.
  EXPECT_NEAR(f["objective_f64"].get<double>(), reference, 1e-6 * reference) << f.dump();
  // The distributed evaluation (portions summed on the shards in float32) agrees with it.
  EXPECT_NEAR(f["objective"].get<double>(), f["objective_f64"].get<double>(), 1e-5 * reference);
  // The slowed replica's portions were backed up, and results were dropped as duplicates: had
  // any been added to the gradient as well, L-BFGS would have found another point (and the
  // distributed objective would disagree with the float64 one above).
  int backups = 0, dropped = 0;
  for (const auto& b : records(out, "batch")) {
    backups += b["backups"].get<int>();
    dropped += b["duplicates"].get<int>() + b["late_results"].get<int>();
  }
  EXPECT_GT(backups, 0);
  EXPECT_GT(dropped, 0);
}

TEST_F(Sandblaster, AKilledReplicasPortionsAreReassignedAndTheBatchCompletes) {
  // No backup copies: the dead replica's portion must be handed out again once the shards count
  // it dead (half the timeout without a heartbeat).
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(3, out);
  // --timeout 30: every portion of replica 1 must end within it while the machine is loaded
  // (a CI run of -j2 tests slowed its portions tenfold: at 2000x they passed 8 s).
  for (const char* a : {"--epochs", "12", "--portions", "6", "--no-backup", "--slow-rank", "1:200",
                        "--timeout", "30"}) {
    args.push_back(a);
  }
  const pid_t launcher = start(args, log);
  // Replica 1 is 200x slower (0.1 to 1 s per portion, by load): after the first batch it is
  // likely mid-portion; if not, it dies between portions, which the job must survive too.
  const auto until = dtrain_process::Clock::now() + 120s;
  while (records(out, "batch").empty() && dtrain_process::Clock::now() < until) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_FALSE(records(out, "batch").empty()) << slurp(log);
  std::this_thread::sleep_for(200ms);
  const pid_t victim = child_rank(launcher, 1);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const int status = finish(launcher, 240s);
  const auto f = final_record(out);
  ASSERT_TRUE(f.is_object()) << slurp(log);
  EXPECT_GE(f["evaluations"].get<int>(), 2) << f.dump();
  // The batches after the kill completed on the two replicas left, and the run optimised on:
  // its objective fell and agrees with the float64 one at the final parameters.
  const auto batches = records(out, "batch");
  ASSERT_GE(batches.size(), 2u);
  EXPECT_LT(f["objective"].get<double>(), batches.front()["objective"].get<double>());
  EXPECT_NEAR(f["objective"].get<double>(), f["objective_f64"].get<double>(), 1e-5);
  const std::string text = slurp(log);
  EXPECT_NE(text.find("replica 1 is dead"), std::string::npos) << text;
  EXPECT_NE(text.find("replica 1 (rank 1) was killed by signal"), std::string::npos) << text;
  // A lost replica does not fail the job.
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text;
}

TEST_F(Sandblaster, BadFlagsAreNamedBeforeAnyRankStarts) {
  const std::string log = (dir_ / "log").string();
  auto args = flags(2, (dir_ / "run").string());
  args.push_back("--slow-rank");
  args.push_back("two");
  int status = finish(start(args, log), 30s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_NE(slurp(log).find("--slow-rank 'two'"), std::string::npos) << slurp(log);
  args = {"train", "--algorithm", "sandblaster", "--workers", "2", "--model", "logreg"};
  status = finish(start(args, log), 30s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_NE(slurp(log).find("--algorithm sandblaster needs --servers"), std::string::npos)
      << slurp(log);
}

}  // namespace
