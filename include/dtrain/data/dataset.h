// Dense labelled datasets held in memory, and the Fashion-MNIST loader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dtrain::data {

// n examples of `dim` float features each (row-major) with a class label in [0, num_classes).
struct Dataset {
  std::vector<float> features;  // size() * dim, row-major
  std::vector<int64_t> labels;  // size()
  size_t dim = 0;
  int num_classes = 0;

  size_t size() const { return labels.size(); }
};

// Where Debian's dataset-fashion-mnist package installs the four IDX files.
constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// The per-pixel statistics of the Fashion-MNIST training set, after scaling pixels to [0, 1].
constexpr float kFashionMnistMean = 0.2860f;
constexpr float kFashionMnistStd = 0.3530f;

// Loads the training (60000) or test (10000) split from `dir`: train-images-idx3-ubyte.gz and
// train-labels-idx1-ubyte.gz, or t10k-*; each name is also accepted without ".gz". Features are
// (pixel / 255 - kFashionMnistMean) / kFashionMnistStd, dim = rows * cols, num_classes = 10.
// Throws InvalidArgument when `dir` or a file is missing (naming the Debian package), IoError
// naming the file when it is unreadable or malformed: images not 3-D ubyte, labels not 1-D ubyte,
// differing counts, a label >= 10.
Dataset load_fashion_mnist(const std::string& dir, bool train);

// The first min(n, d.size()) examples of d.
Dataset take(const Dataset& d, size_t n);

}  // namespace dtrain::data
