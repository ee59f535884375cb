#include "data_source.h"

#include "dtrain/common/error.h"
#include "dtrain/data/dataset.h"
#include "dtrain/data/synthetic.h"

namespace dtrain::train {
namespace {

torch::Tensor to_tensor(const std::vector<float>& v, int64_t rows, int64_t cols) {
  return torch::from_blob(const_cast<float*>(v.data()), {rows, cols}, torch::kFloat).clone();
}
torch::Tensor to_tensor(const std::vector<int64_t>& v, std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<int64_t*>(v.data()), shape, torch::kInt64).clone();
}

}  // namespace

TensorData load_data(const TrainOptions& o) {
  TensorData out;
  if (o.model == "embed") {
    DT_ENFORCE(o.synthetic_train > 0 && o.synthetic_test > 0,
               "synthetic data sizes must be positive");
    // Train and test streams share the hidden ground truth (same seed), not the samples.
    auto train = data::make_sparse_ctr(o.synthetic_train, o.fields, o.vocab, o.seed, 1);
    auto test = data::make_sparse_ctr(o.synthetic_test, o.fields, o.vocab, o.seed, 2);
    if (o.train_subset > 0 && o.train_subset < train.size()) {
      train.ids.resize(o.train_subset * train.fields);
      train.labels.resize(o.train_subset);
    }
    out.x_train = to_tensor(train.ids, {int64_t(train.size()), int64_t(train.fields)});
    out.y_train = to_tensor(train.labels, {int64_t(train.size())});
    out.x_test = to_tensor(test.ids, {int64_t(test.size()), int64_t(test.fields)});
    out.y_test = to_tensor(test.labels, {int64_t(test.size())});
    out.input_dim = o.fields;
    out.classes = 2;
    out.description = detail::concat("synthetic click-through data (", train.size(), " samples, ",
                                     o.fields, " fields, vocabulary ", o.vocab, ")");
    return out;
  }
  const std::string dir = o.data_dir.empty() ? data::kFashionMnistDir : o.data_dir;
  auto train = data::load_fashion_mnist(dir, true);
  auto test = data::load_fashion_mnist(dir, false);
  if (o.train_subset > 0) train = data::take(train, o.train_subset);
  if (o.test_subset > 0) test = data::take(test, o.test_subset);
  out.x_train = to_tensor(train.features, train.size(), train.dim);
  out.y_train = to_tensor(train.labels, {int64_t(train.size())});
  out.x_test = to_tensor(test.features, test.size(), test.dim);
  out.y_test = to_tensor(test.labels, {int64_t(test.size())});
  out.input_dim = train.dim;
  out.classes = train.num_classes;
  out.description = detail::concat("Fashion-MNIST (", train.size(), " training, ", test.size(),
                                   " test images, ", dir, ")");
  return out;
}

}  // namespace dtrain::train
