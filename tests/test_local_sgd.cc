// Local SGD (--algorithm local:...): the averaging schedule against a step-by-step simulation,
// H = 1 against synchronous SGD, replicas equal after every averaging through several reducers,
// the warm-up switch, exact resume between averagings, and bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dtrain/common/error.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/local_sgd_schedule.h"
#include "dtrain/train/trainer.h"
#include "harness.h"

namespace dtrain::test {
namespace {

namespace fs = std::filesystem;
using train::LocalSgdSchedule;

bool have_data() {
  return fs::exists("/usr/share/datasets/fashion-mnist");
}

// The averaging times by their definition: warmup + H, then each time + period_at(time).
std::vector<int64_t> simulate(const LocalSgdSchedule& s, int64_t steps) {
  std::vector<int64_t> times;
  int64_t at = s.warmup;
  while (true) {
    at += s.period_at(at);
    if (at > steps) break;
    times.push_back(at);
  }
  return times;
}

TEST(LocalSgdSchedule, AveragingTimesFollowTheDefinition) {
  for (const char* spec :
       {"local:H=1", "local:H=4", "local:H=5,warmup=7", "local:H=2,Hmax=16,double_every=10",
        "local:H=3,warmup=4,Hmax=12,double_every=7"}) {
    const auto s = LocalSgdSchedule::parse(spec);
    const auto times = simulate(s, 200);
    std::vector<int64_t> got;
    for (int64_t step = 0; step < 200; ++step) {
      if (s.average_after(step)) got.push_back(step + 1);
    }
    EXPECT_EQ(got, times) << spec;
    for (int64_t done = s.warmup; done < 150; ++done) {
      auto it = std::lower_bound(times.begin(), times.end(), std::max(done, s.warmup + 1));
      ASSERT_NE(it, times.end());
      EXPECT_EQ(s.next_average(done), *it) << spec << " done " << done;
    }
    EXPECT_EQ(LocalSgdSchedule::parse(s.str()), s) << spec;
  }
  // The period doubles every double_every steps after the warm-up, up to Hmax.
  const auto s = LocalSgdSchedule::parse("local:H=2,Hmax=8,double_every=10");
  EXPECT_EQ(s.period_at(0), 2);
  EXPECT_EQ(s.period_at(10), 4);
  EXPECT_EQ(s.period_at(20), 8);
  EXPECT_EQ(s.period_at(1000), 8);
  EXPECT_FALSE(LocalSgdSchedule::parse("sync").local);
}

TEST(LocalSgdSchedule, BadSpecsNameTheParameter) {
  auto message = [](const std::string& spec) {
    try {
      LocalSgdSchedule::parse(spec);
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("local:H=0").find("H=0"), std::string::npos) << message("local:H=0");
  EXPECT_NE(message("local:H=4,warmup=-1").find("warmup=-1"), std::string::npos);
  EXPECT_NE(message("local:H=4,Hmax=2,double_every=5").find("Hmax"), std::string::npos);
  EXPECT_NE(message("local:H=4,Hmax=8").find("double_every"), std::string::npos);
  EXPECT_NE(message("local:period=4").find("unknown parameter 'period'"), std::string::npos);
  EXPECT_NE(message("gossip").find("unknown algorithm 'gossip'"), std::string::npos);
  EXPECT_NE(message("local:H=4").find("no error"), std::string::npos);
}

train::TrainOptions small_run() {
  train::TrainOptions o;
  o.model = "mlp";
  o.hidden = {64, 32};
  o.train_subset = 2000;
  o.test_subset = 500;
  o.epochs = 3;
  o.batch_size = 32;
  o.optimizer = "momentum";
  o.lr = 0.05;
  o.quiet = true;
  return o;
}

void train_on_threads(int n, const train::TrainOptions& o) {
  spawn(n, [&](comm::Group& g) { train::train(o, g); });
}

std::vector<torch::Tensor> rank_params(const std::string& dir, int rank) {
  std::ifstream in(dir + "/checkpoint.json");
  const auto manifest = nlohmann::json::parse(in);
  const std::string file = manifest.at("files").at(rank).get<std::string>();
  return train::load_checkpoint_parameters(dir + "/" + file);
}

double max_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    d = std::max(d, (a[i] - b[i]).abs().max().item<double>());
  }
  return d;
}

// Param: optimizer/model. With H = 1 every step ends in an average of the ranks' models, which for
// SGD (and SGD with momentum, whose buffers average the same way) is the synchronous step: the
// two differ by float rounding (the average of x - lr g_r against x - lr mean(g)). Logistic
// regression is smooth, so rounding stays rounding over many steps; the MLP's ReLUs amplify a
// rounding difference once a unit sits at its kink (seen after 7 steps here), so it is compared
// over its first steps.
class HOne : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(HOne, EqualsSynchronousSgdStepForStep) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  const auto& [optimizer, model] = GetParam();
  TempDir dir;
  auto o = small_run();
  o.optimizer = optimizer;
  o.model = model;
  o.max_steps = model == "logreg" ? 40 : 5;
  o.out_dir = dir.path() + "/sync";
  train_on_threads(3, o);
  o.algorithm = "local:H=1";
  o.out_dir = dir.path() + "/local";
  train_on_threads(3, o);
  const auto sync = train::load_checkpoint_parameters(dir.path() + "/sync/checkpoint.pt");
  for (int r = 0; r < 3; ++r) {
    EXPECT_LT(max_difference(sync, rank_params(dir.path() + "/local", r)), 1e-6)
        << optimizer << ", " << model << ", rank " << r;
  }
  // The check can fail: local steps without averaging are not synchronous SGD.
  o.algorithm = "local:H=2";
  o.out_dir = dir.path() + "/h2";
  train_on_threads(3, o);
  EXPECT_GT(max_difference(sync, rank_params(dir.path() + "/h2", 0)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, HOne,
                         ::testing::Combine(::testing::Values("sgd", "momentum"),
                                            ::testing::Values("logreg", "mlp")),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param);
                         });

// Param: the averaging reducer. After an averaging every rank holds the same model; between
// averagings they differ (local steps really are local).
class Averaging : public ::testing::TestWithParam<std::string> {};

TEST_P(Averaging, LeavesTheReplicasEqual) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run();
  o.algorithm = "local:H=3";
  o.reduce = GetParam();
  o.max_steps = 9;
  o.out_dir = dir.path() + "/at";
  train_on_threads(2, o);
  EXPECT_EQ(max_difference(rank_params(o.out_dir, 0), rank_params(o.out_dir, 1)), 0.0);
  o.max_steps = 10;
  o.out_dir = dir.path() + "/between";
  train_on_threads(2, o);
  EXPECT_GT(max_difference(rank_params(o.out_dir, 0), rank_params(o.out_dir, 1)), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Reducers, Averaging, ::testing::Values("dense", "omnireduce", "topk:0.1"),
                         [](const auto& info) {
                           return info.param.substr(0, info.param.find(':'));
                         });

TEST(LocalSgd, WarmupSwitchesAtTheStepAskedFor) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run();
  o.algorithm = "local:H=4,warmup=5";
  for (int64_t steps : {5, 6, 9}) {
    o.max_steps = steps;
    o.out_dir = dir.path() + "/" + std::to_string(steps);
    train_on_threads(2, o);
  }
  // Synchronous through step 5, local at step 6, averaged again after step 5 + 4.
  EXPECT_EQ(max_difference(rank_params(dir.path() + "/5", 0), rank_params(dir.path() + "/5", 1)),
            0.0);
  EXPECT_GT(max_difference(rank_params(dir.path() + "/6", 0), rank_params(dir.path() + "/6", 1)),
            0.0);
  EXPECT_EQ(max_difference(rank_params(dir.path() + "/9", 0), rank_params(dir.path() + "/9", 1)),
            0.0);
  // metrics.jsonl: rounds = 5 synchronous steps + 1 averaging.
  std::ifstream in(dir.path() + "/9/metrics.jsonl");
  std::string line;
  int64_t rounds = -1;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["kind"] == "final") rounds = j["rounds"];
  }
  EXPECT_EQ(rounds, 6);
}

// Param: the averaging reducer (topk keeps an error-feedback residual per rank).
class LocalResume : public ::testing::TestWithParam<std::string> {};

TEST_P(LocalResume, MidwayBetweenAveragingsEqualsUninterrupted) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run();
  o.algorithm = "local:H=4,warmup=2";
  o.reduce = GetParam();
  o.max_steps = 16;
  o.out_dir = dir.path() + "/whole";
  train_on_threads(2, o);
  o.max_steps = 8;  // 2 synchronous + 6 local: two steps after the averaging at 6
  o.out_dir = dir.path() + "/parts";
  train_on_threads(2, o);
  o.out_dir.clear();
  o.resume = dir.path() + "/parts";
  o.max_steps = 16;
  train_on_threads(2, o);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(max_difference(rank_params(dir.path() + "/whole", r),
                             rank_params(dir.path() + "/parts", r)),
              0.0)
        << "rank " << r;
  }
  // Only the latest set is kept.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path() + "/parts")) {
    files += e.path().extension() == ".pt";
  }
  EXPECT_EQ(files, 2);
}

INSTANTIATE_TEST_SUITE_P(Reducers, LocalResume, ::testing::Values("dense", "topk:0.1"),
                         [](const auto& info) {
                           return info.param.substr(0, info.param.find(':'));
                         });

TEST(LocalSgd, MissingRankFileIsRefusedByName) {
  if (!have_data()) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run();
  o.algorithm = "local:H=4";
  o.max_steps = 6;
  o.out_dir = dir.path() + "/run";
  train_on_threads(2, o);
  const std::string victim = dir.path() + "/run/checkpoint-6.rank1.pt";
  ASSERT_TRUE(fs::exists(victim));
  fs::remove(victim);
  o.out_dir.clear();
  o.resume = dir.path() + "/run";
  o.max_steps = 10;
  std::vector<std::string> errors(2);
  spawn(2, [&](comm::Group& g) {
    try {
      comm::run_rank(g, [&] { train::train(o, g); });
    } catch (const std::exception& e) {
      errors[g.rank()] = e.what();
    }
  });
  // Rank 1 names its file; rank 0 learns it from rank 1's announcement.
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find("rank 1's checkpoint file"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("checkpoint-6.rank1.pt"), std::string::npos) << errors[r];
  }
}

TEST(LocalSgd, BadInputIsNamed) {
  auto message = [](train::TrainOptions o) {
    try {
      train::validate(o);
      TempDir dir;
      std::string error = "no error";
      spawn(1, [&](comm::Group& g) {
        try {
          train::train(o, g);
        } catch (const std::exception& e) {
          error = e.what();
        }
      });
      return error;
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
  };
  auto o = small_run();
  o.max_steps = 1;
  o.algorithm = "local:H=0";
  EXPECT_NE(message(o).find("--algorithm local: H=0"), std::string::npos) << message(o);
  o.algorithm = "local:H=2,warmup=-3";
  EXPECT_NE(message(o).find("warmup=-3"), std::string::npos) << message(o);
  o.algorithm = "local:H=2";
  o.optimizer = "sgd";
  o.average = "exdyna:density=0.1,momentum=0.9";
  EXPECT_NE(message(o).find("--average exdyna:density=0.1,momentum=0.9 cannot average models"),
            std::string::npos)
      << message(o);
  o.algorithm = "sync";
  o.average = "dense";
  EXPECT_NE(message(o).find("--average dense chooses the reducer of Local SGD"), std::string::npos)
      << message(o);
}

}  // namespace
}  // namespace dtrain::test
