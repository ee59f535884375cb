// The PowerSGD reducer: per bucket and step, one warm-started power iteration per weight matrix.
//
// Works as follows, on every rank of N, for bucket b in a compressed step (powersgd.h says which
// tensors are matrices and which steps are dense):
//  1. Start Q (R columns of m floats per matrix): last step's averaged Q (warm=1), or a draw from
//     the shared seed (the first compressed step; every step with warm=0). It is orthogonalised
//     first, as PyTorch's hook does: the span, hence the result, is the same, but P = M Q keeps
//     the scale of M. A column that has become zero (M was zero) is drawn afresh.
//  2. Pass 1 over each matrix, row by row: M = grad + e written into grad (error feedback; e
//     itself is not touched until pass 3), and while the row is in cache P[i][k] = row . Q_k.
//  3. One allreduce (SUM) of one buffer: every matrix's P, then the uncompressed tensors copied
//     in, whose sum is divided by N on the way back out. One call, not PyTorch's two.
//  4. If a P is not finite (NaN or Inf in some rank's gradient: every rank sees the same sum),
//     the bucket's matrices become NaN on every rank, so the engine's non-finite check agrees
//     everywhere; e and Q (now orthogonalised: the same span) are kept, so a skipped step
//     (--on-nonfinite skip) leaves the state clean.
//  5. Orthogonalise each P (modified Gram-Schmidt in double; every rank holds the same P, so
//     every rank gets the same result). A numerically dependent or zero column becomes zero.
//  6. Pass 2: Q_k[j] = sum_i M[i][j] P[i][k], row by row (R axpys of a row into Q, in cache).
//  7. One allreduce (AVG) of every matrix's Q (Bucket::q): the sum over ranks divided by N.
//  8. Pass 3: row i of P Q^T into a scratch row; e = M - P Q^T (local M, averaged Q: PyTorch's
//     definition) and grad = P Q^T. Every rank has the same P and Q: bit-identical gradients.
// Memory passes per matrix and step: three (with feedback: read grad and e, write grad; read
// grad; read grad, write e and grad), plus copying the uncompressed tensors in and out when the
// bucket also holds matrices. Collectives per bucket: two in a compressed step when it holds a
// matrix, else one in-place allreduce (AVG) of the whole bucket, as in every dense step.
// Uncompressed tensors keep no residual: they are averaged exactly.
#include "dtrain/reduce/powersgd.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/common/random.h"
#include "dtrain/reduce/params.h"

namespace dtrain::reduce {
namespace {

using collective::ReduceOp;

constexpr uint32_t kStateMagic = 0x44475350;  // "PSGD"
constexpr uint32_t kStateVersion = 1;

// a . b over n floats. Eight partial sums, so the compiler can vectorise without reordering a
// single running sum; the order is fixed, so every rank computes the same value.
float dot(const float* a, const float* b, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (size_t l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
  }
  for (size_t l = 0; j < n; ++j, ++l) acc[l] += a[j] * b[j];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

PowerSgdOptions parse_powersgd_options(const std::string& params) {
  const Params p = parse_params("powersgd", params,
                                {"rank", "start", "feedback", "warm", "seed", "min_compress"});
  constexpr size_t kMax = std::numeric_limits<size_t>::max();
  PowerSgdOptions o;
  o.rank = p.get_size("rank", o.rank, 1, 65536);
  o.start = p.get_size("start", o.start, 0, kMax);
  o.feedback = p.get_size("feedback", 1, 0, 1) == 1;
  o.warm = p.get_size("warm", 1, 0, 1) == 1;
  o.seed = p.get_size("seed", 0, 0, kMax);
  o.min_compress = p.get_double("min_compress", o.min_compress, 1.0, 1e9);
  return o;
}

namespace powersgd {

bool compresses(size_t n, size_t m, size_t rank, double min_compress) {
  const double rows = static_cast<double>(n), cols = static_cast<double>(m);
  return rows * cols > min_compress * static_cast<double>(rank) * (rows + cols);
}

size_t orthogonalize(float* columns, size_t length, size_t count, std::vector<double>& scratch,
                     std::vector<uint8_t>& degenerate) {
  scratch.resize(length * count);
  degenerate.assign(count, 0);
  size_t zeroed = 0;
  for (size_t k = 0; k < count; ++k) {
    double* v = scratch.data() + k * length;
    const float* in = columns + k * length;
    double before = 0;
    for (size_t i = 0; i < length; ++i) {
      v[i] = in[i];
      before += v[i] * v[i];
    }
    for (size_t j = 0; j < k; ++j) {  // modified: each projection from the updated column
      if (degenerate[j]) continue;
      const double* u = scratch.data() + j * length;
      double d = 0;
      for (size_t i = 0; i < length; ++i) d += u[i] * v[i];
      for (size_t i = 0; i < length; ++i) v[i] -= d * u[i];
    }
    double after = 0;
    for (size_t i = 0; i < length; ++i) after += v[i] * v[i];
    before = std::sqrt(before);
    after = std::sqrt(after);
    // Squares of floats neither overflow nor vanish in double: only NaN/Inf input is not finite.
    if (!(std::isfinite(before) && before > 0 && after > kDegenerate * before)) {
      std::fill(v, v + length, 0.0);
      degenerate[k] = 1;
      ++zeroed;
      continue;
    }
    for (size_t i = 0; i < length; ++i) v[i] /= after;
  }
  for (size_t i = 0; i < length * count; ++i) columns[i] = static_cast<float>(scratch[i]);
  return zeroed;
}

void draw_column(uint64_t seed, size_t bucket, size_t tensor, uint64_t step, size_t column,
                 std::span<float> out) {
  KeyedRng rng({seed, bucket, tensor, step, column});
  for (float& x : out) x = rng.dither();
}

}  // namespace powersgd

PowerSgdReducer::PowerSgdReducer(comm::Group& group, PowerSgdOptions options)
    : group_(group), options_(options) {
  DT_ENFORCE(options_.rank >= 1, "powersgd: rank=", options_.rank, " must be at least 1");
  DT_ENFORCE(std::isfinite(options_.min_compress) && options_.min_compress >= 1,
             "powersgd: min_compress=", options_.min_compress, " must be at least 1");
}

void PowerSgdReducer::on_layout(const Layout& /*previous*/) {
  // Q and residuals belong to matrices of the old layout: start afresh (the step count stays).
  buckets_.clear();
  verified_.clear();
  const size_t r = options_.rank;
  std::vector<Bucket> buckets;
  for (size_t bi = 0; bi < layout().buckets.size(); ++bi) {
    const BucketLayout& bl = layout().buckets[bi];
    Bucket b;
    for (size_t t = 0; t < bl.tensors.size(); ++t) {
      const TensorSlot& slot = bl.tensors[t];
      size_t rows = 0, cols = 0;
      if (!slot.shape.empty()) {
        uint64_t numel = 1;
        for (int64_t d : slot.shape) {
          DT_ENFORCE(d >= 0, "powersgd: tensor '", slot.name, "' of bucket ", bi, " has shape ",
                     shape_string(slot.shape), " with a negative dimension");
          numel *= static_cast<uint64_t>(d);
        }
        DT_ENFORCE(numel == slot.numel, "powersgd: tensor '", slot.name, "' of bucket ", bi,
                   " has shape ", shape_string(slot.shape), " (", numel, " elements) but ",
                   slot.numel, " elements in the layout");
        if (slot.shape.size() >= 2 && slot.shape[0] > 0) {
          rows = static_cast<size_t>(slot.shape[0]);
          cols = slot.numel / rows;
        }
      }
      if (rows > 0 && powersgd::compresses(rows, cols, r, options_.min_compress)) {
        b.matrices.push_back({t, slot.offset, rows, cols, b.p_size, b.q_size, b.e_size});
        b.p_size += r * rows;
        b.q_size += r * cols;
        b.e_size += rows * cols;
      } else if (slot.numel > 0) {
        auto& runs = b.dense_runs;
        if (!runs.empty() && runs.back().first + runs.back().second == slot.offset) {
          runs.back().second += slot.numel;
        } else {
          runs.emplace_back(slot.offset, slot.numel);
        }
        b.dense_size += slot.numel;
      }
    }
    buckets.push_back(std::move(b));
  }
  buckets_ = std::move(buckets);
}

bool PowerSgdReducer::dense_phase(uint64_t step) const {
  if (!first_step_) return options_.start > 0;  // `step` would be the first one seen
  return step < *first_step_ || step - *first_step_ < options_.start;
}

const PowerSgdReducer::Matrix* PowerSgdReducer::matrix(size_t bucket, size_t tensor) const {
  for (const Matrix& mt : buckets_.at(bucket).matrices) {
    if (mt.tensor == tensor) return &mt;
  }
  return nullptr;
}

void PowerSgdReducer::begin_step(uint64_t step) {
  GradientReducer::begin_step(step);
  if (!first_step_) first_step_ = step;
  dense_ = dense_phase(step);
  figures_ = {};
  figures_.dense = dense_;
  figures_.any = true;
}

void PowerSgdReducer::end_step() {
  GradientReducer::end_step();
  last_ = figures_;
}

void PowerSgdReducer::allreduce(std::span<float> data, ReduceOp op) {
  collective::AllreduceOptions o(group_);
  o.output = data;
  o.op = op;
  // A bucket's calls keep their sizes step after step: agree on each (count, op) once.
  const std::pair<size_t, ReduceOp> call(data.size(), op);
  o.verify = verified_.count(call) == 0;
  collective::allreduce(o);
  verified_.insert(call);
  const int n = group_.size();
  const uint64_t moved = n > 1 ? data.size_bytes() * 2 * (n - 1) / n : 0;
  bytes_sent_ += moved;
  bytes_received_ += moved;
  figures_.allreduced += data.size();
  figures_.bytes_sent += moved;
}

void PowerSgdReducer::reduce(size_t index, std::span<float> grad) {
  check_bucket(index, grad.size());
  DT_ENFORCE(in_step(), "powersgd: bucket ", index,
             " reduced outside a step (call begin_step first: the step decides dense or not)");
  DT_ENFORCE(index < buckets_.size(), "powersgd: bucket ", index,
             " has no plan (the layout was rejected)");
  if (group_.generation() != verified_generation_) {  // reconnect(): agree on the calls again
    verified_.clear();
    verified_generation_ = group_.generation();
  }
  Bucket& b = buckets_[index];
  figures_.elements += grad.size();
  if (grad.empty()) return;  // every rank has the same bucket sizes, so none communicates
  if (dense_ || b.matrices.empty()) {
    allreduce(grad, ReduceOp::kAvg);
    return;
  }
  compress(index, b, grad);
}

void PowerSgdReducer::start_q(size_t index, Bucket& b, bool fresh) {
  const size_t r = options_.rank;
  const uint64_t step = this->step();
  auto draw = [&](const Matrix& mt, size_t k) {
    powersgd::draw_column(options_.seed, index, mt.tensor, step, k,
                          {b.q.data() + mt.q_at + k * mt.cols, mt.cols});
  };
  for (const Matrix& mt : b.matrices) {
    float* q = b.q.data() + mt.q_at;
    if (fresh) {
      for (size_t k = 0; k < r; ++k) draw(mt, k);
    }
    if (powersgd::orthogonalize(q, mt.cols, r, gs_, degenerate_) == 0) continue;
    // A zero column of a warm Q (P had one: M was zero or rank-deficient) would stay zero for
    // good; a fresh draw lets the iteration find a direction M has gained since.
    for (size_t k = 0; k < r; ++k) {
      if (degenerate_[k]) draw(mt, k);
    }
    powersgd::orthogonalize(q, mt.cols, r, gs_, degenerate_);
  }
}

void PowerSgdReducer::compress(size_t index, Bucket& b, std::span<float> grad) {
  const size_t r = options_.rank;
  const bool fresh = b.q.empty() || !options_.warm;
  if (b.q.empty()) {
    b.q.assign(b.q_size, 0.0f);
    if (options_.feedback) b.residual.assign(b.e_size, 0.0f);
  }
  start_q(index, b, fresh);

  // Pass 1: M = grad + e, into grad; P = M Q while the row is in cache.
  buffer_.resize(b.p_size + b.dense_size);
  float* const p_all = buffer_.data();
  size_t widest = 0;
  for (const Matrix& mt : b.matrices) {
    const size_t n = mt.rows, m = mt.cols;
    widest = std::max(widest, m);
    float* const mat = grad.data() + mt.offset;
    const float* const e = b.residual.empty() ? nullptr : b.residual.data() + mt.e_at;
    const float* const q = b.q.data() + mt.q_at;
    float* const p = p_all + mt.p_at;
    for (size_t i = 0; i < n; ++i) {
      float* const row = mat + i * m;
      if (e != nullptr) {
        const float* const e_row = e + i * m;
        for (size_t j = 0; j < m; ++j) row[j] += e_row[j];
      }
      for (size_t k = 0; k < r; ++k) p[k * n + i] = dot(row, q + k * m, m);
    }
  }
  float* batch = p_all + b.p_size;
  for (const auto& [offset, count] : b.dense_runs) {
    std::copy_n(grad.data() + offset, count, batch);
    batch += count;
  }
  allreduce(buffer_, ReduceOp::kSum);
  batch = p_all + b.p_size;
  const auto ranks = static_cast<float>(group_.size());
  for (const auto& [offset, count] : b.dense_runs) {
    float* const out = grad.data() + offset;
    for (size_t i = 0; i < count; ++i) out[i] = batch[i] / ranks;  // as kAvg: a true division
    batch += count;
  }

  bool finite = true;
  for (size_t i = 0; i < b.p_size && finite; ++i) finite = std::isfinite(p_all[i]);
  if (!finite) {
    for (const Matrix& mt : b.matrices) {
      std::fill_n(grad.data() + mt.offset, mt.rows * mt.cols,
                  std::numeric_limits<float>::quiet_NaN());
    }
    return;
  }
  for (const Matrix& mt : b.matrices) {
    powersgd::orthogonalize(p_all + mt.p_at, mt.rows, r, gs_, degenerate_);
  }

  // Pass 2: Q = M^T P, accumulated row by row.
  std::fill(b.q.begin(), b.q.end(), 0.0f);
  for (const Matrix& mt : b.matrices) {
    const size_t n = mt.rows, m = mt.cols;
    const float* const mat = grad.data() + mt.offset;
    const float* const p = p_all + mt.p_at;
    float* const q = b.q.data() + mt.q_at;
    for (size_t i = 0; i < n; ++i) {
      const float* const row = mat + i * m;
      for (size_t k = 0; k < r; ++k) {
        const float pk = p[k * n + i];
        float* const qk = q + k * m;
        for (size_t j = 0; j < m; ++j) qk[j] += row[j] * pk;
      }
    }
  }
  allreduce(b.q, ReduceOp::kAvg);

  // Pass 3: grad = P Q^T; e = M - P Q^T.
  row_.resize(widest);
  for (const Matrix& mt : b.matrices) {
    const size_t n = mt.rows, m = mt.cols;
    float* const mat = grad.data() + mt.offset;
    float* const e = b.residual.empty() ? nullptr : b.residual.data() + mt.e_at;
    const float* const p = p_all + mt.p_at;
    const float* const q = b.q.data() + mt.q_at;
    for (size_t i = 0; i < n; ++i) {
      float* const row = mat + i * m;
      float* const approx = e != nullptr ? row_.data() : row;
      const float p0 = p[i];
      for (size_t j = 0; j < m; ++j) approx[j] = p0 * q[j];
      for (size_t k = 1; k < r; ++k) {
        const float pk = p[k * n + i];
        const float* const qk = q + k * m;
        for (size_t j = 0; j < m; ++j) approx[j] += pk * qk[j];
      }
      if (e != nullptr) {
        float* const e_row = e + i * m;
        for (size_t j = 0; j < m; ++j) {
          e_row[j] = row[j] - approx[j];
          row[j] = approx[j];
        }
      }
    }
  }
}

std::vector<std::pair<std::string, double>> PowerSgdReducer::step_metrics() const {
  if (!last_.any) return {};
  const double ratio = last_.allreduced > 0 ? static_cast<double>(last_.elements) /
                                                  static_cast<double>(last_.allreduced)
                                            : 1.0;
  return {{"payload_bytes", static_cast<double>(last_.bytes_sent)},
          {"compress_ratio", ratio},
          {"powersgd_dense", last_.dense ? 1.0 : 0.0}};
}

std::vector<std::byte> PowerSgdReducer::save_state() const {
  const size_t r = options_.rank;
  ByteWriter w;
  w.put(kStateMagic).put(kStateVersion).put(static_cast<uint64_t>(r));
  w.put(static_cast<uint8_t>(first_step_.has_value()))
      .put(static_cast<uint64_t>(first_step_.value_or(0)));
  w.put(static_cast<uint64_t>(buckets_.size()));
  for (const Bucket& b : buckets_) {
    w.put(static_cast<uint64_t>(b.matrices.size()));
    for (const Matrix& mt : b.matrices) {
      w.put(static_cast<uint64_t>(mt.tensor))
          .put(static_cast<uint64_t>(mt.rows))
          .put(static_cast<uint64_t>(mt.cols));
      const std::span<const float> q =
          b.q.empty() ? std::span<const float>() : std::span(b.q).subspan(mt.q_at, r * mt.cols);
      const std::span<const float> e =
          b.residual.empty() ? std::span<const float>()
                             : std::span(b.residual).subspan(mt.e_at, mt.rows * mt.cols);
      w.put(static_cast<uint64_t>(q.size())).put_array(q);
      w.put(static_cast<uint64_t>(e.size())).put_array(e);
    }
  }
  return w.take();
}

void PowerSgdReducer::load_state(std::span<const std::byte> state) {
  DT_ENFORCE(!in_step(), "powersgd: load_state inside step ", step());
  if (state.empty()) {  // no state recorded (another reducer wrote the checkpoint): afresh
    for (Bucket& b : buckets_) {
      b.q.clear();
      b.residual.clear();
    }
    first_step_.reset();
    figures_ = last_ = {};
    return;
  }
  const size_t r = options_.rank;
  ByteReader in(state, "powersgd state");
  const auto magic = in.get<uint32_t>("magic");
  const auto version = in.get<uint32_t>("version");
  DT_ENFORCE(magic == kStateMagic && version == kStateVersion,
             "powersgd state: not a powersgd state of version ", kStateVersion,
             " (was it written with another --reduce?)");
  const auto rank = in.get<uint64_t>("rank");
  DT_ENFORCE(rank == r, "powersgd state: written with rank=", rank, ", this reducer has rank=", r);
  const bool has_first = in.get<uint8_t>("first step flag") != 0;
  const auto first = in.get<uint64_t>("first step");
  const auto count = in.get<uint64_t>("bucket count");
  DT_ENFORCE(count == buckets_.size(), "powersgd state: holds ", count, " buckets, the layout has ",
             buckets_.size(), " (restore the layout the state was saved under first)");
  std::vector<std::vector<float>> qs(count), es(count);
  for (size_t bi = 0; bi < count; ++bi) {
    const Bucket& b = buckets_[bi];
    const auto& tensors = layout().buckets[bi].tensors;
    const auto matrices = in.get<uint64_t>("matrix count");
    DT_ENFORCE(matrices == b.matrices.size(), "powersgd state: bucket ", bi, " holds ", matrices,
               " compressed matrices, the layout's has ", b.matrices.size(),
               " (another layout, rank or min_compress?)");
    bool has_q = false;
    for (size_t j = 0; j < b.matrices.size(); ++j) {
      const Matrix& mt = b.matrices[j];
      const std::string& name = tensors[mt.tensor].name;
      const auto tensor = in.get<uint64_t>("tensor index");
      const auto rows = in.get<uint64_t>("rows");
      const auto cols = in.get<uint64_t>("columns");
      DT_ENFORCE(tensor == mt.tensor && rows == mt.rows && cols == mt.cols,
                 "powersgd state: bucket ", bi, " tensor '", name, "': saved as tensor ", tensor,
                 " of ", rows, " x ", cols, ", the layout has tensor ", mt.tensor, " of ", mt.rows,
                 " x ", mt.cols);
      const auto q = in.get_vector<float>("Q");
      if (j == 0) has_q = !q.empty();
      const size_t want_q = has_q ? r * mt.cols : 0;
      DT_ENFORCE(q.size() == want_q, "powersgd state: bucket ", bi, " tensor '", name, "': Q of ",
                 q.size(), " floats, expected ", want_q, " (rank ", r, " x ", mt.cols,
                 " columns, or none before the first compressed step)");
      const auto e = in.get_vector<float>("residual");
      const size_t want_e = has_q && options_.feedback ? mt.rows * mt.cols : 0;
      DT_ENFORCE(e.size() == want_e, "powersgd state: bucket ", bi, " tensor '", name,
                 "': residual of ", e.size(), " floats, expected ", want_e, " (", mt.rows, " x ",
                 mt.cols, " with error feedback once compressed; this reducer has feedback=",
                 options_.feedback ? 1 : 0, ")");
      qs[bi].insert(qs[bi].end(), q.begin(), q.end());
      es[bi].insert(es[bi].end(), e.begin(), e.end());
    }
  }
  in.finish();
  for (size_t bi = 0; bi < count; ++bi) {
    buckets_[bi].q = std::move(qs[bi]);
    buckets_[bi].residual = std::move(es[bi]);
  }
  first_step_ = has_first ? std::optional<uint64_t>(first) : std::nullopt;
  figures_ = last_ = {};
}

std::unique_ptr<GradientReducer> make_powersgd_reducer(const std::string& params,
                                                       comm::Group& group) {
  return std::make_unique<PowerSgdReducer>(group, parse_powersgd_options(params));
}

}  // namespace dtrain::reduce
