// Synthetic data generators. The sparse click-through generator works as follows:
//   1. Ground truth: id i's weight is a standard normal computed from splitmix64 hashes of
//      (seed, i) by Box–Muller, so it depends on nothing else: not on n, fields or stream.
//   2. Fields: field f owns the contiguous id range [f*vocab/fields, (f+1)*vocab/fields) (sizes
//      differ by at most one), like the per-field offsets of a shared embedding table.
//   3. Ids: within its range a field draws rank k (0-based) with probability proportional to
//      (k+1)^-kZipfExponent, by binary search in one cumulative table of the longest range (a
//      shorter range uses its prefix). With exponent 1.1 a handful of ids take a large share of
//      the draws and most ids are rare, so a batch's embedding gradient touches few rows.
//   4. Labels: logit = sum of the row's weights / sqrt(fields) - bias, where bias is that sum's
//      exact expectation under the id distribution (so labels are about balanced instead of
//      following the luck of the most frequent ids' weights); label = logit + N(0, noise^2) > 0.
//   5. Samples come from a std::mt19937_64 seeded from (seed, stream); uniforms and normals are
//      derived from its raw output here, not by the standard library's implementation-defined
//      distributions, so every platform generates the same data.
#include "dtrain/data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>

#include "dtrain/common/error.h"
#include "dtrain/common/random.h"

namespace dtrain::data {

namespace {

// Domain constants keep the hash inputs of weights, sparse samples and dense samples apart.
constexpr uint64_t kWeightDomain = 0x7765696768747321ull;
constexpr uint64_t kSparseDomain = 0x73706172736521ull;
constexpr uint64_t kDenseDomain = 0x64656e736521ull;
constexpr uint64_t kOffsetDomain = 0x6f666673657421ull;

// [0, 1) from the top 53 bits.
double unit(uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Box–Muller; 1 - unit() lies in (0, 1] so the log is finite.
double normal_from(uint64_t a, uint64_t b) {
  return std::sqrt(-2.0 * std::log(1.0 - unit(a))) * std::cos(2.0 * std::numbers::pi * unit(b));
}

// A standard normal that is a pure function of (key, index).
double hashed_normal(uint64_t key, uint64_t index) {
  uint64_t h = splitmix64(key ^ splitmix64(index));
  return normal_from(h, splitmix64(h));
}

std::mt19937_64 sample_engine(uint64_t seed, uint64_t stream, uint64_t domain) {
  return std::mt19937_64(splitmix64(splitmix64(seed ^ domain) ^ stream));
}

double draw_normal(std::mt19937_64& engine) {
  uint64_t a = engine();
  return normal_from(a, engine());
}

size_t field_begin(size_t f, size_t fields, size_t vocab) {
  return f * vocab / fields;
}

// cumulative[k] = sum over ranks j <= k of (j+1)^-exponent, for the longest field range.
std::vector<double> zipf_cumulative(size_t fields, size_t vocab) {
  size_t longest = (vocab + fields - 1) / fields;
  std::vector<double> cumulative(longest);
  double total = 0;
  for (size_t k = 0; k < longest; ++k) {
    total += std::pow(static_cast<double>(k + 1), -kZipfExponent);
    cumulative[k] = total;
  }
  return cumulative;
}

void check_sparse_shape(size_t fields, size_t vocab) {
  DT_ENFORCE(fields >= 1 && fields <= vocab, "need 1 <= fields <= vocab, got fields = ", fields,
             ", vocab = ", vocab);
}

}  // namespace

double SparseCtrTruth::logit(std::span<const int64_t> row) const {
  DT_ENFORCE(row.size() == fields, "row has ", row.size(), " ids, expected ", fields);
  double sum = 0;
  for (int64_t id : row) {
    DT_ENFORCE(id >= 0 && static_cast<size_t>(id) < weights.size(), "id ", id,
               " outside the vocabulary of ", weights.size());
    sum += weights[static_cast<size_t>(id)];
  }
  return sum / std::sqrt(static_cast<double>(fields)) - bias;
}

std::vector<float> ground_truth_weights(uint64_t seed, size_t vocab) {
  const uint64_t key = splitmix64(seed ^ kWeightDomain);
  std::vector<float> weights(vocab);
  for (size_t i = 0; i < vocab; ++i) weights[i] = static_cast<float>(hashed_normal(key, i));
  return weights;
}

SparseCtrTruth sparse_ctr_truth(size_t fields, size_t vocab, uint64_t seed) {
  check_sparse_shape(fields, vocab);
  SparseCtrTruth truth;
  truth.fields = fields;
  truth.weights = ground_truth_weights(seed, vocab);
  const std::vector<double> cumulative = zipf_cumulative(fields, vocab);
  double expected_sum = 0;
  for (size_t f = 0; f < fields; ++f) {
    const size_t begin = field_begin(f, fields, vocab);
    const size_t size = field_begin(f + 1, fields, vocab) - begin;
    double field_mean = 0;
    for (size_t k = 0; k < size; ++k) {
      field_mean += std::pow(static_cast<double>(k + 1), -kZipfExponent) * truth.weights[begin + k];
    }
    expected_sum += field_mean / cumulative[size - 1];
  }
  truth.bias = expected_sum / std::sqrt(static_cast<double>(fields));
  return truth;
}

SparseDataset make_sparse_ctr(size_t n, size_t fields, size_t vocab, uint64_t seed,
                              uint64_t stream) {
  const SparseCtrTruth truth = sparse_ctr_truth(fields, vocab, seed);
  const std::vector<double> cumulative = zipf_cumulative(fields, vocab);
  std::mt19937_64 engine = sample_engine(seed, stream, kSparseDomain);

  SparseDataset out;
  out.fields = fields;
  out.vocab = vocab;
  out.ids.resize(n * fields);
  out.labels.resize(n);
  for (size_t i = 0; i < n; ++i) {
    std::span<int64_t> row(out.ids.data() + i * fields, fields);
    for (size_t f = 0; f < fields; ++f) {
      const size_t begin = field_begin(f, fields, vocab);
      const size_t size = field_begin(f + 1, fields, vocab) - begin;
      const double target = unit(engine()) * cumulative[size - 1];
      const auto last = cumulative.begin() + static_cast<ptrdiff_t>(size);
      // upper_bound: the first rank whose cumulative weight exceeds the target.
      size_t rank = static_cast<size_t>(std::upper_bound(cumulative.begin(), last, target) -
                                        cumulative.begin());
      row[f] = static_cast<int64_t>(begin + std::min(rank, size - 1));
    }
    const double noisy = truth.logit(row) + kCtrLabelNoise * draw_normal(engine);
    out.labels[i] = noisy > 0 ? 1 : 0;
  }
  return out;
}

Dataset make_gaussian_classes(size_t n, size_t dim, int classes, uint64_t seed, uint64_t stream) {
  DT_ENFORCE(classes >= 1 && static_cast<size_t>(classes) <= dim,
             "need 1 <= classes <= dim, got classes = ", classes, ", dim = ", dim);
  const uint64_t offset_key = splitmix64(seed ^ kOffsetDomain);
  std::vector<double> offset(dim);
  for (size_t j = 0; j < dim; ++j) offset[j] = hashed_normal(offset_key, j);

  std::mt19937_64 engine = sample_engine(seed, stream, kDenseDomain);
  Dataset out;
  out.dim = dim;
  out.num_classes = classes;
  out.labels.resize(n);
  out.features.resize(n * dim);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t label = static_cast<uint64_t>(unit(engine()) * classes);
    out.labels[i] = static_cast<int64_t>(label);
    float* x = out.features.data() + i * dim;
    for (size_t j = 0; j < dim; ++j) {
      const double mean = offset[j] + (j == label ? kGaussianSeparation : 0.0);
      x[j] = static_cast<float>(mean + draw_normal(engine));
    }
  }
  return out;
}

}  // namespace dtrain::data
