// Fashion-MNIST loader: two IDX files per split (images N x rows x cols ubyte, labels N ubyte),
// checked against each other, pixels mapped through a 256-entry table to normalized floats.
#include <algorithm>
#include <filesystem>

#include "dtrain/common/error.h"
#include "dtrain/data/dataset.h"
#include "dtrain/data/idx.h"

namespace dtrain::data {

namespace {

constexpr int kFashionMnistClasses = 10;

std::string install_hint() {
  return "install Debian's dataset-fashion-mnist or pass --data DIR";
}

// dir/base.gz if present, else dir/base; InvalidArgument if neither is.
std::string find_file(const std::string& dir, const std::string& base) {
  namespace fs = std::filesystem;
  for (const std::string& candidate : {base + ".gz", base}) {
    fs::path p = fs::path(dir) / candidate;
    std::error_code ec;
    if (fs::exists(p, ec)) return p.string();
  }
  DT_THROW(InvalidArgument, "Fashion-MNIST not found in ", dir, ": neither ", base, ".gz nor ",
           base, " exists (", install_hint(), ")");
}

void check_type(const IdxArray& a, const std::string& path, size_t ndims, const char* what) {
  if (a.type != IdxType::kUByte || a.dims.size() != ndims) {
    DT_THROW(IoError, path, " does not hold Fashion-MNIST ", what, ": expected ", ndims,
             "-D ubyte, found ", a.dims.size(), "-D ", name(a.type));
  }
}

}  // namespace

Dataset load_fashion_mnist(const std::string& dir, bool train) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    DT_THROW(InvalidArgument, "Fashion-MNIST not found in ", dir, " (", install_hint(), ")");
  }
  const std::string split = train ? "train" : "t10k";
  const std::string image_path = find_file(dir, split + "-images-idx3-ubyte");
  const std::string label_path = find_file(dir, split + "-labels-idx1-ubyte");

  IdxArray images = read_idx(image_path);
  check_type(images, image_path, 3, "images");
  IdxArray labels = read_idx(label_path);
  check_type(labels, label_path, 1, "labels");
  if (images.dims[0] != labels.dims[0]) {
    DT_THROW(IoError, image_path, " holds ", images.dims[0], " images but ", label_path, " holds ",
             labels.dims[0], " labels");
  }

  Dataset out;
  out.num_classes = kFashionMnistClasses;
  out.dim = size_t{images.dims[1]} * images.dims[2];
  out.labels.reserve(labels.data.size());
  for (size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] >= kFashionMnistClasses) {
      DT_THROW(IoError, label_path, " has label ", int{labels.data[i]}, " at index ", i,
               "; Fashion-MNIST labels are 0..9");
    }
    out.labels.push_back(labels.data[i]);
  }

  float table[256];
  for (int p = 0; p < 256; ++p) {
    table[p] = (static_cast<float>(p) / 255.0f - kFashionMnistMean) / kFashionMnistStd;
  }
  out.features.resize(images.data.size());
  for (size_t i = 0; i < images.data.size(); ++i) out.features[i] = table[images.data[i]];
  return out;
}

Dataset take(const Dataset& d, size_t n) {
  DT_ENFORCE(d.features.size() == d.size() * d.dim, "dataset has ", d.features.size(),
             " features for ", d.size(), " examples of dim ", d.dim);
  n = std::min(n, d.size());
  Dataset out;
  out.dim = d.dim;
  out.num_classes = d.num_classes;
  out.labels.assign(d.labels.begin(), d.labels.begin() + static_cast<ptrdiff_t>(n));
  out.features.assign(d.features.begin(), d.features.begin() + static_cast<ptrdiff_t>(n * d.dim));
  return out;
}

}  // namespace dtrain::data
