// Model parallelism: an MLP partitioned by layers or by neurons against the unpartitioned Mlp on
// the same batch (forward outputs, loss, every parameter's gradient), and data-parallel replicas
// of a partitioned model trained step for step against single-process SGD on the union of their
// batches.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dtrain/comm/group.h"
#include "dtrain/torch/models.h"
#include "dtrain/torch/partitioned_mlp.h"
#include "dtrain/train/trainer.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using torchx::Partitioning;

TEST(ModelParallelLayout, UnitRangesCoverEveryUnitOnce) {
  for (int parts : {1, 2, 3, 4, 7}) {
    int64_t next = 0;
    for (int p = 0; p < parts; ++p) {
      const auto r = torchx::unit_range(10, p, parts);
      EXPECT_EQ(r.begin, next);
      EXPECT_GE(r.size(), 10 / parts);
      EXPECT_LE(r.size(), 10 / parts + 1);
      next = r.end;
    }
    EXPECT_EQ(next, 10);
  }
}

TEST(ModelParallelLayout, StagesBalanceWeights) {
  // 784-512-256-10: 401k, 131k and 2.6k weights.
  EXPECT_EQ(torchx::stage_bounds({784, 512, 256, 10}, 1), (std::vector<int>{0, 3}));
  EXPECT_EQ(torchx::stage_bounds({784, 512, 256, 10}, 2), (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(torchx::stage_bounds({784, 512, 256, 10}, 3), (std::vector<int>{0, 1, 2, 3}));
  // Four equal layers over two stages: two each.
  EXPECT_EQ(torchx::stage_bounds({64, 64, 64, 64, 64}, 2), (std::vector<int>{0, 2, 4}));
  EXPECT_INVALID(torchx::stage_bounds({784, 512, 256, 10}, 4), "needs 1..3 partitions");
  EXPECT_INVALID(torchx::parse_partitioning("columns"), "layers, neurons");
}

struct Reference {
  std::shared_ptr<torchx::Net> model;
  torch::Tensor x, y, logits;
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;
};

Reference reference(const std::vector<int64_t>& widths, int64_t batch) {
  torch::manual_seed(7);
  torchx::ModelSpec spec;
  spec.name = "mlp";
  spec.input_dim = widths.front();
  spec.classes = widths.back();
  spec.hidden.assign(widths.begin() + 1, widths.end() - 1);
  Reference r;
  r.model = torchx::make_model(spec);
  r.x = torch::randn({batch, widths.front()});
  r.y = torch::randint(widths.back(), {batch}, torch::kLong);
  r.logits = r.model->forward(r.x);
  auto loss = torch::nn::functional::cross_entropy(r.logits, r.y);
  loss.backward();
  r.loss = loss.item<double>();
  r.logits = r.logits.detach();
  for (const auto& p : r.model->named_parameters()) r.grads[p.key()] = p.value().grad().clone();
  return r;
}

void expect_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double err = (got - want).abs().max().item<double>();
  const double scale = std::max(1e-3, want.abs().max().item<double>());
  EXPECT_LT(err, 1e-5 * scale) << what << ": max error " << err << " at scale " << scale;
}

void check_partitioning(Partitioning how, int parts, const std::vector<int64_t>& widths,
                        int micro_batches = 1) {
  const Reference ref = reference(widths, 24);
  spawn(parts, [&](comm::Group& g) {
    auto group = std::shared_ptr<comm::Group>(&g, [](comm::Group*) {});
    torchx::PartitionedMlp pm(widths, how, group, micro_batches);
    pm.load_slices(*ref.model);
    const std::string who = std::string(torchx::name(how)) + " partition " +
                            std::to_string(g.rank()) + " of " + std::to_string(parts) + ", " +
                            std::to_string(micro_batches) + " micro-batches";
    expect_close(pm.infer(ref.x), ref.logits, who + ": logits");
    const auto r = pm.step(ref.x, ref.y);
    EXPECT_NEAR(r.loss, ref.loss, 1e-6 * ref.loss) << who;
    int held = 0;
    for (const auto& p : pm.named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << who << ": " << p.key();
      expect_close(p.value().grad(), pm.slice_of(p.key(), ref.grads.at(p.key())),
                   who + ": gradient of " + p.key());
      ++held;
    }
    EXPECT_GT(held, 0) << who;
    if (parts > 1) {
      EXPECT_GT(r.bytes_sent, 0u) << who;
    }
  });
}

TEST(ModelParallel, NeuronsEqualTheUnpartitionedModel) {
  for (int parts : {1, 2, 3}) check_partitioning(Partitioning::kNeurons, parts, {30, 17, 13, 10});
}

TEST(ModelParallel, LayersEqualTheUnpartitionedModel) {
  for (int parts : {1, 2, 3}) check_partitioning(Partitioning::kLayers, parts, {30, 17, 13, 10});
  check_partitioning(Partitioning::kLayers, 4, {12, 40, 40, 40, 10});
}

TEST(ModelParallel, PipelinedMicroBatchesEqualTheUnpartitionedModel) {
  // The batch of 24 in 3 equal parts, in 5 uneven ones, and in as many parts as samples.
  for (int m : {3, 5, 24}) check_partitioning(Partitioning::kLayers, 3, {30, 17, 13, 10}, m);
  check_partitioning(Partitioning::kLayers, 4, {12, 40, 40, 40, 10}, 4);
  EXPECT_THROW(
      torchx::PartitionedMlp({4, 4}, Partitioning::kNeurons,
                             comm::Group::connect(comm::GroupOptions{.rank = 0, .size = 1}), 2),
      InvalidArgument);
}

TEST(ModelParallel, BytesCrossingAreTheBoundaryValuesOnly) {
  // Layers over 2 stages of 20-64-64-5 (1,280, 4,096 and 320 weights): stage 0 holds fc0,
  // stage 1 fc1 and out (the cut that balances weights best). Forward: batch x 64 activations;
  // backward: their gradient and the loss (8 bytes), whatever the number of edges (64 x 64)
  // leaving the boundary.
  const std::vector<int64_t> widths = {20, 64, 64, 5};
  const Reference ref = reference(widths, 8);
  spawn(2, [&](comm::Group& g) {
    auto group = std::shared_ptr<comm::Group>(&g, [](comm::Group*) {});
    torchx::PartitionedMlp pm(widths, Partitioning::kLayers, group);
    EXPECT_EQ(pm.first_layer(), g.rank() == 0 ? 0 : 1);
    pm.load_slices(*ref.model);
    const auto r = pm.step(ref.x, ref.y);
    EXPECT_EQ(r.bytes_sent, g.rank() == 0 ? 8u * 64 * 4 : 8u * 64 * 4 + 8);
  });
  // Neurons over 2 ranks: each rank sends its own units' outputs of every layer once to the
  // other (32 + 32 + 3 or 2 units per sample), and in backward the partial gradients of the other
  // rank's units of both hidden layers (32 + 32); the data's gradient is never computed.
  spawn(2, [&](comm::Group& g) {
    auto group = std::shared_ptr<comm::Group>(&g, [](comm::Group*) {});
    torchx::PartitionedMlp pm(widths, Partitioning::kNeurons, group);
    pm.load_slices(*ref.model);
    const auto r = pm.step(ref.x, ref.y);
    const uint64_t own_units = 32 + 32 + (g.rank() == 0 ? 3 : 2);
    EXPECT_EQ(r.bytes_sent, 8u * 4 * (own_units + 32 + 32));
  });
}

TEST(ModelParallel, ReplicasOfAPartitionedModelTrainLikeOneProcess) {
  // 2 replicas x 2 partitions (by neurons, then by layers); each replica takes half of every
  // batch. After each SGD step the partitions' parameters equal single-process SGD on the whole
  // batch.
  const std::vector<int64_t> widths = {16, 24, 12, 6};
  for (Partitioning how : {Partitioning::kNeurons, Partitioning::kLayers}) {
    Reference ref = reference(widths, 16);
    torch::manual_seed(3);
    std::vector<torch::Tensor> xs, ys;
    for (int s = 0; s < 4; ++s) {
      xs.push_back(torch::randn({16, widths.front()}));
      ys.push_back(torch::randint(widths.back(), {16}, torch::kLong));
    }
    // Snapshot of the initial parameters before the single-process run moves them.
    torchx::ModelSpec spec;
    spec.input_dim = widths.front();
    spec.classes = widths.back();
    spec.hidden = {24, 12};
    auto initial = torchx::make_model(spec);
    {
      torch::NoGradGuard no_grad;
      auto src = ref.model->named_parameters();
      for (auto& p : initial->named_parameters()) p.value().copy_(src[p.key()]);
    }
    torch::optim::SGD single(ref.model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    std::vector<std::map<std::string, torch::Tensor>> after;
    for (int s = 0; s < 4; ++s) {
      single.zero_grad();
      torch::nn::functional::cross_entropy(ref.model->forward(xs[s]), ys[s]).backward();
      single.step();
      std::map<std::string, torch::Tensor> snap;
      for (const auto& p : ref.model->named_parameters())
        snap[p.key()] = p.value().detach().clone();
      after.push_back(std::move(snap));
    }
    spawn(4, [&](comm::Group& g) {
      const int replica = g.rank() / 2, part = g.rank() % 2;
      std::shared_ptr<comm::Group> row = g.split(replica, part), column = g.split(part, replica);
      torchx::PartitionedMlp pm(widths, how, row);
      pm.load_slices(*initial);
      torch::optim::SGD opt(pm.parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
      for (int s = 0; s < 4; ++s) {
        opt.zero_grad();
        pm.step(xs[s].slice(0, 8 * replica, 8 * replica + 8),
                ys[s].slice(0, 8 * replica, 8 * replica + 8));
        torchx::average_gradients(pm, *column);
        opt.step();
        for (const auto& p : pm.named_parameters()) {
          expect_close(p.value().detach(), pm.slice_of(p.key(), after[s].at(p.key())),
                       std::string(torchx::name(how)) + " rank " + std::to_string(g.rank()) +
                           " step " + std::to_string(s) + ": " + p.key());
        }
      }
    });
  }
}

// `dtrain train --model-parallel 2` on 4 ranks against the data-parallel run of 2 ranks it
// stands for (same seed, data and optimizer): the same loss at every step. Compared over the
// first steps: the two sum gradients in different orders, and a ReLU at its kink turns a
// rounding difference into a visible one after some steps (see test_local_sgd.cc).
std::vector<nlohmann::json> step_records(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["kind"] == "step") out.push_back(j);
  }
  return out;
}

TEST(ModelParallelTraining, MatchesDataParallelTrainingStepForStep) {
  if (!std::filesystem::exists("/usr/share/datasets/fashion-mnist")) {
    GTEST_SKIP() << "no Fashion-MNIST";
  }
  train::TrainOptions o;
  o.model = "mlp";
  o.hidden = {64, 32};
  o.train_subset = 2000;
  o.test_subset = 500;
  o.epochs = 1;
  o.batch_size = 32;
  o.optimizer = "momentum";
  o.lr = 0.05;
  o.quiet = true;
  o.log_every = 1;
  o.max_steps = 6;
  TempDir dir;
  auto dp = o;
  dp.out_dir = dir.path() + "/dp";
  spawn(2, [&](comm::Group& g) { train::train(dp, g); });
  const auto want = step_records(dp.out_dir);
  ASSERT_EQ(want.size(), 6u);
  const std::vector<std::pair<std::string, int>> settings = {
      {"neurons", 1}, {"layers", 1}, {"layers", 4}};
  for (const auto& [how, pipeline] : settings) {
    auto mp = o;
    mp.model_parallel = 2;
    mp.partition = how;
    mp.pipeline = pipeline;
    mp.out_dir = dir.path() + "/mp-" + how + std::to_string(pipeline);
    spawn(4, [&](comm::Group& g) { train::train(mp, g); });
    const auto got = step_records(mp.out_dir);
    ASSERT_EQ(got.size(), want.size()) << how;
    for (size_t i = 0; i < got.size(); ++i) {
      const double a = got[i]["loss"].get<double>(), b = want[i]["loss"].get<double>();
      EXPECT_NEAR(a, b, 1e-5 * b) << how << " pipeline " << pipeline << ", step " << i + 1;
    }
    EXPECT_GT(got.back()["bytes_crossing_partitions"].get<uint64_t>(), 0u) << how;
  }
}

TEST(ModelParallelTraining, BadCombinationsAreNamed) {
  train::TrainOptions o;
  o.model_parallel = 2;
  o.model = "cnn";
  EXPECT_INVALID(train::validate(o), "not --model cnn");
  o.model = "mlp";
  o.reduce = "topk:0.01";
  EXPECT_INVALID(train::validate(o), "--reduce");
  o.reduce = "dense";
  o.resume = "/tmp/x";
  EXPECT_INVALID(train::validate(o), "--resume");
  o.resume.clear();
  o.partition = "rows";
  EXPECT_INVALID(train::validate(o), "layers, neurons");
  o.partition = "layers";
  o.model_parallel = 4;  // the default mlp has 3 layers
  EXPECT_INVALID(train::validate(o), "needs a layer per stage");
  o.model_parallel = 1;
  EXPECT_INVALID(train::validate(o), "needs --model-parallel");
  o.model_parallel = 2;
  o.partition = "neurons";
  o.pipeline = 4;
  EXPECT_INVALID(train::validate(o), "--pipeline 4 pipelines the stages");
  o.pipeline = 1;
  // A world that is not a multiple of K: every rank names it.
  o.model_parallel = 2;
  o.partition = "neurons";
  o.quiet = true;
  spawn(3, [&](comm::Group& g) { EXPECT_INVALID(train::train(o, g), "whole replicas"); });
}

}  // namespace
}  // namespace dtrain::test
