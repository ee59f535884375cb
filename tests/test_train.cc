// The LibTorch training layer: gradients equal a single-process computation for every schedule,
// short convergence runs, exact resume, a killed worker, bad input.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "dtrain/common/error.h"
#include "dtrain/engine/engine.h"
#include "dtrain/engine/mgwfbp.h"
#include "dtrain/plan/mgwfbp.h"
#include "dtrain/torch/bridge.h"
#include "dtrain/torch/grad_views.h"
#include "dtrain/torch/models.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/trainer.h"
#include "harness.h"

namespace dtrain::test {
namespace {

namespace fs = std::filesystem;
std::mutex g_torch_seed_mu;  // torch's default generator is process-wide; ranks are threads here

torch::Tensor batch_x(int rank, int64_t rows) {
  auto gen = torch::arange(rows * 20, torch::kFloat).reshape({rows, 20});
  return torch::sin(gen * 0.37 + rank * 1.3);
}
torch::Tensor batch_y(int rank, int64_t rows) {
  return (torch::arange(rows, torch::kInt64) * 3 + rank) % 4;
}

std::shared_ptr<torchx::Net> small_mlp() {
  std::lock_guard<std::mutex> lock(g_torch_seed_mu);
  torch::manual_seed(7);
  torchx::ModelSpec spec;
  spec.name = "mlp";
  spec.input_dim = 20;
  spec.classes = 4;
  spec.hidden = {32, 16};
  return torchx::make_model(spec);
}

// (world size, schedule, micro-batches per step)
class EngineGradients : public ::testing::TestWithParam<std::tuple<int, std::string, int>> {};

TEST_P(EngineGradients, EqualSingleProcessOnTheUnionOfBatches) {
  const auto [n, schedule, accumulate] = GetParam();
  const int64_t rows = 6;
  // Reference: one process, one model, all ranks' batches together.
  auto ref = small_mlp();
  std::vector<torch::Tensor> xs, ys;
  for (int r = 0; r < n; ++r) {
    xs.push_back(batch_x(r, rows));
    ys.push_back(batch_y(r, rows));
  }
  torch::nn::functional::cross_entropy(ref->forward(torch::cat(xs)), torch::cat(ys)).backward();
  std::vector<torch::Tensor> want;
  for (auto& p : ref->parameters()) want.push_back(p.grad().clone());

  spawn(n, [&, schedule = schedule, accumulate = accumulate](comm::Group& g) {
    auto model = small_mlp();
    engine::GradientEngine eng(torchx::param_infos(*model), engine::Schedule::parse(schedule),
                               reduce::make_reducer("dense", g), engine::OnNonFinite::kAbort,
                               nullptr);
    std::unique_ptr<engine::MgwfbpScheduler> mgwfbp;
    if (schedule == "mgwfbp") {
      engine::MgwfbpOptions mo;
      mo.skip_steps = 0;
      mo.warmup_steps = 2;
      mo.allreduce_iters = 2;
      mgwfbp = std::make_unique<engine::MgwfbpScheduler>(eng, g, mo);
    }
    torchx::GradViews views(*model, eng);
    auto params = model->parameters();
    // Several steps: hooks and buckets are reusable; mgwfbp installs its plan after step 1.
    for (int step = 0; step < 4; ++step) {
      eng.begin_step(step, accumulate);
      const int64_t part = rows / accumulate;
      for (int m = 0; m < accumulate; ++m) {
        if (m > 0) eng.next_micro_batch();
        eng.backward_started();
        auto x = batch_x(g.rank(), rows).slice(0, m * part, (m + 1) * part);
        auto y = batch_y(g.rank(), rows).slice(0, m * part, (m + 1) * part);
        (torch::nn::functional::cross_entropy(model->forward(x), y) / double(accumulate))
            .backward();
      }
      ASSERT_TRUE(eng.finish());
      for (size_t i = 0; i < params.size(); ++i) {
        // .grad is the bucket memory itself: no copy back.
        ASSERT_EQ(params[i].grad().data_ptr(), static_cast<void*>(eng.grad_memory(i).data()));
        EXPECT_TRUE(torch::allclose(params[i].grad(), want[i], 1e-5, 1e-6))
            << "parameter " << i << " on rank " << g.rank() << " (" << schedule << ", step " << step
            << ")";
      }
      if (mgwfbp && mgwfbp->after_step()) views.refresh();
    }
    if (mgwfbp) {
      ASSERT_TRUE(mgwfbp->planned());
      // The installed buckets are the merge rule's output on the recorded inputs.
      const auto& r = mgwfbp->record();
      std::vector<plan::Layer> layers;
      for (const auto& l : r.at("layers")) layers.push_back(plan::Layer::from_json(l));
      const auto again = plan::mgwfbp_plan(layers, plan::CostModel::from_json(r.at("cost")));
      EXPECT_EQ(again.groups, plan::MergePlan::from_json(r.at("plan")).groups);
      EXPECT_EQ(r.at("buckets").get<engine::Buckets>(), eng.buckets());
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Schedules, EngineGradients,
                         ::testing::Combine(::testing::Values(1, 2, 3),
                                            ::testing::Values("single", "wfbp", "fused:0.001",
                                                              "mgwfbp"),
                                            ::testing::Values(1, 2)),
                         [](const auto& info) {
                           std::string s = std::get<1>(info.param);
                           for (char& c : s) {
                             if (!isalnum(c)) c = '_';
                           }
                           return "n" + std::to_string(std::get<0>(info.param)) + "_" + s + "_acc" +
                                  std::to_string(std::get<2>(info.param));
                         });

// A second backward in one step would add into buckets already being reduced: refused, naming
// the parameter, before the memory is touched; the step's result stays right.
TEST(EngineGradients, SecondBackwardInAStepIsRefused) {
  spawn(2, [](comm::Group& g) {
    auto model = small_mlp();
    engine::GradientEngine eng(torchx::param_infos(*model), engine::Schedule::parse("wfbp"),
                               reduce::make_reducer("dense", g), engine::OnNonFinite::kAbort,
                               nullptr);
    torchx::GradViews views(*model, eng);
    eng.begin_step(0);
    auto loss = torch::nn::functional::cross_entropy(model->forward(batch_x(g.rank(), 6)),
                                                     batch_y(g.rank(), 6));
    loss.backward({}, /*retain_graph=*/true);
    try {
      loss.backward();
      FAIL() << "a second backward in the step was accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("arrived twice in step 0"), std::string::npos)
          << e.what();
    }
    ASSERT_TRUE(eng.finish());
  });
}

train::TrainOptions small_run(const std::string& model) {
  train::TrainOptions o;
  o.model = model;
  o.hidden = {128, 64};
  o.train_subset = 6000;
  o.test_subset = 2000;
  o.epochs = 1;
  o.batch_size = 32;
  o.optimizer = "momentum";
  o.lr = 0.05;
  o.quiet = true;
  return o;
}

std::vector<train::TrainResult> train_on_threads(int n, const train::TrainOptions& o) {
  std::vector<train::TrainResult> results(n);
  spawn(n, [&](comm::Group& g) { results[g.rank()] = train::train(o, g); });
  return results;
}

TEST(Convergence, LogisticRegressionOnFashionMnistSubset) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  auto r = train_on_threads(2, small_run("logreg"));
  EXPECT_GE(r[0].test_accuracy, 0.70) << "logreg, 2 workers, 1 epoch of 6000 samples";
  // The same model on every rank (a hash of each rank's own parameters; the accuracy is
  // allreduced, so it could not tell).
  EXPECT_EQ(r[0].parameters_hash, r[1].parameters_hash);
  EXPECT_NE(r[0].parameters_hash, 0u);
  EXPECT_GT(r[0].bytes_sent, 0u);
}

TEST(Convergence, MlpOnFashionMnistSubset) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  auto o = small_run("mlp");
  o.epochs = 2;
  auto r = train_on_threads(2, o);
  EXPECT_GE(r[0].test_accuracy, 0.75) << "mlp, 2 workers, 2 epochs of 6000 samples";
}

TEST(Convergence, EmbedOnSyntheticClickThroughData) {
  train::TrainOptions o;
  o.model = "embed";
  o.vocab = 5000;
  o.fields = 8;
  o.synthetic_train = 20000;
  o.synthetic_test = 4000;
  o.epochs = 2;
  o.batch_size = 64;
  o.optimizer = "momentum";
  o.lr = 0.1;
  o.quiet = true;
  auto r = train_on_threads(2, o);
  EXPECT_GE(r[0].test_accuracy, 0.70) << "embed on a learnable synthetic ground truth";
}

// Param: the reducer. Error-feedback reducers keep a residual per rank, which the checkpoint must
// hold for every rank (not only rank 0's) for the resumed run to match.
class Resume : public ::testing::TestWithParam<std::string> {};

TEST_P(Resume, InterruptedAndResumedEqualsUninterrupted) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run("mlp");
  o.reduce = GetParam();
  if (o.reduce == "dense+accumulate") {
    o.reduce = "dense";
    o.accumulate = 2;
    o.batch_size = 16;
  }
  o.train_subset = 2000;  // 31 steps per epoch with 2 workers x 32: the run crosses an epoch
  o.epochs = 3;
  o.out_dir = dir.path() + "/whole";
  o.max_steps = 40;
  train_on_threads(2, o);

  o.out_dir = dir.path() + "/parts";
  o.max_steps = 20;
  train_on_threads(2, o);
  o.out_dir.clear();
  o.resume = dir.path() + "/parts";
  o.max_steps = 40;
  train_on_threads(2, o);

  auto whole = train::load_checkpoint_parameters(dir.path() + "/whole/checkpoint.pt");
  auto parts = train::load_checkpoint_parameters(dir.path() + "/parts/checkpoint.pt");
  ASSERT_EQ(whole.size(), parts.size());
  ASSERT_FALSE(whole.empty());
  for (size_t i = 0; i < whole.size(); ++i) {
    EXPECT_TRUE(torch::equal(whole[i], parts[i]))
        << "parameter " << i << " differs by up to "
        << (whole[i] - parts[i]).abs().max().item<double>();
  }
  // Both wrote metrics and config.
  EXPECT_TRUE(fs::exists(dir.path() + "/parts/metrics.jsonl"));
  EXPECT_TRUE(fs::exists(dir.path() + "/whole/config.json"));
  // The resumed run continues the counters: the same bytes and samples as the whole run, and a
  // clock that does not restart.
  auto final_of = [](const std::string& path) {
    std::ifstream in(path);
    std::string line;
    nlohmann::json last;
    double previous_time = -1;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("time_s")) {
        EXPECT_GE(j["time_s"].get<double>(), previous_time) << line;
        previous_time = j["time_s"];
      }
      if (j["kind"] == "final") last = j;
    }
    return last;
  };
  const auto whole_final = final_of(dir.path() + "/whole/metrics.jsonl");
  const auto parts_final = final_of(dir.path() + "/parts/metrics.jsonl");
  EXPECT_EQ(parts_final["bytes_sent"], whole_final["bytes_sent"]);
  EXPECT_EQ(parts_final["steps"], whole_final["steps"]);
  EXPECT_EQ(parts_final["rounds"], whole_final["rounds"]);
}

// The checkpoint's envelope: a flipped byte or a cut file is named before LibTorch reads it.
TEST(BadInput, DamagedCheckpointIsNamed) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run("logreg");
  o.train_subset = 1000;
  o.max_steps = 2;
  o.out_dir = dir.path() + "/run";
  train_on_threads(1, o);
  const std::string path = o.out_dir + "/checkpoint.pt";
  ASSERT_EQ(train::load_checkpoint_parameters(path).size(), 2u);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto error_for = [&](const std::string& content) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    try {
      train::load_checkpoint_parameters(path);
    } catch (const IoError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x10;
  EXPECT_NE(error_for(flipped).find("checksum"), std::string::npos) << error_for(flipped);
  EXPECT_NE(error_for(flipped).find(path), std::string::npos);
  EXPECT_NE(error_for(bytes.substr(0, bytes.size() - 100)).find("truncated"), std::string::npos)
      << error_for(bytes.substr(0, bytes.size() - 100));
}

// A checkpoint write cut short by a stop leaves checkpoint.pt.tmp.<pid>.<n>; the next start in
// that directory removes it when its writer is gone, and leaves a live writer's file alone.
TEST(Resume, StaleTemporaryFilesAreRemovedAtStart) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  const std::string run_dir = dir.path() + "/run";
  fs::create_directories(run_dir);
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);  // a pid that no longer runs
  const std::string stale = run_dir + "/checkpoint.pt.tmp." + std::to_string(child) + ".7";
  const std::string live = run_dir + "/checkpoint.pt.tmp." + std::to_string(::getpid()) + ".8";
  std::ofstream(stale) << "half a checkpoint";
  std::ofstream(live) << "being written";
  auto o = small_run("logreg");
  o.train_subset = 1000;
  o.max_steps = 1;
  o.out_dir = run_dir;
  train_on_threads(1, o);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live));
}

TEST(BadInput, ResumeWithAnotherOptimizerIsNamed) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run("logreg");
  o.train_subset = 1000;
  o.max_steps = 3;
  o.out_dir = dir.path() + "/run";
  train_on_threads(1, o);
  o.out_dir.clear();
  o.resume = dir.path() + "/run";
  o.optimizer = "adam";
  o.max_steps = 6;
  try {
    train_on_threads(1, o);
    FAIL() << "resumed a momentum checkpoint with adam";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("was written with --optimizer momentum; this run uses "
                                         "--optimizer adam"),
              std::string::npos)
        << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Reducers, Resume,
                         ::testing::Values("dense", "topk:0.05", "exdyna:0.05", "dense+accumulate"),
                         [](const auto& info) {
                           std::string name = info.param.substr(0, info.param.find(':'));
                           if (name == "dense+accumulate") name = "dense_accumulate2";
                           return name;
                         });

// An mgwfbp plan comes from timings, so two runs may plan differently; a resumed run must use
// the checkpoint's plan (and allreduce switch), not measure a new one. 3 ranks, where the bucket
// boundaries decide the order of additions: two resumes from one checkpoint end bit-identical,
// and both ran on the checkpoint's buckets.
TEST(ResumeMgwfbp, UsesTheCheckpointsPlan) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  auto o = small_run("mlp");
  o.schedule = "mgwfbp";
  o.train_subset = 3000;
  o.epochs = 2;
  o.out_dir = dir.path() + "/a";
  o.max_steps = 20;  // planned after 15
  train_on_threads(3, o);
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    return nlohmann::json::parse(in);
  };
  const auto planned = read(dir.path() + "/a/plan.json");
  fs::copy(dir.path() + "/a", dir.path() + "/b");
  o.out_dir.clear();
  o.max_steps = 30;
  for (const char* run : {"/a", "/b"}) {
    o.resume = dir.path() + run;
    train_on_threads(3, o);
    const auto resumed = read(dir.path() + run + "/plan.json");
    EXPECT_EQ(resumed.at("plan"), planned.at("plan")) << run;
    EXPECT_EQ(resumed.at("buckets"), planned.at("buckets")) << run;
    EXPECT_EQ(resumed.at("measured_steps"), 10) << run;
  }
  auto a = train::load_checkpoint_parameters(dir.path() + "/a/checkpoint.pt");
  auto b = train::load_checkpoint_parameters(dir.path() + "/b/checkpoint.pt");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
}

TEST(BadInput, RanksStartedWithDifferentFlagsAllFailNamingTheFlag) {
  std::vector<std::string> errors(3);
  EXPECT_THROW(spawn(3,
                     [&](comm::Group& g) {
                       auto o = small_run("mlp");
                       if (g.rank() == 2) o.reduce = "topk:0.05";
                       try {
                         train::train(o, g);
                       } catch (const InvalidArgument& e) {
                         errors[g.rank()] = e.what();
                         throw;
                       }
                     }),
               InvalidArgument);
  for (int r = 0; r < 3; ++r) {
    EXPECT_NE(errors[r].find("--reduce differs between rank 0 and rank 2"), std::string::npos)
        << "rank " << r << ": " << errors[r];
  }
}

TEST(BadInput, NamesTheFlagAndTheChoices) {
  auto expect_invalid = [](train::TrainOptions o, const std::string& needle) {
    try {
      spawn(1, [&](comm::Group& g) { train::train(o, g); });
      FAIL() << "no error for " << needle;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto o = small_run("mlp");
  o.model = "resnet";
  expect_invalid(o, "logreg, mlp, cnn, embed");
  o = small_run("mlp");
  o.reduce = "zip";
  expect_invalid(o, "valid: dense");
  o = small_run("mlp");
  o.schedule = "bucketed";
  expect_invalid(o, "single, wfbp, fused");
  o = small_run("mlp");
  o.reduce = "exdyna:density=0.05,momentum=0.9";
  o.optimizer = "momentum";
  expect_invalid(o, "use --optimizer sgd");
  o = small_run("mlp");
  o.epochs = 0;
  expect_invalid(o, "--epochs");
  o = small_run("mlp");
  o.lr = -1;
  expect_invalid(o, "--lr");
  o = small_run("mlp");
  o.accumulate = 0;
  expect_invalid(o, "--accumulate must be >= 1");
  o = small_run("mlp");
  o.schedule = "mgwfbp";
  o.reduce = "topk:0.01";
  expect_invalid(o, "--schedule mgwfbp plans the dense allreduce");
  EXPECT_THROW(train::validate(o), InvalidArgument);  // what the CLI checks before any worker
  o = small_run("mlp");
  o.data_dir = "/nonexistent/fmnist";
  expect_invalid(o, "dataset-fashion-mnist");
}

TEST(BadInput, ResumeFromMissingCheckpoint) {
  auto o = small_run("logreg");
  o.resume = "/nonexistent/run";
  EXPECT_THROW(spawn(1, [&](comm::Group& g) { train::train(o, g); }), IoError);
}

// ---------------------------------------------------------------------------------------------
// The CLI as a user runs it: a killed worker makes `dtrain train` fail, naming it, and leaves
// the last checkpoint intact.

TEST(Cli, KilledWorkerFailsTheJobNamingIt) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  const std::string out = dir.path() + "/run";
  const std::string log = dir.path() + "/log.txt";
  pid_t launcher = ::fork();
  if (launcher == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl(DTRAIN_BINARY, DTRAIN_BINARY, "train", "--workers", "3", "--epochs", "50",
            "--train-subset", "6000", "--test-subset", "500", "--out", out.c_str(),
            "--checkpoint-every", "5", "--timeout", "20", "--quiet", nullptr);
    ::_exit(127);
  }
  auto start = std::chrono::steady_clock::now();
  while (!fs::exists(out + "/checkpoint.pt") &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(120)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(fs::exists(out + "/checkpoint.pt")) << "no checkpoint appeared";
  pid_t victim = child_with_rank(launcher, 1);
  ASSERT_GT(victim, 0) << "rank 1 not found";
  ::kill(victim, SIGKILL);
  int status = 0;
  ::waitpid(launcher, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "dtrain train did not fail";
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("rank 1"), std::string::npos) << text;
  // The last checkpoint is whole and loadable.
  auto params = train::load_checkpoint_parameters(out + "/checkpoint.pt");
  EXPECT_FALSE(params.empty());
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs `dtrain args...` to its end with output to `log`; returns the wait status.
int run_dtrain(const std::vector<std::string>& args, const std::string& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::unsetenv("DTRAIN_RANK");
    ::unsetenv("DTRAIN_WORLD_SIZE");
    std::vector<char*> argv = {const_cast<char*>(DTRAIN_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(DTRAIN_BINARY, argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

// `--resume DIR` alone continues the run with the settings in DIR/config.json (another model,
// optimizer or worker count than the defaults would not load); a flag given again wins.
TEST(Cli, ResumeTakesTheRunsSettings) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  TempDir dir;
  const std::string out = dir.path() + "/run", log = dir.path() + "/log.txt";
  int status = run_dtrain({"train", "--workers", "3", "--model", "logreg", "--optimizer", "sgd",
                           "--reduce", "topk:0.5",
                           "--lr", "0.05", "--train-subset", "960", "--test-subset", "200",
                           "--batch-size", "16", "--epochs", "3", "--max-steps", "10", "--out",
                           out, "--quiet"},
                          log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_text(log);
  status = run_dtrain({"train", "--resume", out, "--max-steps", "30"}, log);
  const std::string text = read_text(log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text;
  EXPECT_NE(text.find("--model logreg"), std::string::npos) << text;
  EXPECT_NE(text.find("--workers 3"), std::string::npos) << text;
  EXPECT_EQ(text.find("--max-steps"), std::string::npos) << text;  // given, not taken
  const auto config = nlohmann::json::parse(read_text(out + "/config.json"));
  EXPECT_EQ(config.at("model"), "logreg");
  EXPECT_EQ(config.at("optimizer"), "sgd");
  EXPECT_EQ(config.at("workers"), 3);
  EXPECT_EQ(config.at("max_steps"), 30);
  EXPECT_EQ(config.at("reduce"), "topk:0.5");
  // The run went on from step 10 to 30 (the metrics' last step record).
  std::istringstream lines(read_text(out + "/metrics.jsonl"));
  int64_t last_step = 0;
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("steps")) last_step = j.at("steps").get<int64_t>();
  }
  EXPECT_EQ(last_step, 30);
  // A config.json that is not the run's settings is named.
  std::ofstream(out + "/config.json") << "not json";
  status = run_dtrain({"train", "--resume", out, "--max-steps", "31"}, log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_NE(read_text(log).find(out + "/config.json is not a JSON object"), std::string::npos)
      << read_text(log);
}

}  // namespace
}  // namespace dtrain::test
