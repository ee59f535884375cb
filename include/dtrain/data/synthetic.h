// Synthetic datasets for tests and benchmarks: a click-through-style sparse one for embedding
// models and a dense Gaussian one for quick classifier checks. Both split the seed's role the same
// way: `seed` fixes the problem (ground truth), `stream` the samples, so a train set (stream 0) and
// a test set (stream 1) made with the same seed are two independent samples of one problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "dtrain/data/dataset.h"

namespace dtrain::data {

// n examples of `fields` categorical ids each, and a 0/1 click label.
struct SparseDataset {
  std::vector<int64_t> ids;     // size() * fields, row-major (see make_sparse_ctr for ranges)
  std::vector<int64_t> labels;  // 0 or 1
  size_t fields = 0;
  size_t vocab = 0;

  size_t size() const { return labels.size(); }
};

// Id popularity within a field: the k-th most frequent id (k = 1, 2, ...) has weight k^-exponent.
constexpr double kZipfExponent = 1.1;
// Standard deviation of the Gaussian noise added to the logit before thresholding.
constexpr double kCtrLabelNoise = 0.1;

// The hidden model behind make_sparse_ctr.
struct SparseCtrTruth {
  std::vector<float> weights;  // one per id, = ground_truth_weights(seed, vocab)
  double bias = 0;             // expected weight sum over the id distribution, / sqrt(fields)
  size_t fields = 0;

  // sum of the row's id weights / sqrt(fields) - bias; the label is 1 when this plus noise is > 0.
  double logit(std::span<const int64_t> row) const;
};

// Id i's weight, drawn from N(0, 1) as a function of (seed, i) alone.
std::vector<float> ground_truth_weights(uint64_t seed, size_t vocab);
SparseCtrTruth sparse_ctr_truth(size_t fields, size_t vocab, uint64_t seed);

// n samples of the problem sparse_ctr_truth(fields, vocab, seed) from sample stream `stream`.
// Field f owns the ids [f * vocab / fields, (f + 1) * vocab / fields) and draws from them with a
// Zipf law (kZipfExponent), so a batch touches few embedding rows. Requires 1 <= fields <= vocab.
SparseDataset make_sparse_ctr(size_t n, size_t fields, size_t vocab, uint64_t seed,
                              uint64_t stream = 0);

// n examples in `classes` Gaussian clusters: class c is centred at kGaussianSeparation * e_c plus
// an offset shared by all classes (N(0, 1) per dim, fixed by seed), with unit variance per dim;
// labels are uniform. Means are kGaussianSeparation * sqrt(2) apart, so a linear model reaches
// about 95%+. Requires 1 <= classes <= dim.
constexpr double kGaussianSeparation = 4.0;
Dataset make_gaussian_classes(size_t n, size_t dim, int classes, uint64_t seed,
                              uint64_t stream = 0);

}  // namespace dtrain::data
