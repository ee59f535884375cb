// The library API (dtrain/dtrain.h) around a user's own module: gradients against single-process
// autograd, buffers kept in sync, training with a compressed reducer, reducer state across a
// checkpoint, and bad input named.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <mutex>

#include "dtrain/collective/collective.h"
#include "dtrain/dtrain.h"
#include "harness.h"

namespace dtrain::test {
namespace {

// Not among dtrain's models: a residual block and BatchNorm (a buffer that needs syncing).
struct ResNetImpl : torch::nn::Module {
  ResNetImpl(int64_t in, int64_t width, int64_t classes)
      : stem(register_module("stem", torch::nn::Linear(in, width))),
        norm(register_module("norm", torch::nn::BatchNorm1d(width))),
        block(register_module("block", torch::nn::Linear(width, width))),
        head(register_module("head", torch::nn::Linear(width, classes))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(norm->forward(stem->forward(x)));
    h = h + torch::relu(block->forward(h));
    return head->forward(h);
  }
  torch::nn::Linear stem;
  torch::nn::BatchNorm1d norm;
  torch::nn::Linear block, head;
};
TORCH_MODULE(ResNet);

// Threads share LibTorch's generator: the same seed gives every caller the same parameters.
ResNet make_net(uint64_t seed, int64_t width = 16) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  torch::manual_seed(seed);
  return ResNet(12, width, 3);
}

struct Data {
  torch::Tensor x, y;
};
Data make_data(int64_t n, uint64_t seed) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  torch::manual_seed(seed);
  auto x = torch::randn({n, 12});
  // Three classes from a fixed linear rule: learnable.
  auto w = torch::randn({12, 3});
  return {x, x.mm(w).argmax(1)};
}

void expect_close(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  const double err = (a - b).abs().max().item<double>();
  EXPECT_LT(err, 1e-5 * std::max(1.0, b.abs().max().item<double>())) << what << ": " << err;
}

TEST(Api, DenseGradientsAreTheAverageOfEachRanksAutograd) {
  const Data d = make_data(32, 5);
  // Reference: each rank's half through its own copy (BatchNorm normalises per rank, as in DDP),
  // gradients averaged.
  std::map<std::string, torch::Tensor> want;
  for (int r = 0; r < 2; ++r) {
    auto net = make_net(1);
    torch::nn::functional::cross_entropy(net->forward(d.x.slice(0, 16 * r, 16 * r + 16)),
                                         d.y.slice(0, 16 * r, 16 * r + 16))
        .backward();
    for (const auto& p : net->named_parameters()) {
      auto g = p.value().grad() / 2;
      want[p.key()] = want.count(p.key()) ? want[p.key()] + g : g;
    }
  }
  for (const char* schedule : {"fused:25", "wfbp"}) {
    spawn(2, [&](comm::Group& g) {
      auto net = make_net(1 + g.rank());  // rank 1 differs: the broadcast makes them equal
      DistributedModel dist(*net, std::shared_ptr<comm::Group>(&g, [](comm::Group*) {}),
                            {.reduce = "dense", .schedule = schedule});
      torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
      dist.begin_step();
      dist.backward(torch::nn::functional::cross_entropy(
          net->forward(d.x.slice(0, 16 * g.rank(), 16 * g.rank() + 16)),
          d.y.slice(0, 16 * g.rank(), 16 * g.rank() + 16)));
      ASSERT_TRUE(dist.synchronize());
      for (const auto& p : net->named_parameters()) {
        expect_close(p.value().grad(), want.at(p.key()),
                     std::string(schedule) + " rank " + std::to_string(g.rank()) + " " + p.key());
      }
      EXPECT_GT(dist.bytes_sent(), 0u);
    });
  }
}

TEST(Api, BuffersFollowRankZeroAtEachStep) {
  const Data d = make_data(64, 6);
  spawn(2, [&](comm::Group& g) {
    auto net = make_net(2);
    DistributedModel dist(*net, std::shared_ptr<comm::Group>(&g, [](comm::Group*) {}));
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
    for (int s = 0; s < 3; ++s) {
      dist.begin_step();
      // Right after begin_step the running statistics are rank 0's on every rank.
      auto mean = net->norm->running_mean.clone();
      auto lo = mean.clone(), hi = mean.clone();
      collective::AllreduceOptions a(g), b(g);
      a.output = collective::View(lo.data_ptr<float>(), lo.numel(), collective::DataType::kFloat32);
      a.op = collective::ReduceOp::kMin;
      b.output = collective::View(hi.data_ptr<float>(), hi.numel(), collective::DataType::kFloat32);
      b.op = collective::ReduceOp::kMax;
      collective::allreduce(a);
      collective::allreduce(b);
      EXPECT_TRUE(torch::equal(lo, hi)) << "step " << s;
      // Each rank's own data moves its statistics apart again.
      const int64_t at = 32 * g.rank();
      dist.backward(torch::nn::functional::cross_entropy(net->forward(d.x.slice(0, at, at + 32)),
                                                         d.y.slice(0, at, at + 32)));
      dist.step(opt);
    }
  });
}

TEST(Api, TrainsWithACompressedReducer) {
  const Data d = make_data(512, 7);
  spawn(2, [&](comm::Group& g) {
    auto net = make_net(3, 64);
    DistributedModel dist(*net, std::shared_ptr<comm::Group>(&g, [](comm::Group*) {}),
                          {.reduce = "exdyna:density=0.05,momentum=0.9"});
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05));
    double first = 0, last = 0;
    for (int s = 0; s < 120; ++s) {
      const int64_t at = (s % 8) * 64 + 32 * g.rank();
      dist.begin_step();
      auto loss = torch::nn::functional::cross_entropy(net->forward(d.x.slice(0, at, at + 32)),
                                                       d.y.slice(0, at, at + 32));
      dist.backward(loss);
      dist.step(opt);
      if (s < 8) first += loss.item<double>() / 8;
      if (s >= 112) last += loss.item<double>() / 8;
    }
    EXPECT_LT(last, 0.6 * first) << "rank " << g.rank() << ": loss " << first << " -> " << last;
    // Sparse: far fewer bytes than the dense gradient each step.
    int64_t params = 0;
    for (const auto& p : net->parameters()) params += p.numel();
    EXPECT_LT(dist.bytes_sent(), uint64_t(120 * params * 4) / 4);
  });
}

TEST(Api, ReducerStateCarriesErrorFeedbackAcrossACheckpoint) {
  // Six steps of top-k with error feedback and density warm-up in one go, against three, a
  // checkpoint of the parameters and the reducer state, a new DistributedModel resumed at step 3,
  // and three more: the same bits.
  const Data d = make_data(192, 8);
  auto run = [&](comm::Group& g, bool restart) {
    auto net = make_net(4);
    auto dist = std::make_unique<DistributedModel>(
        *net, std::shared_ptr<comm::Group>(&g, [](comm::Group*) {}),
        DistributedOptions{.reduce = "topk:0.1,warmup=6"});
    for (int s = 0; s < 6; ++s) {
      if (restart && s == 3) {
        const auto state = dist->save_reducer_state();
        EXPECT_FALSE(state.empty());
        std::vector<torch::Tensor> saved;
        for (const auto& p : net->parameters()) saved.push_back(p.detach().clone());
        dist.reset();
        net = make_net(99);  // fresh parameters, replaced by the checkpoint's
        {
          torch::NoGradGuard no_grad;
          auto params = net->parameters();
          for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
          net->norm->running_mean.zero_();
        }
        dist = std::make_unique<DistributedModel>(
            *net, std::shared_ptr<comm::Group>(&g, [](comm::Group*) {}),
            DistributedOptions{
                .reduce = "topk:0.1,warmup=6", .broadcast_buffers = false, .start_step = 3});
        dist->load_reducer_state(state);
      }
      torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
      const int64_t at = s * 32 + 16 * g.rank();
      dist->begin_step();
      net->eval();  // no batch statistics: the buffers play no part
      dist->backward(torch::nn::functional::cross_entropy(net->forward(d.x.slice(0, at, at + 16)),
                                                          d.y.slice(0, at, at + 16)));
      dist->step(opt);
    }
    std::vector<torch::Tensor> out;
    for (const auto& p : net->parameters()) out.push_back(p.detach().clone());
    return out;
  };
  std::vector<torch::Tensor> straight[2], restarted[2];
  spawn(2, [&](comm::Group& g) { straight[g.rank()] = run(g, false); });
  spawn(2, [&](comm::Group& g) { restarted[g.rank()] = run(g, true); });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(straight[r].size(), restarted[r].size());
    for (size_t i = 0; i < straight[r].size(); ++i) {
      EXPECT_TRUE(torch::equal(straight[r][i], restarted[r][i])) << "rank " << r << " param " << i;
    }
  }
}

TEST(Api, BadInputIsNamed) {
  spawn(1, [&](comm::Group& g) {
    auto net = make_net(5);
    auto group = std::shared_ptr<comm::Group>(&g, [](comm::Group*) {});
    EXPECT_INVALID(DistributedModel(*net, group, {.reduce = "bogus:3"}), "bogus");
    EXPECT_INVALID(DistributedModel(*net, group, {.schedule = "sometimes"}), "sometimes");
    DistributedModel dist(*net, group, {.reduce = "exdyna:density=0.01,momentum=0.9"});
    EXPECT_TRUE(dist.applies_momentum());
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.1));
    dist.begin_step();
    EXPECT_INVALID(dist.begin_step(), "still open");
    dist.backward(net->forward(torch::randn({4, 12})).sum());
    EXPECT_INVALID(dist.step(opt), "momentum");
    // The refusal closed the step: the next one starts, and Adam is refused as well.
    dist.begin_step();
    dist.backward(net->forward(torch::randn({4, 12})).sum());
    EXPECT_INVALID(dist.step(adam), "momentum");
    torch::optim::SGD plain(net->parameters(), torch::optim::SGDOptions(0.1));
    dist.begin_step();
    dist.backward(net->forward(torch::randn({4, 12})).sum());
    EXPECT_TRUE(dist.step(plain));
  });
}

TEST(Api, DroppedGradientsAreBucketViewsAgainAndOutliveTheModel) {
  // A .grad set to none (zero_grad(set_to_none), user code) before a step is attached to its
  // bucket again: every rank steps every parameter alike. After the DistributedModel is gone,
  // the module keeps gradients of its own and trains on.
  const Data d = make_data(64, 9);
  std::vector<torch::Tensor> params[2];
  spawn(2, [&](comm::Group& g) {
    auto net = make_net(6);
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
    {
      DistributedModel dist(*net, std::shared_ptr<comm::Group>(&g, [](comm::Group*) {}));
      for (int s = 0; s < 3; ++s) {
        for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
        dist.begin_step();
        const int64_t at = 32 * g.rank();
        const auto x = d.x.slice(0, at, at + 32);
        // Rank 1 leaves the residual block out: its gradient there is zero, and only the bucket
        // view (averaged with rank 0's) makes its optimizer step the block as rank 0's does.
        auto h = torch::relu(net->norm->forward(net->stem->forward(x)));
        if (g.rank() == 0) h = h + torch::relu(net->block->forward(h));
        dist.backward(
            torch::nn::functional::cross_entropy(net->head->forward(h), d.y.slice(0, at, at + 32)));
        ASSERT_TRUE(dist.step(opt));
        for (const auto& p : net->parameters()) ASSERT_TRUE(p.grad().defined());
      }
    }
    // Alone now: a plain LibTorch step on the gradients the module owns.
    opt.zero_grad();
    torch::nn::functional::cross_entropy(net->forward(d.x), d.y).backward();
    for (const auto& p : net->parameters()) {
      ASSERT_TRUE(p.grad().defined());
      EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
    }
    for (const auto& p : net->parameters()) params[g.rank()].push_back(p.detach().clone());
  });
  // The replicas stayed identical through the distributed steps (and the last local gradient,
  // on the same data, is the same on both).
  for (size_t i = 0; i < params[0].size(); ++i) {
    EXPECT_TRUE(torch::equal(params[0][i], params[1][i])) << "parameter " << i;
  }
}

}  // namespace
}  // namespace dtrain::test
