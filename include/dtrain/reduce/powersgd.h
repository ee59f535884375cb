// `--reduce powersgd[:rank=R,start=S,feedback=1,warm=1,seed=0,min_compress=1]`: PowerSGD (Vogels,
// Karimireddy, Jaggi, NeurIPS 2019) with PyTorch's DDP-hook semantics, as a gradient reducer.
//
// Each weight matrix M of a bucket (a tensor of >= 2 dimensions: n = shape[0] rows, m = the
// product of the rest, so a convolution kernel out x in x kh x kw is an out x (in kh kw) matrix)
// is replaced by the rank-R approximation P Q^T from one warm-started power iteration; P and Q
// are summed with our allreduce. A matrix is compressed only when n m > min_compress R (n + m)
// (the spec's rule with min_compress = 1; PyTorch's default min_compression_rate is 2); vectors,
// scalars and smaller matrices are averaged exactly, batched into one buffer per bucket. Where
// the layout carries no shapes (Layout::flat, or any tensor whose shape is empty) nothing is
// compressed: every such bucket is averaged exactly, as `dense` would.
//
// The first `start` steps average everything exactly. They are counted from the first step this
// reducer sees (the step number of its first begin_step), not from step 0: a reducer installed
// at step 5000 still runs `start` dense steps. That first step number travels in save_state, so
// a resumed run compresses from the same step as an uninterrupted one. A bucket layout change
// drops the per-bucket state (Q, residuals) but not the step count: compression resumes at once
// with a fresh random Q.
//
// PowerSGD leaves momentum to the optimizer (applies_momentum() is false): the approximation is
// already the averaged gradient the optimizer expects, which is why SGD's usual hyperparameters
// carry over (specs/powersgd.md).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/collective/types.h"
#include "dtrain/reduce/reducer.h"

namespace dtrain::reduce {

struct PowerSgdOptions {
  size_t rank = 4;            // R: columns of P and Q, >= 1
  uint64_t start = 10;        // dense steps before compression starts (see above)
  bool feedback = true;       // error feedback: e = M - P Q^T carried to the next step
  bool warm = true;           // Q of the previous step starts the next power iteration
  uint64_t seed = 0;          // of the shared random Q (the same on every rank)
  double min_compress = 1.0;  // compress when n m > min_compress R (n + m); >= 1
};

// Parses what follows "powersgd:" with the shared parser (reduce/params.h): "" (defaults), "4"
// (the rank) or key=value pairs. Throws InvalidArgument naming the parameter and its range.
PowerSgdOptions parse_powersgd_options(const std::string& params);

namespace powersgd {

// Whether an n x m matrix is compressed at rank r: n m > min_compress r (n + m).
bool compresses(size_t n, size_t m, size_t rank, double min_compress);

// Modified Gram-Schmidt, in double, on `count` contiguous columns of `length` floats each
// (column k at columns[k * length]): afterwards the columns are orthonormal, in order. A column
// that is zero, not finite, or whose norm falls to at most kDegenerate times its norm before the
// projections (numerically dependent on the columns before it) is set to zero and flagged in
// `degenerate` (resized to count). Returns the number of such columns. `scratch` is reused.
constexpr double kDegenerate = 1e-6;
size_t orthogonalize(float* columns, size_t length, size_t count, std::vector<double>& scratch,
                     std::vector<uint8_t>& degenerate);

// The shared random start of Q: column `column` (m floats) of the Q of tensor `tensor` (its index
// in bucket `bucket`), drawn at step `step`: out[j] = KeyedRng({seed, bucket, tensor, step,
// column}).dither() for j = 0, 1, ... (common/random.h), uniform on (-1/2, 1/2). Drawn at the
// first compressed step (warm=1), at every step (warm=0), and again for a column of a warm Q
// that has become zero (a matrix that was all zero), so that it can recover.
void draw_column(uint64_t seed, size_t bucket, size_t tensor, uint64_t step, size_t column,
                 std::span<float> out);

}  // namespace powersgd

// The powersgd reducer; how a step runs is described in powersgd.cc. Per bucket it keeps the Q
// factors of its compressed matrices and, with feedback, their residuals; both are allocated at
// the bucket's first compressed step. Bytes count the payload of our allreduce per rank, as
// DenseReducer counts it: 2 (N - 1) / N of the floats of each call, 4 bytes each.
class PowerSgdReducer : public GradientReducer {
 public:
  // A compressed matrix of a bucket. P and Q are stored column by column: P as R columns of n
  // floats (in the P buffer of the step), Q as R columns of m floats (in Bucket::q).
  struct Matrix {
    size_t tensor = 0;  // index in the bucket's layout
    size_t offset = 0;  // first element in the bucket
    size_t rows = 0, cols = 0;
    size_t p_at = 0;  // its P in the P buffer
    size_t q_at = 0;  // its Q in Bucket::q
    size_t e_at = 0;  // its residual in Bucket::residual (rows x cols, row-major like M)
  };
  struct Bucket {
    std::vector<Matrix> matrices;
    // The uncompressed tensors as (offset, count) runs of the bucket, adjacent tensors merged.
    std::vector<std::pair<size_t, size_t>> dense_runs;
    size_t p_size = 0;            // sum of R n over the matrices
    size_t q_size = 0;            // sum of R m
    size_t e_size = 0;            // sum of n m
    size_t dense_size = 0;        // elements of the uncompressed tensors
    std::vector<float> q;         // q_size floats once compressed, else empty
    std::vector<float> residual;  // e_size floats once compressed with feedback, else empty
  };

  PowerSgdReducer(comm::Group& group, PowerSgdOptions options);
  void begin_step(uint64_t step) override;
  void reduce(size_t bucket, std::span<float> grad) override;
  void end_step() override;
  std::string name() const override { return "powersgd"; }
  // Magic, version, rank, the first step seen, then per bucket and matrix: its tensor index and
  // shape, Q and residual (each empty before the bucket's first compressed step). load_state
  // needs the layout the state was saved under (restore the layout first) and throws
  // InvalidArgument naming the bucket and tensor that do not fit. An empty state starts afresh
  // (a checkpoint written by a reducer without state).
  std::vector<std::byte> save_state() const override;
  void load_state(std::span<const std::byte> state) override;
  // Of the latest finished step: "payload_bytes" (bytes this rank sent), "compress_ratio"
  // (elements of the buckets / elements allreduced: dense bytes over bytes moved) and
  // "powersgd_dense" (1 in the dense phase, else 0).
  std::vector<std::pair<std::string, double>> step_metrics() const override;

  const PowerSgdOptions& options() const { return options_; }
  size_t num_buckets() const { return buckets_.size(); }
  const Bucket& bucket(size_t i) const { return buckets_.at(i); }
  // The compressed matrix holding tensor `tensor` of bucket `bucket`, or nullptr.
  const Matrix* matrix(size_t bucket, size_t tensor) const;
  // Whether step `step` averages densely (one of the first `start` steps seen).
  bool dense_phase(uint64_t step) const;

 protected:
  void on_layout(const Layout& previous) override;

 private:
  void allreduce(std::span<float> data, collective::ReduceOp op);
  void compress(size_t index, Bucket& b, std::span<float> grad);
  void start_q(size_t index, Bucket& b, bool fresh);

  comm::Group& group_;
  PowerSgdOptions options_;
  std::vector<Bucket> buckets_;
  std::optional<uint64_t> first_step_;  // step number of the first begin_step seen
  bool dense_ = true;                   // the current step averages densely
  // Allreduce calls already agreed on (count, op) under group generation verified_generation_.
  std::set<std::pair<size_t, collective::ReduceOp>> verified_;
  uint64_t verified_generation_ = 0;
  // Scratch reused across calls.
  std::vector<float> buffer_;  // P of every matrix of the bucket, then the uncompressed batch
  std::vector<float> row_;     // one row of P Q^T
  std::vector<double> gs_;
  std::vector<uint8_t> degenerate_;
  struct StepFigures {
    uint64_t elements = 0, allreduced = 0, bytes_sent = 0;
    bool dense = true;
    bool any = false;
  } figures_, last_;
};

std::unique_ptr<GradientReducer> make_powersgd_reducer(const std::string& params,
                                                       comm::Group& group);

}  // namespace dtrain::reduce
