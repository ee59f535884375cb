#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "dtrain/common/error.h"
#include "dtrain/data/dataset.h"
#include "dtrain/data/idx.h"
#include "dtrain/data/shard.h"
#include "dtrain/data/synthetic.h"
#include "harness.h"

namespace dtrain::data {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes idx_bytes(uint8_t type, uint8_t ndims, const std::vector<uint32_t>& dims, const Bytes& data) {
  Bytes out{0, 0, type, ndims};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(d >> shift));
  }
  out.insert(out.end(), data.begin(), data.end());
  return out;
}
Bytes ubyte_idx(const std::vector<uint32_t>& dims, const Bytes& data) {
  return idx_bytes(0x08, static_cast<uint8_t>(dims.size()), dims, data);
}
Bytes pattern(size_t n, int salt = 0) {  // value = f(index) so a shifted read cannot pass
  Bytes out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>((i * 7 + 3 + salt) % 251);
  return out;
}

void write_plain(const std::string& path, const Bytes& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}
void write_gz(const std::string& path, const Bytes& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), int(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}
Bytes read_plain(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// The message of the E that fn throws; a failure if it throws nothing or something else.
template <typename E, typename F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception thrown";
  return "";
}
#define EXPECT_CONTAINS(s, part) EXPECT_NE((s).find(part), std::string::npos) << (s)

class IdxTest : public ::testing::TestWithParam<bool> {  // param: gzipped
 protected:
  std::string write(const std::string& stem, const Bytes& bytes) {
    std::string path = dir_.path() + "/" + stem + (GetParam() ? ".gz" : "");
    if (GetParam())
      write_gz(path, bytes);
    else
      write_plain(path, bytes);
    return path;
  }
  void expect_io_error(const Bytes& bytes, const std::string& part) {
    std::string path = write("bad", bytes);
    std::string msg = error_of<IoError>([&] { read_idx(path); });
    EXPECT_CONTAINS(msg, path);
    EXPECT_CONTAINS(msg, part);
  }
  test::TempDir dir_;
};

TEST_P(IdxTest, ReadsBackExactly) {
  Bytes payload = pattern(3 * 2 * 4);
  IdxArray a = read_idx(write("a", ubyte_idx({3, 2, 4}, payload)));
  EXPECT_EQ(a.type, IdxType::kUByte);
  EXPECT_EQ(a.dims, (std::vector<uint32_t>{3, 2, 4}));
  EXPECT_EQ(a.count(), 24u);
  EXPECT_EQ(a.data, payload);

  IdxArray b = read_idx(write("b", ubyte_idx({70000}, pattern(70000, 5))));  // > one gz buffer
  EXPECT_EQ(b.dims, std::vector<uint32_t>{70000});
  EXPECT_EQ(b.data, pattern(70000, 5));

  IdxArray c = read_idx(write("c", idx_bytes(0x0C, 2, {2, 3}, pattern(24, 1))));  // int: as-is
  EXPECT_EQ(c.type, IdxType::kInt);
  EXPECT_EQ(element_size(c.type), 4u);
  EXPECT_EQ(c.data, pattern(24, 1));

  IdxArray empty = read_idx(write("d", ubyte_idx({0, 28, 28}, {})));
  EXPECT_EQ(empty.dims, (std::vector<uint32_t>{0, 28, 28}));
  EXPECT_TRUE(empty.data.empty());
}

TEST_P(IdxTest, RejectsMalformedFiles) {
  Bytes truncated = ubyte_idx({4, 6}, pattern(24));
  truncated.resize(truncated.size() - 5);
  expect_io_error(truncated, "is truncated: expected 24 bytes of data, found 19");
  expect_io_error({0, 0}, "is truncated: expected a 4-byte IDX magic number, found 2");
  expect_io_error({0, 0, 8, 3, 0, 0, 0, 1}, "is truncated: expected 12 bytes of dims, found 4");
  expect_io_error(idx_bytes(0x08, 1, {1}, {}), "is truncated: expected 1 bytes of data, found 0");
  Bytes magic = ubyte_idx({3}, pattern(3));
  magic[0] = 1;
  expect_io_error(magic, "not an IDX file: magic number 0x01000801");
  expect_io_error(idx_bytes(0x07, 1, {3}, pattern(3)), "magic number 0x00000701");
  expect_io_error(idx_bytes(0x08, 0, {}, {}), "magic number 0x00000800");
  expect_io_error(idx_bytes(0x08, 5, {1, 1, 1, 1, 1}, {1}), "magic number 0x00000805");
  Bytes trailing = ubyte_idx({3}, pattern(3));
  trailing.insert(trailing.end(), {9, 9, 9, 9});
  expect_io_error(trailing, "has 4 trailing bytes after the 3-byte payload");
  expect_io_error(ubyte_idx({65536, 65536}, pattern(10)),  // read in chunks, not allocated
                  "expected 4294967296 bytes of data, found 10");
  expect_io_error(ubyte_idx({100000, 100000, 100000, 100000}, {}), "dims too large");
}

INSTANTIATE_TEST_SUITE_P(PlainAndGzip, IdxTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "gzip" : "plain"; });

TEST(Idx, RejectsCorruptGzipAndMissingFiles) {
  test::TempDir dir;
  const std::string garbage = dir.path() + "/garbage-idx1-ubyte.gz";
  write_plain(garbage, ubyte_idx({3}, pattern(3)));  // a plain file labeled .gz
  EXPECT_CONTAINS(error_of<IoError>([&] { read_idx(garbage); }), garbage);

  const std::string good = dir.path() + "/good.gz";
  write_gz(good, ubyte_idx({4000}, pattern(4000)));
  Bytes gz = read_plain(good);
  Bytes flipped = gz;
  for (size_t i = 20; i < flipped.size() - 10; i += 7) flipped[i] ^= 0x5A;
  const std::string corrupt = dir.path() + "/corrupt.gz";
  write_plain(corrupt, flipped);
  std::string msg = error_of<IoError>([&] { read_idx(corrupt); });
  EXPECT_CONTAINS(msg, corrupt);
  EXPECT_CONTAINS(msg, "corrupt gzip stream");

  const std::string cut = dir.path() + "/cut.gz";
  write_plain(cut, Bytes(gz.begin(), gz.begin() + static_cast<ptrdiff_t>(gz.size() / 2)));
  msg = error_of<IoError>([&] { read_idx(cut); });
  EXPECT_CONTAINS(msg, cut);

  const std::string missing = dir.path() + "/missing-idx3-ubyte.gz";
  msg = error_of<IoError>([&] { read_idx(missing); });
  EXPECT_CONTAINS(msg, missing);
  EXPECT_CONTAINS(msg, "No such file or directory");
}

TEST(FashionMnist, LoadsBothSplits) {
  if (!std::filesystem::is_directory(kFashionMnistDir)) GTEST_SKIP() << "no " << kFashionMnistDir;
  for (bool train : {true, false}) {
    Dataset d = load_fashion_mnist(kFashionMnistDir, train);
    const size_t n = train ? 60000 : 10000;
    ASSERT_EQ(d.size(), n);
    EXPECT_EQ(d.dim, 784u);
    EXPECT_EQ(d.num_classes, 10);
    ASSERT_EQ(d.features.size(), n * 784);
    std::vector<size_t> per_class(10);
    for (int64_t y : d.labels) {
      ASSERT_TRUE(y >= 0 && y < 10) << y;
      ++per_class[static_cast<size_t>(y)];
    }
    for (size_t c : per_class) EXPECT_EQ(c, n / 10);  // Fashion-MNIST is exactly balanced
    double mean = std::accumulate(d.features.begin(), d.features.end(), 0.0) / d.features.size();
    EXPECT_LT(std::abs(mean), 0.05);
    auto [lo, hi] = std::minmax_element(d.features.begin(), d.features.end());
    EXPECT_FLOAT_EQ(*lo, -kFashionMnistMean / kFashionMnistStd);
    EXPECT_FLOAT_EQ(*hi, (1.0f - kFashionMnistMean) / kFashionMnistStd);
  }
}

TEST(FashionMnist, MissingDirNamesThePackage) {
  std::string msg =
      error_of<InvalidArgument>([] { load_fashion_mnist("/nonexistent/fmnist", true); });
  EXPECT_CONTAINS(msg, "/nonexistent/fmnist");
  EXPECT_CONTAINS(msg, "dataset-fashion-mnist");
}

TEST(FashionMnist, ValidatesFilesAndAcceptsUncompressedNames) {
  test::TempDir dir;
  const std::string images = dir.path() + "/t10k-images-idx3-ubyte";
  const std::string labels = dir.path() + "/t10k-labels-idx1-ubyte";
  write_plain(images, ubyte_idx({5, 2, 3}, pattern(30)));
  EXPECT_CONTAINS(error_of<InvalidArgument>([&] { load_fashion_mnist(dir.path(), false); }),
                  "t10k-labels-idx1-ubyte");
  write_plain(labels, ubyte_idx({5}, {3, 1, 4, 1, 5}));
  Dataset d = load_fashion_mnist(dir.path(), false);
  ASSERT_EQ(d.size(), 5u);
  EXPECT_EQ(d.dim, 6u);
  EXPECT_EQ(d.labels, (std::vector<int64_t>{3, 1, 4, 1, 5}));
  for (size_t i = 0; i < 30; ++i) {
    EXPECT_FLOAT_EQ(d.features[i],
                    (pattern(30)[i] / 255.0f - kFashionMnistMean) / kFashionMnistStd);
  }
  Dataset head = take(d, 2);
  EXPECT_EQ(head.labels, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(head.features, std::vector<float>(d.features.begin(), d.features.begin() + 12));
  EXPECT_EQ(take(d, 99).size(), 5u);

  write_plain(labels, ubyte_idx({4}, {3, 1, 4, 1}));
  EXPECT_CONTAINS(error_of<IoError>([&] { load_fashion_mnist(dir.path(), false); }), labels);
  write_plain(labels, ubyte_idx({5}, {3, 1, 10, 1, 5}));
  EXPECT_CONTAINS(error_of<IoError>([&] { load_fashion_mnist(dir.path(), false); }), labels);
  write_plain(labels, ubyte_idx({5, 1}, {3, 1, 4, 1, 5}));
  EXPECT_CONTAINS(error_of<IoError>([&] { load_fashion_mnist(dir.path(), false); }), labels);
  write_plain(labels, ubyte_idx({5}, {3, 1, 4, 1, 5}));
  write_plain(images, ubyte_idx({5, 6}, pattern(30)));
  EXPECT_CONTAINS(error_of<IoError>([&] { load_fashion_mnist(dir.path(), false); }), images);
}

class ShardSweep : public ::testing::TestWithParam<std::tuple<int, size_t>> {};

TEST_P(ShardSweep, DisjointEqualAndDeterministic) {
  auto [world, n] = GetParam();
  const size_t per_rank = n / static_cast<size_t>(world);
  std::set<size_t> seen;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<size_t> shard = shard_indices(n, rank, world, 1234, 0);
    ASSERT_EQ(shard.size(), per_rank);
    EXPECT_EQ(shard, shard_indices(n, rank, world, 1234, 0));
    for (size_t i : shard) {
      EXPECT_LT(i, n);
      EXPECT_TRUE(seen.insert(i).second) << "index " << i << " on two ranks";
    }
    if (per_rank >= 100) {
      EXPECT_NE(shard, shard_indices(n, rank, world, 1234, 1));
      EXPECT_NE(shard, shard_indices(n, rank, world, 1235, 0));
    }
  }
  EXPECT_EQ(seen.size(), per_rank * static_cast<size_t>(world));
}

INSTANTIATE_TEST_SUITE_P(WorldsAndSizes, ShardSweep,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4, 7),
                                            ::testing::Values<size_t>(0, 1, 10, 1001)));

TEST(Shard, PermutationIsPinnedAndValidated) {
  std::vector<size_t> perm = epoch_permutation(1000, 9, 3);
  std::vector<size_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  std::vector<size_t> identity(1000);
  std::iota(identity.begin(), identity.end(), size_t{0});
  EXPECT_EQ(sorted, identity);
  EXPECT_NE(perm, identity);
  EXPECT_EQ(epoch_permutation(10, 42, 0), (std::vector<size_t>{9, 6, 2, 0, 1, 4, 3, 8, 5, 7}));
  EXPECT_THROW(shard_indices(10, -1, 2, 0, 0), InvalidArgument);
  EXPECT_THROW(shard_indices(10, 2, 2, 0, 0), InvalidArgument);
  EXPECT_THROW(shard_indices(10, 0, 0, 0, 0), InvalidArgument);
  EXPECT_THROW(shard_indices(10, 0, 1, 0, -1), InvalidArgument);
}

TEST(SparseCtr, DeterministicSkewedAndBalanced) {
  SparseDataset a = make_sparse_ctr(20000, 8, 5000, 7, 0);
  ASSERT_EQ(a.size(), 20000u);
  ASSERT_EQ(a.ids.size(), 20000u * 8);
  EXPECT_EQ(a.ids, make_sparse_ctr(20000, 8, 5000, 7, 0).ids);
  EXPECT_EQ(a.labels, make_sparse_ctr(20000, 8, 5000, 7, 0).labels);
  EXPECT_NE(a.ids, make_sparse_ctr(20000, 8, 5000, 7, 1).ids);
  EXPECT_NE(a.ids, make_sparse_ctr(20000, 8, 5000, 8, 0).ids);
  std::vector<size_t> count(5000);
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t f = 0; f < 8; ++f) {
      int64_t id = a.ids[i * 8 + f];
      ASSERT_GE(id, static_cast<int64_t>(f * 5000 / 8));  // field f's own range
      ASSERT_LT(id, static_cast<int64_t>((f + 1) * 5000 / 8));
      ++count[static_cast<size_t>(id)];
    }
  }
  std::sort(count.begin(), count.end(), std::greater<>());
  size_t top = std::accumulate(count.begin(), count.begin() + 50, size_t{0});  // top 1% of ids
  EXPECT_GT(static_cast<double>(top) / a.ids.size(), 0.2);
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    SparseDataset d = make_sparse_ctr(5000, 8, 5000, seed, 0);
    double positive = std::accumulate(d.labels.begin(), d.labels.end(), 0.0) / d.size();
    EXPECT_GT(positive, 0.3) << "seed " << seed;
    EXPECT_LT(positive, 0.7) << "seed " << seed;
  }
  EXPECT_THROW(make_sparse_ctr(10, 0, 5, 1), InvalidArgument);
  EXPECT_THROW(make_sparse_ctr(10, 6, 5, 1), InvalidArgument);
}

TEST(SparseCtr, TrainAndTestShareTheGroundTruth) {
  std::vector<float> w = ground_truth_weights(7, 100000);
  double mean = std::accumulate(w.begin(), w.end(), 0.0) / w.size();
  double sq = std::inner_product(w.begin(), w.end(), w.begin(), 0.0) / w.size();
  EXPECT_LT(std::abs(mean), 0.02);
  EXPECT_NEAR(std::sqrt(sq - mean * mean), 1.0, 0.02);
  std::vector<float> prefix = ground_truth_weights(7, 5000);
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), w.begin()));  // independent of vocab

  SparseCtrTruth truth = sparse_ctr_truth(8, 5000, 7);
  for (uint64_t stream : {0, 1}) {
    SparseDataset d = make_sparse_ctr(10000, 8, 5000, 7, stream);
    size_t correct = 0;
    for (size_t i = 0; i < d.size(); ++i) {
      bool predicted = truth.logit({d.ids.data() + i * 8, 8}) > 0;
      correct += predicted == (d.labels[i] == 1);
    }
    EXPECT_GT(static_cast<double>(correct) / d.size(), 0.9) << "stream " << stream;
  }
}

TEST(GaussianClasses, NearestCentroidFromTrainClassifiesTest) {
  const size_t dim = 16;
  Dataset train = make_gaussian_classes(4000, dim, 10, 3, 0);
  Dataset test = make_gaussian_classes(2000, dim, 10, 3, 1);
  EXPECT_EQ(train.features, make_gaussian_classes(4000, dim, 10, 3, 0).features);
  EXPECT_NE(train.features, make_gaussian_classes(4000, dim, 10, 4, 0).features);
  ASSERT_EQ(test.features.size(), 2000 * dim);
  EXPECT_EQ(test.num_classes, 10);
  std::vector<double> centroid(10 * dim);
  std::vector<size_t> count(10);
  for (size_t i = 0; i < train.size(); ++i) {
    size_t c = static_cast<size_t>(train.labels[i]);
    ASSERT_LT(c, 10u);
    ++count[c];
    for (size_t j = 0; j < dim; ++j) centroid[c * dim + j] += train.features[i * dim + j];
  }
  for (size_t c = 0; c < 10; ++c) {
    ASSERT_GT(count[c], 300u);
    for (size_t j = 0; j < dim; ++j) centroid[c * dim + j] /= count[c];
  }
  size_t correct = 0;
  for (size_t i = 0; i < test.size(); ++i) {
    size_t best = 0;
    double best_d = INFINITY;
    for (size_t c = 0; c < 10; ++c) {
      double d = 0;
      for (size_t j = 0; j < dim; ++j)
        d += std::pow(test.features[i * dim + j] - centroid[c * dim + j], 2);
      if (d < best_d) best_d = d, best = c;
    }
    correct += best == static_cast<size_t>(test.labels[i]);
  }
  EXPECT_GT(static_cast<double>(correct) / test.size(), 0.9);
  EXPECT_THROW(make_gaussian_classes(10, 4, 5, 1), InvalidArgument);
}

}  // namespace
}  // namespace dtrain::data
