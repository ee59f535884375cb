// Training data as tensors for the trainer (internal to train/).
#pragma once

#include <torch/torch.h>

#include "dtrain/train/trainer.h"

namespace dtrain::train {

struct TensorData {
  torch::Tensor x_train, y_train, x_test, y_test;  // x: float [n, dim] or int64 ids [n, fields]
  int64_t input_dim = 0;
  int64_t classes = 0;
  std::string description;
};

// Fashion-MNIST for dense models, the synthetic click-through set for `embed`.
TensorData load_data(const TrainOptions& options);

}  // namespace dtrain::train
