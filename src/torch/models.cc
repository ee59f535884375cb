#include "dtrain/torch/models.h"

#include "dtrain/common/error.h"

namespace dtrain::torchx {
namespace {

// Convex: one linear layer (for Local SGD and L-BFGS experiments).
class LogReg : public Net {
 public:
  explicit LogReg(const ModelSpec& s)
      : fc_(register_module("fc", torch::nn::Linear(s.input_dim, s.classes))) {}
  torch::Tensor forward(const torch::Tensor& x) override { return fc_->forward(x); }

 private:
  torch::nn::Linear fc_;
};

class Mlp : public Net {
 public:
  explicit Mlp(const ModelSpec& s) {
    int64_t in = s.input_dim;
    for (size_t i = 0; i < s.hidden.size(); ++i) {
      layers_.push_back(
          register_module("fc" + std::to_string(i), torch::nn::Linear(in, s.hidden[i])));
      in = s.hidden[i];
    }
    layers_.push_back(register_module("out", torch::nn::Linear(in, s.classes)));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    torch::Tensor h = x;
    for (size_t i = 0; i + 1 < layers_.size(); ++i) h = torch::relu(layers_[i]->forward(h));
    return layers_.back()->forward(h);
  }

 private:
  std::vector<torch::nn::Linear> layers_;
};

// LeNet-5 style, for 28x28 single-channel images.
class Cnn : public Net {
 public:
  explicit Cnn(const ModelSpec& s)
      : conv1_(register_module("conv1",
                               torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 5).padding(2)))),
        conv2_(register_module("conv2", torch::nn::Conv2d(6, 16, 5))),
        fc1_(register_module("fc1", torch::nn::Linear(16 * 5 * 5, 120))),
        fc2_(register_module("fc2", torch::nn::Linear(120, 84))),
        fc3_(register_module("fc3", torch::nn::Linear(84, s.classes))) {
    DT_ENFORCE(s.input_dim == 784, "--model cnn expects 28x28 images (784 features), got ",
               s.input_dim);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = x.view({-1, 1, 28, 28});
    h = torch::max_pool2d(torch::relu(conv1_->forward(h)), 2);
    h = torch::max_pool2d(torch::relu(conv2_->forward(h)), 2);
    h = h.flatten(1);
    h = torch::relu(fc1_->forward(h));
    h = torch::relu(fc2_->forward(h));
    return fc3_->forward(h);
  }

 private:
  torch::nn::Conv2d conv1_, conv2_;
  torch::nn::Linear fc1_, fc2_, fc3_;
};

// A large embedding table (one shared table, ids of all fields) summed per sample, then a small
// MLP: the click-through-style model whose gradients are block-sparse (only looked-up rows).
class Embed : public Net {
 public:
  explicit Embed(const ModelSpec& s)
      : table_(register_module("table", torch::nn::Embedding(s.vocab, s.embed_dim))),
        fc1_(register_module("fc1", torch::nn::Linear(s.embed_dim * s.fields, 64))),
        out_(register_module("out", torch::nn::Linear(64, s.classes))),
        fields_(s.fields) {
    torch::NoGradGuard guard;
    table_->weight.normal_(0, 0.01);
  }
  torch::Tensor forward(const torch::Tensor& ids) override {
    auto e = table_->forward(ids).flatten(1);  // [batch, fields * dim]
    return out_->forward(torch::relu(fc1_->forward(e)));
  }

 private:
  torch::nn::Embedding table_;
  torch::nn::Linear fc1_, out_;
  int64_t fields_;
};

}  // namespace

std::vector<std::string> model_names() {
  return {"logreg", "mlp", "cnn", "embed"};
}

std::shared_ptr<Net> make_model(const ModelSpec& s) {
  DT_ENFORCE(s.input_dim > 0 && s.classes > 1, "model sizes: input_dim ", s.input_dim,
             " and classes ", s.classes, " must be positive (classes >= 2)");
  for (int64_t h : s.hidden) DT_ENFORCE(h > 0, "--hidden widths must be positive, got ", h);
  if (s.name == "logreg") return std::make_shared<LogReg>(s);
  if (s.name == "mlp") return std::make_shared<Mlp>(s);
  if (s.name == "cnn") return std::make_shared<Cnn>(s);
  if (s.name == "embed") {
    DT_ENFORCE(s.fields > 0 && s.vocab > 0 && s.embed_dim > 0, "--model embed: fields ", s.fields,
               ", vocab ", s.vocab, ", embed-dim ", s.embed_dim, " must be positive");
    return std::make_shared<Embed>(s);
  }
  std::string valid;
  for (const auto& n : model_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw InvalidArgument("--model '" + s.name + "' is not one of " + valid);
}

}  // namespace dtrain::torchx
