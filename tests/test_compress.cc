// Compressors, error feedback and the compressed reducer: round trips on known vectors, exact
// payload sizes, summability, the QCS measurement and estimator properties (statistical checks
// with tolerances derived in place), and multi-rank reduction over 1-4 ranks as threads.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <random>

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"
#include "dtrain/compress/compressor.h"
#include "dtrain/compress/qcs.h"
#include "dtrain/reduce/compressed.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using collective::DataType;
using compress::Compressor;
using compress::ErrorFeedback;
using compress::make_compressor;
using compress::Payload;
using compress::QcsCompressor;

std::vector<float> gaussian(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<float> decode(const Compressor& c, const Payload& p, uint64_t step, uint64_t stream = 0,
                          int sender = 0) {
  std::vector<float> out(p.count);
  c.decompress(p, out, false, step, stream, sender);
  return out;
}

double norm2(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return s;
}

// ---- half precision --------------------------------------------------------------------------

TEST(Half, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = collective::half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(collective::float_to_half(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(Half, RoundsToNearestEven) {
  using collective::float_to_half;
  using collective::half_to_float;
  EXPECT_EQ(float_to_half(1.0f + 0x1p-11f), float_to_half(1.0f));  // tie -> even (1.0)
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 3 * 0x1p-11f)), 1.0f + 0x1p-9f);  // tie -> even
  EXPECT_EQ(half_to_float(float_to_half(65519.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(65520.0f))));
  EXPECT_EQ(half_to_float(float_to_half(0x1p-25f)), 0.0f);        // tie -> even (0)
  EXPECT_EQ(half_to_float(float_to_half(0x1.8p-24f)), 0x1p-23f);  // tie -> even (2 units)
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
  // Random floats: the result is a nearest half (checked against both neighbours).
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-20, 15);  // below 2^15: no overflow to inf
  for (int i = 0; i < 100000; ++i) {
    const float x = std::ldexp(1.0f + (rng() % 1000) / 1000.0f, int(mag(rng))) * (i % 2 ? -1 : 1);
    const uint16_t h = float_to_half(x);
    const double err = std::fabs(double(half_to_float(h)) - x);
    for (int d : {-1, 1}) {
      const float neighbour = half_to_float(static_cast<uint16_t>(h + d));
      if (std::isfinite(neighbour) && (h & 0x7fff) != 0) {
        ASSERT_LE(err, std::fabs(double(neighbour) - x)) << x;
      }
    }
  }
}

std::vector<uint16_t> halves(int rank, size_t n) {
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i] = collective::float_to_half(float(int((rank * 31 + i * 7) % 97) - 48) / 8.0f);
  }
  return v;
}

TEST(Half, RingAllreduceOverThreeRanks) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1001}}) {
    spawn(3, [n](comm::Group& g) {
      for (auto op : {collective::ReduceOp::kSum, collective::ReduceOp::kAvg,
                      collective::ReduceOp::kMin, collective::ReduceOp::kMax}) {
        std::vector<uint16_t> data = halves(g.rank(), n);
        collective::AllreduceOptions o(g);
        o.output = collective::View(data.data(), n, DataType::kFloat16);
        o.op = op;
        collective::allreduce(o);
        for (size_t i = 0; i < n; ++i) {
          float want = collective::half_to_float(halves(0, n)[i]);
          for (int r = 1; r < 3; ++r) {
            const float v = collective::half_to_float(halves(r, n)[i]);
            if (op == collective::ReduceOp::kMin)
              want = std::min(want, v);
            else if (op == collective::ReduceOp::kMax)
              want = std::max(want, v);
            else
              want += v;  // multiples of 1/8 below 20: exact in half
          }
          if (op == collective::ReduceOp::kAvg) {
            want = collective::half_to_float(collective::float_to_half(want * (1.0f / 3)));
          }
          ASSERT_EQ(collective::half_to_float(data[i]), want)
              << collective::name(op) << " element " << i << " of " << n;
        }
      }
    });
  }
  EXPECT_EQ(collective::parse_data_type("f16"), DataType::kFloat16);
  EXPECT_EQ(collective::element_size(DataType::kFloat16), 2u);
}

// ---- registry and specs ----------------------------------------------------------------------

TEST(Registry, NamesAndCanonicalSpecs) {
  EXPECT_EQ(compress::compressor_names(),
            (std::vector<std::string>{"none", "fp16", "topk", "randomk", "threshold", "qcs"}));
  EXPECT_EQ(make_compressor("topk:0.01")->name(), "topk:density=0.01");
  EXPECT_EQ(make_compressor("topk")->name(), "topk:density=0.01");
  EXPECT_EQ(make_compressor("qcs:rows=16,recon=mmse")->name(),
            "qcs:bucket=256,rows=16,levels=1,seed=0,recon=mmse,shared=0");
  for (const char* spec : {"none", "fp16", "topk:density=0.25", "randomk:0.1,seed=3,scale=1",
                           "threshold:lambda=0.5", "qcs:bucket=64,rows=8,levels=3,shared=1"}) {
    const std::string name = make_compressor(spec)->name();
    EXPECT_EQ(make_compressor(name)->name(), name) << spec;
  }
}

TEST(Registry, BadSpecsNameTheProblem) {
  EXPECT_INVALID(make_compressor("topk:density=0"), "topk: density=0 is not a number in (0, 1]");
  EXPECT_INVALID(make_compressor("topk:1.5"), "density=1.5 is not a number in (0, 1]");
  EXPECT_INVALID(make_compressor("randomk:density=-1"), "density=-1 is not a number in (0, 1]");
  EXPECT_INVALID(make_compressor("topk:abc"), "density=abc is not a number");
  EXPECT_INVALID(make_compressor("zip:1"), "unknown compressor 'zip'");
  EXPECT_INVALID(make_compressor("zip:1"), "none, fp16, topk, randomk, threshold, qcs");
  EXPECT_INVALID(make_compressor("topk:dens=0.1"), "unknown parameter 'dens'");
  EXPECT_INVALID(make_compressor("qcs:levels=2,foo=1"),
                 "valid: bucket, rows, levels, seed, recon, shared");
  EXPECT_INVALID(make_compressor("qcs:bucket=100"), "bucket=100 is not a power of two");
  EXPECT_INVALID(make_compressor("qcs:bucket=64,rows=65"), "rows=65 is outside [1, bucket=64]");
  EXPECT_INVALID(make_compressor("qcs:levels=0"), "levels=0");
  EXPECT_INVALID(make_compressor("qcs:recon=best"), "recon=best is not one of unbiased, mmse");
  EXPECT_INVALID(make_compressor("qcs:shared=2"), "shared=2 is not an integer in [0, 1]");
  EXPECT_INVALID(make_compressor("randomk:seed=-1"), "seed=-1 is not an integer");
  EXPECT_INVALID(make_compressor("topk:0.1,density=0.2"), "given twice");
  EXPECT_INVALID(make_compressor("qcs:rows=8,16"), "'16' is not key=value");
  EXPECT_INVALID(make_compressor("topk:0.1,,"), "'' is not key=value");
  EXPECT_INVALID(make_compressor("none:1"), "none takes no parameters");
  EXPECT_INVALID(make_compressor("threshold:lambda=-1"), "lambda=-1 is not a number in [0, inf]");
}

TEST(Registry, NonFiniteInputNamesTheElement) {
  std::vector<float> v = gaussian(300, 1);
  v[157] = std::nanf("");
  for (const char* spec : {"topk:0.1", "threshold:0.5", "qcs"}) {
    EXPECT_INVALID(make_compressor(spec)->compress(v, 0), "element 157 of 300 is nan") << spec;
  }
  v[157] = std::numeric_limits<float>::infinity();
  EXPECT_INVALID(make_compressor("qcs")->compress(v, 0), "element 157");
}

// ---- round trips -----------------------------------------------------------------------------

TEST(RoundTrip, NoneAndFp16) {
  const auto in = gaussian(1001, 2);
  auto none = make_compressor("none");
  EXPECT_EQ(decode(*none, none->compress(in, 0), 0), in);
  auto fp16 = make_compressor("fp16");
  const auto out = decode(*fp16, fp16->compress(in, 0), 0);
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_NEAR(out[i], in[i], std::fabs(in[i]) * 0x1p-11f + 0x1p-25f) << i;
  }
}

TEST(RoundTrip, TopkKeepsTheLargestWithDeterministicTies) {
  auto topk = make_compressor("topk:0.5");
  const std::vector<float> in = {0.5f, -3, 1, 2, -2, 0.1f};
  EXPECT_EQ(decode(*topk, topk->compress(in, 0), 0), (std::vector<float>{0, -3, 0, 2, -2, 0}));
  const std::vector<float> ties = {1, -1, 1, -1};
  EXPECT_EQ(decode(*topk, topk->compress(ties, 0), 0), (std::vector<float>{1, -1, 0, 0}));
  // round(0.001 * 10) = 0, but at least one element is kept.
  auto tiny = make_compressor("topk:0.001");
  EXPECT_EQ(decode(*tiny, tiny->compress(in, 0), 0), (std::vector<float>{0, -3, 0, 0, 0, 0}));
}

TEST(RoundTrip, ThresholdKeepsEveryEntryAtOrAboveLambda) {
  auto th = make_compressor("threshold:lambda=1");
  const std::vector<float> in = {0.5f, -3, 1, 0.99f, -1};
  const Payload p = th->compress(in, 0);
  EXPECT_EQ(p.bytes.size(), 3u * 8);
  EXPECT_EQ(decode(*th, p, 0), (std::vector<float>{0, -3, 1, 0, -1}));
  EXPECT_FALSE(th->payload_size_fixed());
  EXPECT_THROW(th->payload_bytes(5), InvalidArgument);
}

TEST(RoundTrip, RandomkSharesPositionsAcrossRanksAndScales) {
  const auto in = gaussian(1000, 3);
  auto a = make_compressor("randomk:density=0.25,seed=9");
  auto b = make_compressor("randomk:density=0.25,seed=9");
  b->set_worker(3);  // positions do not depend on the worker
  const auto out_a = decode(*a, a->compress(in, 5, 2), 5, 2);
  const auto out_b = decode(*b, b->compress(in, 5, 2), 5, 2);
  EXPECT_EQ(out_a, out_b);
  size_t kept = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (out_a[i] != 0) {
      ++kept;
      EXPECT_EQ(out_a[i], in[i]);
    }
  }
  EXPECT_EQ(kept, 250u);
  EXPECT_NE(decode(*a, a->compress(in, 6, 2), 6, 2), out_a);  // another step, other positions
  EXPECT_NE(decode(*a, a->compress(in, 5, 3), 5, 3), out_a);  // another stream too
  auto scaled = make_compressor("randomk:density=0.25,seed=9,scale=1");
  const auto out_s = decode(*scaled, scaled->compress(in, 5, 2), 5, 2);
  for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(out_s[i], out_a[i] * 4.0f);
}

TEST(RoundTrip, PayloadBytesAreExact) {
  for (const char* spec : {"none", "fp16", "topk:0.03", "randomk:0.1", "qcs", "qcs:levels=2",
                           "qcs:bucket=64,rows=64,levels=7", "qcs:bucket=32,rows=5,shared=1"}) {
    auto c = make_compressor(spec);
    for (size_t n : {0, 1, 7, 256, 1000, 1025}) {
      const Payload p = c->compress(gaussian(n, n), 1);
      EXPECT_EQ(p.bytes.size(), c->payload_bytes(n)) << spec << " n=" << n;
      EXPECT_EQ(p.count, n);
    }
  }
}

TEST(RoundTrip, AccumulateAddsAndCorruptPayloadsAreProtocolErrors) {
  const auto in = gaussian(100, 4);
  for (const char* spec : {"none", "fp16", "topk:0.1", "randomk:0.1", "threshold:1", "qcs"}) {
    auto c = make_compressor(spec);
    Payload p = c->compress(in, 1);
    const auto once = decode(*c, p, 1);
    std::vector<float> twice = once;
    c->decompress(p, twice, true, 1);
    for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(twice[i], once[i] + once[i]) << spec;
    std::vector<float> wrong(99);
    EXPECT_THROW(c->decompress(p, wrong, false, 1), InvalidArgument) << spec;
    p.bytes.resize(p.bytes.size() + 4);
    EXPECT_THROW(decode(*c, p, 1), ProtocolError) << spec;
  }
  auto topk = make_compressor("topk:0.1");
  Payload p = topk->compress(in, 1);
  const uint32_t bad = 100;
  std::memcpy(p.bytes.data(), &bad, 4);
  EXPECT_THROW(decode(*topk, p, 1), ProtocolError);
}

// ---- summability -----------------------------------------------------------------------------

// Elementwise sum of the ranks' payloads as `type`, as the ring allreduce would form it.
Payload sum_payloads(const std::vector<Payload>& ps, DataType type) {
  Payload sum = ps[0];
  const auto fn = collective::reduce_fn(type, collective::ReduceOp::kSum);
  for (size_t r = 1; r < ps.size(); ++r) {
    fn(sum.bytes.data(), ps[r].bytes.data(), sum.bytes.size() / collective::element_size(type));
  }
  return sum;
}

TEST(Summable, SumOfPayloadsDecodesToSumOfInputs) {
  const size_t n = 777;
  const int ranks = 3;
  std::vector<std::vector<float>> in;
  for (int r = 0; r < ranks; ++r) in.push_back(gaussian(n, 100 + r));
  for (const char* spec : {"none", "fp16", "randomk:0.3,seed=5", "randomk:0.3,scale=1"}) {
    std::vector<Payload> ps;
    std::vector<float> want(n, 0), magnitude(n, 0);
    for (int r = 0; r < ranks; ++r) {
      auto c = make_compressor(spec);
      c->set_worker(r);
      ps.push_back(c->compress(in[r], 4, 1));
      const auto d = decode(*c, ps.back(), 4, 1, r);
      for (size_t i = 0; i < n; ++i) {
        want[i] += d[i];
        magnitude[i] += std::fabs(d[i]);
      }
    }
    auto c = make_compressor(spec);
    ASSERT_TRUE(c->summable()) << spec;
    const auto got = decode(*c, sum_payloads(ps, c->summable_type()), 4, 1);
    const std::string name = spec;
    for (size_t i = 0; i < n; ++i) {
      // none and unscaled randomk add the same floats in the same order: exact. fp16 rounds each
      // of the 2 partial sums to half (<= 2^-11 of its magnitude each); scale=1 multiplies once
      // instead of per rank (float rounding).
      float tol = 0;
      if (name == "fp16") tol = 2 * 0x1p-11f * magnitude[i];
      if (name.ends_with("scale=1")) tol = 1e-6f * magnitude[i];
      ASSERT_NEAR(got[i], want[i], tol) << spec << " element " << i;
    }
  }
  EXPECT_FALSE(make_compressor("topk")->summable());
  EXPECT_FALSE(make_compressor("qcs")->summable());
  EXPECT_TRUE(make_compressor("qcs:shared=1")->summable());
}

TEST(Summable, SharedQcsSumIsUnbiasedForTheSumOfInputs) {
  // E[decode(sum of payloads)] = sum of inputs; check the mean over M steps against
  // E||mean - sum||^2 = (sum over ranks of the per-rank error variance) / M <= ranks gamma
  // ||g||^2 / M (each rank's reconstruction error is independent given its dither, and the
  // shared sketch error is linear), with a 3x margin.
  const size_t n = 256;
  const int ranks = 3, steps = 1500;
  std::vector<std::vector<float>> in;
  std::vector<double> want(n, 0);
  for (int r = 0; r < ranks; ++r) {
    in.push_back(gaussian(n, 200 + r));
    for (size_t i = 0; i < n; ++i) want[i] += in[r][i];
  }
  std::vector<std::unique_ptr<Compressor>> cs;
  for (int r = 0; r < ranks; ++r) {
    cs.push_back(make_compressor("qcs:bucket=256,rows=64,levels=2,shared=1"));
    cs.back()->set_worker(r);
  }
  std::vector<double> mean(n, 0);
  for (int s = 0; s < steps; ++s) {
    std::vector<Payload> ps;
    for (int r = 0; r < ranks; ++r) ps.push_back(cs[r]->compress(in[r], s));
    const auto got = decode(*cs[0], sum_payloads(ps, DataType::kFloat32), s);
    for (size_t i = 0; i < n; ++i) mean[i] += got[i] / steps;
  }
  double err = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    err += (mean[i] - want[i]) * (mean[i] - want[i]);
    for (int r = 0; r < ranks; ++r) scale += double(in[r][i]) * in[r][i];
  }
  const double gamma = static_cast<const QcsCompressor&>(*cs[0]).gamma();
  // The sketch error of the sum is (n/k - 1)||sum||^2 <= ranks (n/k - 1) sum ||g_r||^2 in the
  // worst case; gamma * ranks * sum ||g_r||^2 / M covers both terms.
  EXPECT_LT(err, 3 * gamma * ranks * scale / steps) << "gamma " << gamma;
}

// ---- QCS -------------------------------------------------------------------------------------

TEST(Qcs, FastWalshHadamardEqualsTheMatrixProduct) {
  for (size_t n : {8, 64}) {
    const auto x = gaussian(n, n);
    std::vector<float> fast = x;
    compress::fwht(fast);
    for (size_t i = 0; i < n; ++i) {
      double want = 0;
      for (size_t j = 0; j < n; ++j) want += (std::popcount(i & j) % 2 ? -1.0 : 1.0) * x[j];
      EXPECT_NEAR(fast[i], want, 1e-5 * (1 + std::fabs(want))) << "n=" << n << " row " << i;
    }
  }
  std::vector<float> bad(12);
  EXPECT_THROW(compress::fwht(bad), InvalidArgument);
}

TEST(Qcs, MeasurementRowsAreOrthonormalAndAdjointIsTranspose) {
  QcsCompressor qcs({.bucket = 64, .rows = 16});
  const size_t n = 64, k = 16;
  std::vector<std::vector<float>> columns(n, std::vector<float>(k));  // T e_j
  for (size_t j = 0; j < n; ++j) {
    std::vector<float> e(n, 0);
    e[j] = 1;
    qcs.measure(e, 3, 7, 1, 2, columns[j]);
  }
  for (size_t a = 0; a < k; ++a) {
    for (size_t b = 0; b < k; ++b) {
      double dot = 0;
      for (size_t j = 0; j < n; ++j) dot += double(columns[j][a]) * columns[j][b];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-5) << "(T T^T)[" << a << "][" << b << "]";
    }
  }
  for (size_t a = 0; a < k; ++a) {
    std::vector<float> e(k, 0), row(n);
    e[a] = 1;
    qcs.adjoint(e, 3, 7, 1, 2, row);
    for (size_t j = 0; j < n; ++j) EXPECT_NEAR(row[j], columns[j][a], 1e-6);
  }
  // Another worker measures differently (own signs and rows).
  std::vector<float> e(n, 0), other(k);
  e[5] = 1;
  qcs.measure(e, 3, 7, 1, 9, other);
  EXPECT_NE(other, columns[5]);
}

TEST(Qcs, UnbiasedReconstructionsAverageToTheInput) {
  // 300 entries: a full bucket and a zero-padded one. Each reconstruction has
  // E||g_hat - g||^2 <= gamma ||g||^2, so the mean of M independent ones (different steps) has
  // E||mean - g||^2 <= gamma ||g||^2 / M; allow 3x (the sum of many squared errors concentrates).
  const auto g = gaussian(300, 11);
  auto c = make_compressor("qcs:bucket=256,rows=32,levels=1");
  const int steps = 2000;
  std::vector<double> mean(g.size(), 0);
  for (int s = 0; s < steps; ++s) {
    const auto d = decode(*c, c->compress(g, s), s);
    for (size_t i = 0; i < g.size(); ++i) mean[i] += d[i] / steps;
  }
  double err = 0;
  for (size_t i = 0; i < g.size(); ++i) err += (mean[i] - g[i]) * (mean[i] - g[i]);
  const double gamma = static_cast<const QcsCompressor&>(*c).gamma();
  EXPECT_NEAR(gamma, 7 + 256 * std::log(32.0) / (4 * 31), 1e-9);
  EXPECT_LT(err, 3 * gamma * norm2(g) / steps);
  // A biased estimate would be far off: the same vector scaled by k/n misses by 0.77 ||g||^2.
  EXPECT_LT(err, 0.05 * norm2(g));
}

TEST(Qcs, MeanSquaredErrorWithinTheGammaBound) {
  // Unbiased: E||g_hat - g||^2 <= gamma ||g||^2; MMSE: <= gamma/(gamma+1) ||g||^2. Estimated
  // from M = 400 reconstructions of one full bucket; the per-sample relative error has a standard
  // deviation below its mean here, so the estimate is within ~5% of E: 15% slack is > 3 sigma.
  struct Case {
    size_t bucket, rows;
    int levels;
  };
  for (Case cs : {Case{256, 32, 1}, Case{64, 16, 4}, Case{128, 128, 1}, Case{256, 8, 1}}) {
    const auto g = gaussian(cs.bucket, cs.bucket + cs.rows);
    double mse[2] = {0, 0};
    double gamma = 0;
    for (bool mmse : {false, true}) {
      QcsCompressor q({.bucket = cs.bucket, .rows = cs.rows, .levels = cs.levels, .mmse = mmse});
      gamma = q.gamma();
      const int steps = 400;
      for (int s = 0; s < steps; ++s) {
        const auto d = decode(q, q.compress(g, s), s);
        for (size_t i = 0; i < g.size(); ++i) mse[mmse] += (d[i] - g[i]) * double(d[i] - g[i]);
      }
      mse[mmse] /= steps * norm2(g);
    }
    SCOPED_TRACE(testing::Message() << "bucket " << cs.bucket << " rows " << cs.rows << " levels "
                                    << cs.levels << " gamma " << gamma);
    EXPECT_LT(mse[0], 1.15 * gamma);
    EXPECT_LT(mse[1], 1.15 * gamma / (gamma + 1));
    EXPECT_LT(mse[1], mse[0]);
  }
}

TEST(Qcs, BucketsOfOneCallShareRowsYetEachKeepsTheGammaBound) {
  // The rows are drawn once per call and shared by its buckets (the signs are per bucket): the
  // sampling error of every bucket is still that of independent rows. 64 buckets x 50 steps of
  // unbiased reconstructions: the mean relative squared error stays within the gamma bound, and
  // within one call no bucket is reconstructed exactly (the signs differ, so do the errors).
  QcsCompressor q({.bucket = 256, .rows = 32, .levels = 1});
  const size_t buckets = 64;
  const auto g = gaussian(256 * buckets, 77);
  const int steps = 50;
  double mse = 0;
  for (int s = 0; s < steps; ++s) {
    const auto d = decode(q, q.compress(g, s), s);
    for (size_t i = 0; i < g.size(); ++i) mse += (d[i] - g[i]) * double(d[i] - g[i]);
  }
  mse /= steps * norm2(g);
  EXPECT_LT(mse, 1.15 * q.gamma());
  EXPECT_GT(mse, 0.5 * q.gamma());
  // One bucket's basis vector measured in two steps: different rows or signs, different v.
  std::vector<float> e(256, 0.0f), v1(32), v2(32);
  e[3] = 1;
  q.measure(e, 0, 1, 0, 0, v1);
  q.measure(e, 0, 2, 0, 0, v2);
  EXPECT_NE(v1, v2);
}

TEST(Qcs, ExactBitBudget) {
  QcsCompressor q1({.bucket = 256, .rows = 32, .levels = 1});
  EXPECT_EQ(q1.digits_per_word(), 40u);  // 3^40 < 2^64 < 3^41: 1.6 bits per entry
  // 1000 entries: 4 buckets, 128 digits -> 4 words; 4 scales.
  EXPECT_EQ(q1.payload_bytes(1000), 4u * 4 + 4 * 8);
  EXPECT_EQ(q1.compress(gaussian(1000, 1), 0).bytes.size(), 48u);
  QcsCompressor q2({.bucket = 256, .rows = 32, .levels = 2});
  EXPECT_EQ(q2.digits_per_word(), 27u);  // 5^27 < 2^64 < 5^28
  EXPECT_EQ(q2.payload_bytes(1000), 4u * 4 + 5 * 8);
  QcsCompressor shared({.bucket = 256, .rows = 32, .shared = true});
  EXPECT_EQ(shared.payload_bytes(1000), 4u * 32 * 4);
  // Compression gain for a large input approaches 32 n / (k log2(2Q+1)) with D-digit words.
  const double gain = 4.0 * (256 << 10) / q1.payload_bytes(256 << 10);
  EXPECT_NEAR(gain, 32.0 * 256 / (32 * 1.6 + 32), 0.1);
}

TEST(Qcs, DecodingNeedsTheSendersRandomness) {
  const auto g = gaussian(256, 5);
  QcsCompressor q({.bucket = 256, .rows = 256, .levels = 8});
  q.set_worker(2);
  const Payload p = q.compress(g, 1);
  const auto right = decode(q, p, 1, 0, 2);
  const auto wrong = decode(q, p, 1, 0, 1);
  double err_right = 0, err_wrong = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    err_right += (right[i] - g[i]) * (right[i] - g[i]);
    err_wrong += (wrong[i] - g[i]) * (wrong[i] - g[i]);
  }
  EXPECT_LT(err_right, 0.1 * norm2(g));
  EXPECT_GT(err_wrong, 0.5 * norm2(g));
}

// ---- error feedback --------------------------------------------------------------------------

TEST(ErrorFeedbackTest, SentPlusResidualEqualsInputs) {
  for (const char* spec : {"topk:0.05", "randomk:0.1", "threshold:1.5", "qcs:bucket=64,rows=8",
                           "qcs:recon=mmse,shared=1"}) {
    ErrorFeedback ef(make_compressor(spec));
    ef.compressor().set_worker(1);
    const size_t n = 300;
    // magnitude: what float rounding is relative to (every value the recurrence touched).
    std::vector<double> sent(n, 0), inputs(n, 0), magnitude(n, 0);
    for (int s = 0; s < 20; ++s) {
      const auto g = gaussian(n, 1000 + s);
      const auto before = ef.residual(4);
      for (size_t i = 0; i < before.size(); ++i) magnitude[i] += std::fabs(before[i]);
      const Payload p = ef.compress(g, s, 4);
      const auto d = decode(ef.compressor(), p, s, 4, 1);
      for (size_t i = 0; i < n; ++i) {
        sent[i] += d[i];
        inputs[i] += g[i];
        magnitude[i] += std::fabs(d[i]) + std::fabs(g[i]);
      }
    }
    const auto r = ef.residual(4);
    ASSERT_EQ(r.size(), n);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(sent[i] + r[i], inputs[i], 1e-5 * (1 + magnitude[i] + std::fabs(r[i])))
          << spec << " element " << i;
    }
  }
}

TEST(ErrorFeedbackTest, WeightedRecurrence) {
  const double beta = 0.4;
  const char* spec = "qcs:bucket=64,rows=16,recon=mmse";
  ErrorFeedback ef(make_compressor(spec), beta);
  auto inner = make_compressor(spec);
  const size_t n = 130;
  std::vector<float> r(n, 0);
  for (int s = 0; s < 10; ++s) {
    const auto g = gaussian(n, 50 + s);
    std::vector<float> z(n);
    for (size_t i = 0; i < n; ++i) z[i] = g[i] + float(beta) * r[i];
    const Payload want = inner->compress(z, s);
    const Payload got = ef.compress(g, s);
    ASSERT_EQ(got.bytes, want.bytes) << "step " << s << ": EF did not compress g + beta r";
    const auto z_hat = decode(*inner, want, s);
    for (size_t i = 0; i < n; ++i) r[i] = (1 - float(beta)) * r[i] + (z[i] - z_hat[i]);
    const auto kept = ef.residual(0);
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(kept[i], r[i], 1e-5) << "step " << s;
  }
  EXPECT_INVALID(ErrorFeedback(make_compressor("topk"), 0), "beta=0 is outside (0, 1]");
  EXPECT_INVALID(ErrorFeedback(make_compressor("topk"), 1.5), "beta=1.5");
}

TEST(ErrorFeedbackTest, StateRoundTripsAndRejectsBadState) {
  ErrorFeedback ef(make_compressor("topk:0.1"));
  ef.compress(gaussian(100, 1), 0, 0);
  ef.compress(gaussian(37, 2), 0, 1);
  const auto state = ef.save_state();
  ErrorFeedback copy(make_compressor("topk:0.1"));
  copy.load_state(state);
  for (uint64_t s : {0, 1}) {
    EXPECT_TRUE(std::equal(copy.residual(s).begin(), copy.residual(s).end(), ef.residual(s).begin(),
                           ef.residual(s).end()));
  }
  const auto g = gaussian(100, 3);
  EXPECT_EQ(copy.compress(g, 1, 0).bytes, ef.compress(g, 1, 0).bytes);

  EXPECT_INVALID(copy.compress(gaussian(99, 4), 2, 0), "stream 0 has 99 elements now but 100");
  auto truncated = std::span<const std::byte>(state).first(state.size() - 4);
  EXPECT_INVALID(copy.load_state(truncated), "truncated");
  auto longer = state;
  longer.push_back(std::byte{0});
  EXPECT_INVALID(copy.load_state(longer), "1 trailing bytes");
  auto garbled = state;
  garbled[0] = std::byte{'X'};
  EXPECT_INVALID(copy.load_state(garbled), "magic");
  EXPECT_INVALID(copy.load_state({}), "truncated");
  // A failed load keeps the residuals.
  EXPECT_EQ(copy.residual(1).size(), 37u);
}

}  // namespace
}  // namespace dtrain::test
