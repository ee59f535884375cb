// A model dtrain does not ship, trained with dtrain's gradient path: a small residual CNN with
// BatchNorm on Fashion-MNIST, its gradients sparsified by ExDyna (or any --reduce spec).
//
// Each rank is one process; start them with dtrain's environment, e.g. two on this machine:
//   examples/run_ranks.sh 2 build/residual_cnn --reduce exdyna:0.01
// (it starts each rank with DTRAIN_RANK, DTRAIN_WORLD_SIZE, DTRAIN_RENDEZVOUS and DTRAIN_HOST set;
// on several hosts, set them the same way with a shared rendezvous).
// Flags: --reduce SPEC (default exdyna:0.01), --epochs N (1), --max-steps N (all),
//        --batch-size N (64 per rank), --lr X (0.05), --data DIR (Debian's Fashion-MNIST),
//        --min-accuracy A (exit 1 if the final test accuracy is below A, a fraction; for tests).
#include <dtrain/data/dataset.h>
#include <dtrain/data/shard.h>
#include <dtrain/dtrain.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

// conv-bn-relu, then a residual block of two convolutions, twice, then a linear classifier.
struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int64_t c)
      : conv1(register_module(
            "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(c, c, 3).padding(1).bias(false)))),
        bn1(register_module("bn1", torch::nn::BatchNorm2d(c))),
        conv2(register_module(
            "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(c, c, 3).padding(1).bias(false)))),
        bn2(register_module("bn2", torch::nn::BatchNorm2d(c))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(bn1->forward(conv1->forward(x)));
    return torch::relu(x + bn2->forward(conv2->forward(h)));
  }
  torch::nn::Conv2d conv1;
  torch::nn::BatchNorm2d bn1;
  torch::nn::Conv2d conv2;
  torch::nn::BatchNorm2d bn2;
};
TORCH_MODULE(Block);

struct ResidualCnnImpl : torch::nn::Module {
  ResidualCnnImpl()
      : stem(register_module("stem",
                             torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)))),
        block1(register_module("block1", Block(16))),
        widen(register_module(
            "widen", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1).stride(2)))),
        block2(register_module("block2", Block(32))),
        head(register_module("head", torch::nn::Linear(32, 10))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(stem->forward(x.view({-1, 1, 28, 28})));
    h = block1->forward(h);                               // 16 x 28 x 28
    h = block2->forward(torch::relu(widen->forward(h)));  // 32 x 14 x 14
    return head->forward(h.mean({2, 3}));                 // global average pooling
  }
  torch::nn::Conv2d stem;
  Block block1;
  torch::nn::Conv2d widen;
  Block block2;
  torch::nn::Linear head;
};
TORCH_MODULE(ResidualCnn);

std::string flag(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return fallback;
}

torch::Tensor features(const dtrain::data::Dataset& d) {
  return torch::from_blob(const_cast<float*>(d.features.data()),
                          {int64_t(d.size()), int64_t(d.dim)}, torch::kFloat);
}
torch::Tensor labels(const dtrain::data::Dataset& d) {
  return torch::from_blob(const_cast<int64_t*>(d.labels.data()), {int64_t(d.size())}, torch::kLong);
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string reduce = flag(argc, argv, "--reduce", "exdyna:0.01");
  const int epochs = std::stoi(flag(argc, argv, "--epochs", "1"));
  const int64_t max_steps = std::stoll(flag(argc, argv, "--max-steps", "-1"));
  const int64_t batch = std::stoll(flag(argc, argv, "--batch-size", "64"));
  const double lr = std::stod(flag(argc, argv, "--lr", "0.05"));
  const std::string dir = flag(argc, argv, "--data", dtrain::data::kFashionMnistDir);
  const double min_accuracy = std::stod(flag(argc, argv, "--min-accuracy", "0"));
  torch::set_num_threads(1);

  auto group = dtrain::join();
  const auto train = dtrain::data::load_fashion_mnist(dir, true);
  const auto test = dtrain::data::load_fashion_mnist(dir, false);
  const auto x = features(train), y = labels(train);

  torch::manual_seed(1);
  ResidualCnn model;
  dtrain::DistributedModel dist(*model, group, {.reduce = reduce});
  // A spec with momentum= (e.g. exdyna:density=0.01,momentum=0.9) applies momentum inside the
  // reducer (momentum correction): the optimizer is then plain SGD; otherwise SGD with momentum.
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(lr).momentum(
                                                       dist.applies_momentum() ? 0 : 0.9));

  int64_t step = 0;
  double accuracy = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto shard =
        dtrain::data::shard_indices(train.size(), dist.rank(), dist.size(), 1, epoch);
    double loss_sum = 0;
    int64_t n = 0;
    for (size_t at = 0; at + batch <= shard.size(); at += batch) {
      if (max_steps >= 0 && step >= max_steps) break;
      std::vector<int64_t> ids(shard.begin() + at, shard.begin() + at + batch);
      const auto index = torch::tensor(ids, torch::kLong);
      model->train();
      dist.begin_step();
      auto loss = torch::nn::functional::cross_entropy(model->forward(x.index_select(0, index)),
                                                       y.index_select(0, index));
      dist.backward(loss);
      dist.step(optimizer);
      loss_sum += loss.item<double>();
      ++n;
      ++step;
    }
    // Every rank evaluates the whole test set with its own BatchNorm statistics (rank 0's as of
    // the last begin_step, moved by this rank's last batch); rank 0 reports.
    torch::NoGradGuard no_grad;
    model->eval();
    const auto tx = features(test), ty = labels(test);
    int64_t correct = 0;
    for (int64_t b = 0; b < tx.size(0); b += 1000) {
      const auto logits = model->forward(tx.slice(0, b, std::min(b + 1000, tx.size(0))));
      correct +=
          logits.argmax(1).eq(ty.slice(0, b, std::min(b + 1000, tx.size(0)))).sum().item<int64_t>();
    }
    accuracy = double(correct) / double(tx.size(0));
    if (dist.rank() == 0) {
      std::printf(
          "epoch %d: %lld steps, train loss %.4f, test accuracy %.2f%%, %.1f MB sent by rank 0 "
          "(%s)\n",
          epoch + 1, (long long)step, n ? loss_sum / n : 0.0,
          100.0 * double(correct) / double(tx.size(0)), dist.bytes_sent() / 1e6, reduce.c_str());
    }
    if (max_steps >= 0 && step >= max_steps) break;
  }
  if (accuracy < min_accuracy) {
    std::fprintf(stderr, "residual_cnn: rank %d: test accuracy %.4f is below --min-accuracy %.4f\n",
                 dist.rank(), accuracy, min_accuracy);
    return 1;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "residual_cnn: %s\n", e.what());
  return 1;
}
