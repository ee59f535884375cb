// The smallest program that trains its own LibTorch model with dtrain: an MLP on Fashion-MNIST,
// gradients averaged densely (reduce "dense"; any --reduce spec without momentum= works the same
// way, and one with it wants SGD without momentum: see residual_cnn.cc).
//
//   examples/run_ranks.sh 2 build/minimal_mlp 300      # 300 steps (default 500)
// (it starts each rank with DTRAIN_RANK, DTRAIN_WORLD_SIZE, DTRAIN_RENDEZVOUS and DTRAIN_HOST set;
// on several hosts, set them the same way with a shared rendezvous).
#include <dtrain/data/dataset.h>
#include <dtrain/data/shard.h>
#include <dtrain/dtrain.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) try {
  const int64_t steps = argc > 1 ? std::stoll(argv[1]) : 500;
  torch::set_num_threads(1);
  auto group = dtrain::join();
  const auto train = dtrain::data::load_fashion_mnist(dtrain::data::kFashionMnistDir, true);
  auto x = torch::from_blob(const_cast<float*>(train.features.data()), {int64_t(train.size()), 784},
                            torch::kFloat);
  auto y = torch::from_blob(const_cast<int64_t*>(train.labels.data()), {int64_t(train.size())},
                            torch::kLong);

  torch::nn::Sequential model(torch::nn::Linear(784, 256), torch::nn::ReLU(),
                              torch::nn::Linear(256, 10));
  dtrain::DistributedModel dist(*model, group, {.reduce = "dense"});
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));

  const int64_t batch = 64;
  std::vector<size_t> shard;  // this rank's share of the data, reshuffled every epoch
  for (int64_t step = 0, at = 0, epoch = -1; step < steps; ++step, at += batch) {
    if (epoch < 0 || at + batch > int64_t(shard.size())) {
      shard = dtrain::data::shard_indices(train.size(), dist.rank(), dist.size(), 1, int(++epoch));
      at = 0;
    }
    const auto index = torch::tensor(
        std::vector<int64_t>(shard.begin() + at, shard.begin() + at + batch), torch::kLong);
    dist.begin_step();
    auto loss = torch::nn::functional::cross_entropy(model->forward(x.index_select(0, index)),
                                                     y.index_select(0, index));
    dist.backward(loss);
    dist.step(optimizer);
    if (dist.rank() == 0 && (step + 1) % 100 == 0) {
      std::printf("step %lld: loss %.4f\n", (long long)step + 1, loss.item<double>());
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "minimal_mlp: %s\n", e.what());
  return 1;
}
