// Models for the trainer (LibTorch C++ frontend). Each maps a batch to class logits.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace dtrain::torchx {

struct ModelSpec {
  std::string name = "mlp";  // logreg | mlp | cnn | embed
  int64_t input_dim = 784;   // dense models: features per sample
  int64_t classes = 10;
  std::vector<int64_t> hidden = {512, 256};  // mlp hidden widths
  // embed: categorical fields, vocabulary per table, embedding width
  int64_t fields = 8;
  int64_t vocab = 100000;
  int64_t embed_dim = 16;
};

class Net : public torch::nn::Module {
 public:
  // x: [batch, input_dim] float (dense models) or [batch, fields] int64 ids (embed).
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
};

std::vector<std::string> model_names();
// Throws InvalidArgument listing valid names, or naming a bad size.
std::shared_ptr<Net> make_model(const ModelSpec& spec);

}  // namespace dtrain::torchx
