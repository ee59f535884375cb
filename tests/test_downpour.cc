// Downpour SGD as a user runs it: `dtrain train --algorithm downpour --workers W --servers S`
// starts replicas and parameter servers as processes. Replicas are killed and restarted into the
// running job, a server is killed; the run directory's final record says what the shards saw
// (staleness, replicas lost). Runs the dtrain binary of this build.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "job_process.h"

namespace {

using dtrain_process::slurp;

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class Downpour : public dtrain_process::JobTest {
 protected:
  // The common flags of a small run: an MLP on a Fashion-MNIST subset.
  std::vector<std::string> flags(int workers, int servers, int epochs, const std::string& out) {
    return {"train",        "--algorithm",    "downpour",   "--workers",
            std::to_string(workers),        "--servers",  std::to_string(servers),
            "--hidden",     "64",             "--train-subset", "6000",
            "--test-subset", "2000",          "--batch-size", "32",
            "--epochs",     std::to_string(epochs), "--lr", "0.05",
            "--quiet",      "--out",          out};
  }

  // Waits until metrics.jsonl in `out` holds a step record with step >= `step`.
  static bool wait_for_step(const std::string& out, int64_t step, std::chrono::seconds limit) {
    const auto until = Clock::now() + limit;
    while (Clock::now() < until) {
      std::istringstream in(slurp(out + "/metrics.jsonl"));
      std::string line;
      while (std::getline(in, line)) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_object() && j.value("kind", "") == "step" && j.value("step", 0) >= step) {
          return true;
        }
      }
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
};

TEST_F(Downpour, TrainsAndBoundedDelayHoldsOnTheServersRecord) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(3, 2, 1, out);
  for (const char* a : {"--consistency", "bounded:1", "--log-every", "10"}) args.push_back(a);
  const int status = finish(start(args, log), 240s);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  const auto f = final_record(out);
  ASSERT_TRUE(f.is_object()) << slurp(log);
  // 3 replicas x 62 steps of an MLP with Adagrad on the servers: well above chance (10%).
  EXPECT_GT(f["test_accuracy"].get<double>(), 0.6) << f.dump();
  // Every replica's pushes went to both shards.
  EXPECT_EQ(f["server_updates"].get<int64_t>(), 2 * 3 * (6000 / 3 / 32)) << f.dump();
  EXPECT_LE(f["max_staleness"].get<int64_t>(), 1) << f.dump();
  EXPECT_TRUE(f["replicas_lost"].empty()) << f.dump();
}

TEST_F(Downpour, BspHasNoStaleUpdates) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(2, 1, 1, out);
  for (const char* a : {"--consistency", "bsp", "--max-steps", "40"}) args.push_back(a);
  const int status = finish(start(args, log), 240s);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  const auto f = final_record(out);
  ASSERT_TRUE(f.is_object()) << slurp(log);
  EXPECT_EQ(f["max_staleness"].get<int64_t>(), 0) << f.dump();
  EXPECT_EQ(f["server_updates"].get<int64_t>(), 2 * 40) << f.dump();
}

TEST_F(Downpour, AKilledReplicaStopsOnlyItselfAndAReplacementJoins) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(3, 1, 3, out);
  for (const char* a : {"--log-every", "5", "--timeout", "20"}) args.push_back(a);
  const pid_t launcher = start(args, log);
  ASSERT_TRUE(wait_for_step(out, 20, 180s)) << slurp(log);
  const pid_t victim = child_rank(launcher, 2);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  // The launcher names the replica and prints how to start a replacement into the job.
  std::smatch m;
  const std::regex replacement("To start a replacement into this job: (DTRAIN_RANK=2 .*) (\\S+dtrain) train");
  std::string text;
  const auto until = Clock::now() + 30s;
  while (Clock::now() < until) {
    text = slurp(log);
    if (std::regex_search(text, m, replacement)) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_FALSE(m.empty()) << text;
  EXPECT_NE(text.find("replica 2 (rank 2) was killed by signal"), std::string::npos) << text;
  std::vector<std::string> env;
  std::istringstream vars(m[1].str());
  for (std::string kv; vars >> kv;) env.push_back(kv);
  // The replacement: the same command with the job's environment.
  const pid_t again = start(args, (dir_ / "replacement.log").string(), env);
  extra_.push_back(again);
  const int rs = finish(again, 240s);
  EXPECT_TRUE(WIFEXITED(rs) && WEXITSTATUS(rs) == 0) << slurp((dir_ / "replacement.log").string());
  const int status = finish(launcher, 240s);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  EXPECT_NE(slurp(log).find("job finished without replica(s) 2"), std::string::npos);
  const auto f = final_record(out);
  ASSERT_TRUE(f.is_object()) << slurp(log);
  // The replacement finished as replica 2 and its pushes count: the shard saw more updates from
  // the three replicas than the two that ran throughout could make.
  EXPECT_EQ(f["replicas"]["2"], "done") << f.dump();
  const int64_t per_replica = 3 * (6000 / 3 / 32);
  EXPECT_GT(f["server_updates"].get<int64_t>(), 2 * per_replica) << f.dump();
  const std::string replaced = slurp((dir_ / "replacement.log").string());
  EXPECT_NE(replaced.find("joins the job at step"), std::string::npos)
      << "replacement (" << m[1].str() << ", status " << rs << "):\n"
      << replaced << "\njob:\n" << slurp(log);
}

TEST_F(Downpour, AKilledServerFailsEveryReplicaNamingItsShard) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(2, 1, 5, out);
  for (const char* a : {"--log-every", "5", "--timeout", "4"}) args.push_back(a);
  const pid_t launcher = start(args, log);
  ASSERT_TRUE(wait_for_step(out, 10, 180s)) << slurp(log);
  const pid_t server = child_rank(launcher, 2);
  ASSERT_GT(server, 0);
  const auto killed = Clock::now();
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  const int status = finish(launcher, 60s);
  const auto took = Clock::now() - killed;
  const std::string text = slurp(log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << text;
  EXPECT_NE(text.find("shard 0"), std::string::npos) << text;
  EXPECT_NE(text.find("job failed: rank 2 was killed by signal"), std::string::npos) << text;
  EXPECT_LT(took, 4s + 10s);
}

// Every replica fails (here at start: too little data for them): the job fails at once naming
// the cause, instead of waiting on servers that wait for replicas they never saw.
TEST_F(Downpour, NoReplicaFinishingFailsTheJob) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(2, 1, 1, out);
  args[std::find(args.begin(), args.end(), "--train-subset") - args.begin() + 1] = "40";
  const auto began = Clock::now();
  const int status = finish(start(args, log), 120s);
  const std::string text = slurp(log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << text;
  EXPECT_NE(text.find("no replica finished"), std::string::npos) << text;
  EXPECT_NE(text.find("too small"), std::string::npos) << text;
  EXPECT_LT(Clock::now() - began, 60s) << text;
}

// A stopped server (SIGSTOP): the replicas time out naming its shard, and the launcher names the
// stopped rank; the job does not wait for it.
TEST_F(Downpour, AStoppedServerFailsTheJobNamingIt) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(2, 1, 5, out);
  for (const char* a : {"--log-every", "5", "--timeout", "4"}) args.push_back(a);
  const pid_t launcher = start(args, log);
  ASSERT_TRUE(wait_for_step(out, 10, 180s)) << slurp(log);
  const pid_t server = child_rank(launcher, 2);
  ASSERT_GT(server, 0);
  const auto stopped = Clock::now();
  ASSERT_EQ(::kill(server, SIGSTOP), 0);
  const int status = finish(launcher, 60s);
  const std::string text = slurp(log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << text;
  EXPECT_NE(text.find("shard 0"), std::string::npos) << text;
  EXPECT_NE(text.find("job failed: rank 2 was stopped by signal"), std::string::npos) << text;
  EXPECT_LT(Clock::now() - stopped, 4s + 10s) << text;
}

// The step losses of a run's metrics.jsonl, in order.
std::vector<double> step_losses(const std::string& out) {
  std::vector<double> losses;
  std::istringstream in(slurp(out + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("kind", "") == "step") losses.push_back(j["loss"].get<double>());
  }
  return losses;
}

// One replica under BSP, fetching and pushing every step, with plain SGD on the shards, is plain
// SGD: its losses equal those of synchronous training on one worker (an independent code path)
// step for step. For embed this checks the sparse rows too: they and the dense layers go to a
// shard as one push, so a pull at the next clock sees all of it.
TEST_F(Downpour, OneReplicaUnderBspWithSgdOnTheShardsIsPlainSgd) {
  for (const char* model : {"mlp", "embed"}) {
    const std::string sync = (dir_ / (std::string(model) + "-sync")).string();
    const std::string dp = (dir_ / (std::string(model) + "-downpour")).string();
    const std::vector<std::string> common = {"--model", model, "--hidden", "64",
                                             "--train-subset", "3000", "--test-subset", "1000",
                                             "--batch-size", "32", "--epochs", "1",
                                             "--max-steps", "30", "--log-every", "5", "--quiet"};
    std::vector<std::string> a = {"train", "--workers", "1", "--optimizer", "sgd", "--lr", "0.1",
                                  "--out", sync};
    a.insert(a.end(), common.begin(), common.end());
    std::vector<std::string> b = {"train", "--algorithm", "downpour", "--workers", "1",
                                  "--servers", "2", "--consistency", "bsp", "--server-update",
                                  "sgd:lr=0.1", "--out", dp};
    b.insert(b.end(), common.begin(), common.end());
    const std::string la = sync + ".log", lb = dp + ".log";
    int status = finish(start(a, la), 240s);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(la);
    status = finish(start(b, lb), 240s);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(lb);
    const auto want = step_losses(sync), got = step_losses(dp);
    ASSERT_EQ(want.size(), 6u) << model << "\n" << slurp(la);
    ASSERT_EQ(got.size(), want.size()) << model << "\n" << slurp(lb);
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-5 * want[i]) << model << ", step " << 5 * (i + 1);
    }
  }
}

// --model-parallel K with Downpour: each partition pushes and pulls only its own keys. One replica
// under BSP with plain SGD on the shards is deterministic, so every partitioning must end on the
// servers with the parameters of the unpartitioned replica (the test loss of the final model
// compares them all at once: a key mapped to the wrong place, or a push applied in part before
// the pull that should see it whole, moves it).
TEST_F(Downpour, ModelParallelReplicaEndsWhereTheUnpartitionedOneDoes) {
  struct Run {
    int k;
    const char* partition;
  };
  std::vector<nlohmann::json> finals;
  for (const Run& r : {Run{1, "neurons"}, Run{2, "neurons"}, Run{3, "neurons"}, Run{2, "layers"}}) {
    const std::string name = std::to_string(r.k) + r.partition;
    const std::string out = (dir_ / name).string(), log = (dir_ / (name + ".log")).string();
    auto args = flags(r.k, 2, 1, out);
    for (const char* a : {"--hidden", "64,32", "--max-steps", "30", "--consistency", "bsp",
                          "--server-update", "sgd:lr=0.1", "--partition"}) {
      args.push_back(a);
    }
    args.push_back(r.partition);
    args.push_back("--model-parallel");
    args.push_back(std::to_string(r.k));
    const int status = finish(start(args, log), 240s);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << name << "\n" << slurp(log);
    finals.push_back(final_record(out));
    const auto& f = finals.back();
    ASSERT_TRUE(f.is_object()) << name << "\n" << slurp(log);
    EXPECT_EQ(f["steps"].get<int64_t>(), 30) << f.dump();
    EXPECT_EQ(f["max_staleness"].get<int64_t>(), 0) << f.dump();
    if (r.k > 1) {
      EXPECT_EQ(f["model_parallel"].get<int>(), r.k) << f.dump();
      EXPECT_GT(f["bytes_crossing_partitions"].get<uint64_t>(), 0u) << f.dump();
      EXPECT_TRUE(f["replicas_lost"].empty()) << f.dump();
    }
  }
  const double base = finals[0]["test_loss"].get<double>();
  for (size_t i = 1; i < finals.size(); ++i) {
    EXPECT_NEAR(finals[i]["test_loss"].get<double>(), base, 1e-5 * base) << finals[i].dump();
    EXPECT_EQ(finals[i]["test_accuracy"], finals[0]["test_accuracy"]) << finals[i].dump();
  }
  // Trained: the loss moved from the initial model's (about ln 10 = 2.3).
  EXPECT_LT(base, 1.8);
}

// 2 replicas of 2 partitions: a killed partition stops its replica (its partner fails naming
// it), the other replica trains on, and a replacement replica (both ranks) joins the job and
// finishes.
TEST_F(Downpour, AKilledPartitionLosesItsReplicaAndAReplacementReplicaJoins) {
  const std::string out = (dir_ / "run").string(), log = (dir_ / "log").string();
  auto args = flags(4, 1, 3, out);
  for (const char* a : {"--model-parallel", "2", "--log-every", "5", "--timeout", "20"}) {
    args.push_back(a);
  }
  const pid_t launcher = start(args, log);
  ASSERT_TRUE(wait_for_step(out, 20, 180s)) << slurp(log);
  const pid_t victim = child_rank(launcher, 3);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  std::smatch m;
  const std::regex replacement(
      "To start a replacement into this job: DTRAIN_RANK=3 (.*) (\\S+dtrain) train");
  std::string text;
  const auto until = Clock::now() + 60s;
  while (Clock::now() < until) {
    text = slurp(log);
    // Both ranks of replica 1 have ended: the killed one, and its partner.
    if (std::regex_search(text, m, replacement) &&
        text.find("DTRAIN_RANK=2 ") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_FALSE(m.empty()) << text;
  EXPECT_NE(text.find("rank 3 (partition 1 of replica 1) was killed by signal"),
            std::string::npos) << text;
  EXPECT_NE(text.find("rank 2 (partition 0 of replica 1)"), std::string::npos) << text;
  // The replacement: both ranks of replica 1, each with the job's environment and its rank.
  std::vector<pid_t> again;
  for (int rank : {2, 3}) {
    std::vector<std::string> env = {"DTRAIN_RANK=" + std::to_string(rank)};
    std::istringstream vars(m[1].str());
    for (std::string kv; vars >> kv;) env.push_back(kv);
    again.push_back(start(args, (dir_ / ("replacement" + std::to_string(rank) + ".log")).string(),
                          env));
    extra_.push_back(again.back());
  }
  for (size_t i = 0; i < again.size(); ++i) {
    const std::string rlog = (dir_ / ("replacement" + std::to_string(2 + i) + ".log")).string();
    const int rs = finish(again[i], 240s);
    EXPECT_TRUE(WIFEXITED(rs) && WEXITSTATUS(rs) == 0) << slurp(rlog);
    EXPECT_NE(slurp(rlog).find("joins the job at step"), std::string::npos) << slurp(rlog);
  }
  const int status = finish(launcher, 240s);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  const auto f = final_record(out);
  ASSERT_TRUE(f.is_object()) << slurp(log);
  EXPECT_EQ(f["ranks"]["2"], "done") << f.dump();
  EXPECT_EQ(f["ranks"]["3"], "done") << f.dump();
  EXPECT_TRUE(f["replicas_lost"].empty()) << f.dump();
  EXPECT_GT(f["test_accuracy"].get<double>(), 0.6) << f.dump();
}

}  // namespace
