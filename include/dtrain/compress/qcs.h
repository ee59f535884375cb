// QCS: quantized compressive sampling of gradients (Abdi & Fekri, AAAI'20; ../shared/specs/qcs.md).
//
// Per bucket of n = `bucket` entries (a power of two; the last bucket is padded with zeros, and
// the padding is never written back), with k = `rows` and Q = `levels`:
//   measurement  v = T g,  T = (1/sqrt(n)) H_k R: R a diagonal of random signs, H_k k distinct
//                random rows of the n x n (Sylvester, +-1) Hadamard matrix, computed with a fast
//                Walsh-Hadamard transform in O(n log n). T has orthonormal rows (T T^T = I) and
//                E[T^T T] = (k/n) I. (The spec writes 1/sqrt(k); with +-1 entries that would give
//                T T^T = (n/k) I, contradicting its own T T^T = I, so we normalise by 1/sqrt(n)
//                and move the factor n/k into the reconstruction, where alpha keeps the spec's
//                meaning: alpha = 1 is unbiased.)
//                R is drawn per bucket; H_k's rows once per call (step, stream) for all of its
//                buckets, the costly part of the randomness. Given any row set, the random signs
//                alone give E_R[T^T T] = (k/n) I and E_R||T^T T g||^2 = (k/n) ||g||^2 (H's entries
//                for rows S and columns i, j depend only on i xor j), so each bucket keeps the
//                mean and sampling error of independently drawn rows, and buckets' errors are
//                independent given the rows.
//   quantization s = ||v||_inf / Q, u ~ U(-1/2, 1/2), q = round(v/s + u) in {-Q..Q}.
//   reconstruction  g_hat = alpha (n/k) T^T s (q - u); alpha = 1 (recon=unbiased) or
//                1/(gamma+1) (recon=mmse), gamma = n/k - 1 + n ln(k) / (4 Q^2 (k-1)) (for k = 1
//                the limit n / (4 Q^2)). E||g_hat - g||^2 <= gamma/(gamma+1) ||g||^2 for mmse.
// levels=1 quantizes to {-1, 0, 1}; the published sign-only (1-bit) variant is not implemented.
// Under error feedback, recon=unbiased needs beta < 2/(1+gamma); recon=mmse allows beta in (0, 1].
// Signs, rows and dither are never sent: they come from streams keyed by (seed, bucket index,
// step, stream, worker) (the rows without the bucket index), which the receiver regenerates for
// the sender it decodes.
//
// Payload (shared=0): one float scale s per bucket, then the q + Q of all buckets as base-(2Q+1)
// digits, D = floor(64 / log2(2Q+1)) digits per little-endian uint64 word (Q = 1: 40 digits, 1.6
// bits per entry). payload_bytes(count) = 4 nb + 8 ceil(nb k / D), nb = ceil(count / n): exact.
// shared=1: signs and rows are the same on every worker (not keyed by worker; dither still is),
// and the payload is the k dequantized measurements s (q - u) per bucket as float32, so payloads
// sum elementwise and the sum decodes linearly: summable, compression n/k only (4 nb k bytes).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dtrain/compress/compressor.h"

namespace dtrain::compress {

struct QcsOptions {
  size_t bucket = 256;  // n, a power of two
  size_t rows = 32;     // k, 1 <= k <= n
  int levels = 1;       // Q, 1 <= Q <= 65535
  uint64_t seed = 0;
  bool mmse = false;    // recon=mmse (alpha = 1/(gamma+1)) instead of unbiased (alpha = 1)
  bool shared = false;  // shared signs and rows, summable float measurements
};

// In-place unnormalized fast Walsh-Hadamard transform: x <- H x, H[i][j] = (-1)^popcount(i & j).
// x.size() must be a power of two (or 0).
void fwht(std::span<float> x);

class QcsCompressor : public Compressor {
 public:
  // Throws InvalidArgument on options out of range.
  explicit QcsCompressor(const QcsOptions& options);

  std::string name() const override;
  Payload compress(std::span<const float> in, uint64_t step, uint64_t stream = 0) override;
  void decompress(const Payload& p, std::span<float> out, bool accumulate, uint64_t step,
                  uint64_t stream = 0, int sender = 0) const override;
  bool summable() const override { return options_.shared; }
  size_t payload_bytes(size_t n) const override;

  const QcsOptions& options() const { return options_; }
  double gamma() const;
  double alpha() const { return options_.mmse ? 1.0 / (gamma() + 1.0) : 1.0; }
  // Base-(2Q+1) digits per 64-bit word.
  size_t digits_per_word() const { return digits_per_word_; }

  // v = T g for one bucket (g: n entries, v: k entries) with the measurement drawn for
  // (bucket_index, step, stream, worker); `worker` is ignored when shared.
  void measure(std::span<const float> g, uint64_t bucket_index, uint64_t step, uint64_t stream,
               int worker, std::span<float> v) const;
  // g = T^T v, the adjoint of measure().
  void adjoint(std::span<const float> v, uint64_t bucket_index, uint64_t step, uint64_t stream,
               int worker, std::span<float> g) const;

 private:
  struct Sketch;  // the rows of a call and one bucket's signs
  void draw_rows(uint64_t step, uint64_t stream, int worker, Sketch& sketch) const;
  void draw_signs(uint64_t bucket_index, uint64_t step, uint64_t stream, int worker,
                  Sketch& sketch) const;
  // v = T g using `work` (n floats); g may be shorter than n (zero padded).
  void apply(std::span<const float> g, const Sketch& sketch, std::span<float> work,
             std::span<float> v) const;
  // work = factor sqrt(n) T^T v (n floats).
  void apply_adjoint(std::span<const float> v, const Sketch& sketch, float factor,
                     std::span<float> work) const;

  QcsOptions options_;
  size_t digits_per_word_ = 0;
  std::vector<float> work_;
};

}  // namespace dtrain::compress
