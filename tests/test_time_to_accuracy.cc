// Time to accuracy: --eval-every and --target-accuracy. The target counts as reached at the
// second of the first two consecutive evaluations at or above it; evaluation time is kept off the
// training clock.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dtrain/train/trainer.h"
#include "harness.h"
#include "train/evaluation.h"

namespace dtrain::test {
namespace {

namespace fs = std::filesystem;

TEST(TargetTracker, ReachedAtTheSecondOfTwoConsecutiveEvaluations) {
  train::TargetTracker t(0.8);
  const double acc[] = {0.5, 0.81, 0.79, 0.80, 0.85, 0.9};
  int reached_at = -1;
  for (int i = 0; i < 6; ++i) {
    if (t.add(10 * (i + 1), i + 0.5, acc[i])) {
      EXPECT_EQ(reached_at, -1) << "reported twice";
      reached_at = i;
    }
  }
  EXPECT_EQ(reached_at, 4);  // 0.81 alone does not count; 0.80 then 0.85 does
  EXPECT_EQ(t.reached_step(), 50);
  EXPECT_DOUBLE_EQ(t.reached_time_s(), 4.5);
  train::TargetTracker none(0);
  EXPECT_FALSE(none.add(1, 1, 1.0));
  EXPECT_FALSE(none.enabled());
}

TEST(TimeToAccuracy, TheTargetRecordIsTheSecondOfTheFirstTwoEvaluationsAtTarget) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  train::TrainOptions o;
  o.model = "logreg";
  o.train_subset = 3000;
  o.test_subset = 1000;
  o.epochs = 2;
  o.batch_size = 32;
  o.optimizer = "momentum";
  o.lr = 0.02;
  o.quiet = true;
  o.eval_every = 4;
  o.target_accuracy = 0.70;
  o.out_dir = dir.path() + "/run";
  std::vector<train::TrainResult> results(2);
  spawn(2, [&](comm::Group& g) { results[g.rank()] = train::train(o, g); });

  // The evaluations in the order they ran (eval records and epoch ends), from metrics.jsonl.
  std::ifstream in(o.out_dir + "/metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> evaluations;
  nlohmann::json target, final_record;
  double last_eval_s = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["kind"] == "eval" || j["kind"] == "epoch") {
      evaluations.push_back(j);
      EXPECT_GE(j["eval_s"].get<double>(), last_eval_s);
      last_eval_s = j["eval_s"];
    }
    if (j["kind"] == "target") target = j;
    if (j["kind"] == "final") final_record = j;
  }
  ASSERT_GT(evaluations.size(), 20u) << "93 steps per epoch, an evaluation every 4";
  int expected = -1;
  for (size_t i = 1; i < evaluations.size() && expected < 0; ++i) {
    if (evaluations[i - 1]["test_accuracy"].get<double>() >= o.target_accuracy &&
        evaluations[i]["test_accuracy"].get<double>() >= o.target_accuracy) {
      expected = static_cast<int>(i);
    }
  }
  ASSERT_GE(expected, 0) << "the run should reach 70% (logreg reaches ~75% in one epoch)";
  ASSERT_TRUE(target.is_object());
  EXPECT_EQ(target["step"], evaluations[expected]["step"]);
  EXPECT_DOUBLE_EQ(target["time_s"].get<double>(), evaluations[expected]["time_s"].get<double>());
  EXPECT_EQ(final_record["time_to_target_s"], target["time_s"]);
  EXPECT_DOUBLE_EQ(results[0].time_to_target_s, target["time_s"].get<double>());
  // Evaluation time is reported apart and not on the training clock.
  EXPECT_GT(final_record["eval_s"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(results[0].eval_s, final_record["eval_s"].get<double>());
}

}  // namespace
}  // namespace dtrain::test
