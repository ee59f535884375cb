// QCS compressor (see dtrain/compress/qcs.h for the maths and the payload layout).
//
// Works as follows. compress() walks the input bucket by bucket: the bucket is copied into a
// work area of n floats (zero padded), multiplied by the bucket's random signs, transformed by
// the fast Walsh-Hadamard transform, and the k sampled rows, divided by sqrt(n), are the
// measurement v. The scale s = max|v| / Q and the per-entry dither give q = floor(v/s + u + 1/2),
// clamped to [-Q, Q] (float rounding can push v/s a hair past Q). shared=0 appends s to the scale
// array and q + Q to a base-(2Q+1) digit stream packed into 64-bit words; shared=1 writes
// s (q - u) as floats. decompress() regenerates the sender's signs, rows and dither, rebuilds
// v_hat = s (q - u), scatters it to the sampled rows of an n-vector, transforms it back (H is
// symmetric) and multiplies by the signs and alpha (n/k) / sqrt(n).
//
// The randomness comes from keyed streams (common/random.h): the rows, drawn once per call (step,
// stream) and used by all its buckets; the signs, per bucket; both keyed by worker unless shared;
// and the dither, per bucket, always keyed by worker. (Drawing k rows is the costliest part of a
// bucket's randomness, so one draw serves all buckets; with independent signs per bucket each
// bucket's estimate keeps its mean and mean squared error whatever the rows, see qcs.h.)
#include "dtrain/compress/qcs.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "dtrain/common/error.h"
#include "dtrain/common/random.h"
#include "internal.h"

namespace dtrain::compress {
namespace {

constexpr uint64_t kSketchDomain = 0x7163732d736b6574ull;  // "qcs-sket": signs
constexpr uint64_t kRowsDomain = 0x7163732d726f7773ull;    // "qcs-rows"
constexpr uint64_t kDitherDomain = 0x7163732d64697468ull;  // "qcs-dith"
constexpr uint64_t kSharedWorker = ~uint64_t{0};

size_t bucket_count(size_t n, size_t bucket) {
  return (n + bucket - 1) / bucket;
}

// Largest D with base^D <= 2^64.
size_t digits_for(uint64_t base) {
  size_t d = 0;
  unsigned __int128 p = 1;
  while (p * base <= (static_cast<unsigned __int128>(1) << 64)) {
    p *= base;
    ++d;
  }
  return d;
}

}  // namespace

void fwht(std::span<float> x) {
  const size_t n = x.size();
  DT_ENFORCE(n == 0 || std::has_single_bit(n), "fwht: size ", n, " is not a power of two");
  float* p = x.data();
  size_t h = 1;
  if (n >= 4) {
    // Stages h = 1 and h = 2 together, four elements at a time: the same sums in the same order
    // as two separate stages, without their two- and one-element inner loops.
    for (size_t i = 0; i < n; i += 4) {
      const float b0 = p[i] + p[i + 1], b1 = p[i] - p[i + 1];
      const float b2 = p[i + 2] + p[i + 3], b3 = p[i + 2] - p[i + 3];
      p[i] = b0 + b2;
      p[i + 1] = b1 + b3;
      p[i + 2] = b0 - b2;
      p[i + 3] = b1 - b3;
    }
    h = 4;
  }
  for (; h < n; h <<= 1) {
    for (size_t i = 0; i < n; i += 2 * h) {
      // The two halves never overlap, so the loop vectorises.
      float* __restrict lo = p + i;
      float* __restrict hi = p + i + h;
      for (size_t j = 0; j < h; ++j) {
        const float a = lo[j], b = hi[j];
        lo[j] = a + b;
        hi[j] = a - b;
      }
    }
  }
}

struct QcsCompressor::Sketch {
  std::vector<uint64_t> signs;  // bit j set: R_jj = -1
  std::vector<uint32_t> rows;   // k distinct rows of H, ascending (the same for every bucket)
  std::vector<uint64_t> taken;  // scratch bitmap for drawing rows
  // x R_jj, by flipping the sign bit (a branch on random signs would mispredict half the time).
  float times_sign(float x, size_t j) const {
    const auto bit = static_cast<uint32_t>((signs[j / 64] >> (j % 64)) & 1) << 31;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(x) ^ bit);
  }
};

QcsCompressor::QcsCompressor(const QcsOptions& options) : options_(options) {
  const size_t n = options.bucket;
  DT_ENFORCE(n >= 1 && n <= (size_t{1} << 30) && std::has_single_bit(n), "qcs: bucket=", n,
             " is not a power of two in [1, 2^30]");
  DT_ENFORCE(options.rows >= 1 && options.rows <= n, "qcs: rows=", options.rows,
             " is outside [1, bucket=", n, "]");
  DT_ENFORCE(options.levels >= 1 && options.levels <= 65535, "qcs: levels=", options.levels,
             " is outside [1, 65535]");
  digits_per_word_ = digits_for(2 * static_cast<uint64_t>(options.levels) + 1);
  work_.resize(n);
}

std::string QcsCompressor::name() const {
  return "qcs:bucket=" + std::to_string(options_.bucket) +
         ",rows=" + std::to_string(options_.rows) + ",levels=" + std::to_string(options_.levels) +
         ",seed=" + std::to_string(options_.seed) +
         ",recon=" + (options_.mmse ? "mmse" : "unbiased") +
         ",shared=" + (options_.shared ? "1" : "0");
}

double QcsCompressor::gamma() const {
  const double n = static_cast<double>(options_.bucket);
  const double k = static_cast<double>(options_.rows);
  const double q = options_.levels;
  const double log_ratio = options_.rows == 1 ? 1.0 : std::log(k) / (k - 1);
  return n / k - 1 + n * log_ratio / (4 * q * q);
}

size_t QcsCompressor::payload_bytes(size_t n) const {
  const size_t nb = bucket_count(n, options_.bucket);
  const size_t entries = nb * options_.rows;
  if (options_.shared) return entries * sizeof(float);
  const size_t words = (entries + digits_per_word_ - 1) / digits_per_word_;
  return nb * sizeof(float) + words * sizeof(uint64_t);
}

void QcsCompressor::draw_rows(uint64_t step, uint64_t stream, int worker, Sketch& sketch) const {
  const uint64_t who = options_.shared ? kSharedWorker : static_cast<uint64_t>(worker);
  KeyedRng rng({kRowsDomain, options_.seed, step, stream, who});
  sample_sorted(rng, options_.bucket, options_.rows, sketch.taken, sketch.rows);
}

void QcsCompressor::draw_signs(uint64_t bucket_index, uint64_t step, uint64_t stream, int worker,
                               Sketch& sketch) const {
  const uint64_t who = options_.shared ? kSharedWorker : static_cast<uint64_t>(worker);
  KeyedRng rng({kSketchDomain, options_.seed, bucket_index, step, stream, who});
  sketch.signs.resize((options_.bucket + 63) / 64);
  for (auto& word : sketch.signs) word = rng.next();
}

void QcsCompressor::apply(std::span<const float> g, const Sketch& sketch, std::span<float> work,
                          std::span<float> v) const {
  const size_t n = options_.bucket;
  for (size_t j = 0; j < g.size(); ++j) work[j] = sketch.times_sign(g[j], j);
  std::fill(work.begin() + g.size(), work.begin() + n, 0.0f);
  fwht(work);
  const float norm = 1.0f / std::sqrt(static_cast<float>(n));
  for (size_t i = 0; i < sketch.rows.size(); ++i) v[i] = work[sketch.rows[i]] * norm;
}

void QcsCompressor::apply_adjoint(std::span<const float> v, const Sketch& sketch, float factor,
                                  std::span<float> work) const {
  std::fill(work.begin(), work.end(), 0.0f);
  for (size_t i = 0; i < sketch.rows.size(); ++i) work[sketch.rows[i]] = v[i];
  fwht(work);
  for (size_t j = 0; j < work.size(); ++j) work[j] = sketch.times_sign(work[j] * factor, j);
}

void QcsCompressor::measure(std::span<const float> g, uint64_t bucket_index, uint64_t step,
                            uint64_t stream, int worker, std::span<float> v) const {
  DT_ENFORCE(g.size() == options_.bucket && v.size() == options_.rows, "qcs::measure: got ",
             g.size(), " -> ", v.size(), " entries, expected ", options_.bucket, " -> ",
             options_.rows);
  Sketch sketch;
  draw_rows(step, stream, worker, sketch);
  draw_signs(bucket_index, step, stream, worker, sketch);
  std::vector<float> work(options_.bucket);
  apply(g, sketch, work, v);
}

void QcsCompressor::adjoint(std::span<const float> v, uint64_t bucket_index, uint64_t step,
                            uint64_t stream, int worker, std::span<float> g) const {
  DT_ENFORCE(g.size() == options_.bucket && v.size() == options_.rows, "qcs::adjoint: got ",
             v.size(), " -> ", g.size(), " entries, expected ", options_.rows, " -> ",
             options_.bucket);
  Sketch sketch;
  draw_rows(step, stream, worker, sketch);
  draw_signs(bucket_index, step, stream, worker, sketch);
  apply_adjoint(v, sketch, 1.0f / std::sqrt(static_cast<float>(options_.bucket)), g);
}

Payload QcsCompressor::compress(std::span<const float> in, uint64_t step, uint64_t stream) {
  detail::check_finite(in, "qcs");
  const size_t n = options_.bucket, k = options_.rows;
  const size_t nb = bucket_count(in.size(), n);
  const float levels = static_cast<float>(options_.levels);
  const uint64_t base = 2 * static_cast<uint64_t>(options_.levels) + 1;
  Payload p;
  p.count = in.size();
  p.bytes.resize(payload_bytes(in.size()));
  std::byte* scales = p.bytes.data();
  std::byte* words = p.bytes.data() + nb * sizeof(float);
  // The current word (shared=0 only): digit t of a word is worth base^t, so each digit adds
  // digit x weight[t] (independent multiplications, not one long Horner chain).
  std::vector<uint64_t> weight(digits_per_word_);
  for (size_t t = 0; t < weight.size(); ++t) weight[t] = t == 0 ? 1 : weight[t - 1] * base;
  uint64_t word = 0;
  size_t digits_in_word = 0, words_written = 0;
  auto flush = [&] {
    std::memcpy(words + words_written++ * sizeof(uint64_t), &word, sizeof(word));
    word = 0;
    digits_in_word = 0;
  };

  Sketch sketch;
  draw_rows(step, stream, worker_, sketch);
  std::vector<float> v(k);
  for (size_t b = 0; b < nb; ++b) {
    const auto g = in.subspan(b * n, std::min(n, in.size() - b * n));
    draw_signs(b, step, stream, worker_, sketch);
    apply(g, sketch, work_, v);
    float vmax = 0;
    for (float x : v) vmax = std::max(vmax, std::fabs(x));
    const float s = vmax / levels;
    KeyedRng dither(
        {kDitherDomain, options_.seed, b, step, stream, static_cast<uint64_t>(worker_)});
    for (size_t i = 0; i < k; ++i) {
      const float u = dither.dither();
      const float q = s > 0 ? std::clamp(std::floor(v[i] / s + u + 0.5f), -levels, levels) : 0.0f;
      if (options_.shared) {
        const float v_hat = s * (q - u);
        std::memcpy(p.bytes.data() + (b * k + i) * sizeof(float), &v_hat, sizeof(float));
      } else {
        word += static_cast<uint64_t>(q + levels) * weight[digits_in_word];
        if (++digits_in_word == digits_per_word_) flush();
      }
    }
    if (!options_.shared) std::memcpy(scales + b * sizeof(float), &s, sizeof(float));
  }
  if (digits_in_word > 0) flush();
  return p;
}

void QcsCompressor::decompress(const Payload& p, std::span<float> out, bool accumulate,
                               uint64_t step, uint64_t stream, int sender) const {
  detail::check_output(p, out, "qcs");
  detail::check_payload_size(p, payload_bytes(p.count), "qcs", sender);
  const size_t n = options_.bucket, k = options_.rows;
  const size_t nb = bucket_count(out.size(), n);
  const float levels = static_cast<float>(options_.levels);
  const uint64_t base_value = 2 * static_cast<uint64_t>(options_.levels) + 1;
  const auto factor = static_cast<float>(alpha() * std::sqrt(static_cast<double>(n)) / k);
  const std::byte* words = p.bytes.data() + nb * sizeof(float);
  uint64_t word = 0;
  size_t digits_left = 0, words_read = 0;

  // The digit base as a compile-time constant for the common Q = 1, 2, 3 (the compiler then
  // replaces the 64-bit division per entry by a multiplication), a run-time value otherwise.
  auto decode = [&](auto base) {
    Sketch sketch;
    draw_rows(step, stream, sender, sketch);
    std::vector<float> v_hat(k), work(n);
    for (size_t b = 0; b < nb; ++b) {
      draw_signs(b, step, stream, sender, sketch);
      if (options_.shared) {
        std::memcpy(v_hat.data(), p.bytes.data() + b * k * sizeof(float), k * sizeof(float));
      } else {
        float s;
        std::memcpy(&s, p.bytes.data() + b * sizeof(float), sizeof(float));
        DT_ENFORCE_AS(ProtocolError, std::isfinite(s) && s >= 0, "qcs: payload from rank ", sender,
                      " has scale ", s, " in bucket ", b);
        KeyedRng dither(
            {kDitherDomain, options_.seed, b, step, stream, static_cast<uint64_t>(sender)});
        for (size_t i = 0; i < k; ++i) {
          if (digits_left == 0) {
            // What is left of a consumed word must be 0, else the word held more than D digits.
            DT_ENFORCE_AS(ProtocolError, word == 0, "qcs: payload from rank ", sender,
                          " has an invalid digit word before bucket ", b);
            std::memcpy(&word, words + words_read++ * sizeof(uint64_t), sizeof(word));
            digits_left = digits_per_word_;
          }
          const uint64_t digit = word % base;
          word /= base;
          --digits_left;
          v_hat[i] = s * (static_cast<float>(digit) - levels - dither.dither());
        }
      }
      apply_adjoint(v_hat, sketch, factor, work);
      float* dst = out.data() + b * n;
      const size_t valid = std::min(n, out.size() - b * n);
      for (size_t j = 0; j < valid; ++j) dst[j] = accumulate ? dst[j] + work[j] : work[j];
    }
  };
  switch (base_value) {
    case 3:
      decode(std::integral_constant<uint64_t, 3>{});
      break;
    case 5:
      decode(std::integral_constant<uint64_t, 5>{});
      break;
    case 7:
      decode(std::integral_constant<uint64_t, 7>{});
      break;
    default:
      decode(base_value);
  }
  DT_ENFORCE_AS(ProtocolError, word == 0, "qcs: payload from rank ", sender,
                " has an invalid last digit word");
}

namespace detail {

std::unique_ptr<Compressor> make_qcs(const Params& params) {
  // Ranges wide enough to parse; the constructor checks bucket (a power of two), rows (at most
  // bucket) and levels with messages naming the key.
  QcsOptions o;
  o.bucket = params.get_size("bucket", o.bucket, 1, size_t{1} << 30);
  o.rows = params.get_size("rows", o.rows, 1, size_t{1} << 30);
  o.levels = static_cast<int>(params.get_size("levels", static_cast<size_t>(o.levels), 1, 65535));
  o.seed = params.get_size("seed", o.seed, 0, std::numeric_limits<uint64_t>::max());
  const std::string& recon = params.get_string("recon", o.mmse ? "mmse" : "unbiased");
  DT_ENFORCE(recon == "unbiased" || recon == "mmse", "qcs: recon=", recon,
             " is not one of unbiased, mmse");
  o.mmse = recon == "mmse";
  o.shared = params.get_size("shared", o.shared ? 1 : 0, 0, 1) == 1;
  return std::make_unique<QcsCompressor>(o);
}

}  // namespace detail
}  // namespace dtrain::compress
