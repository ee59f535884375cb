// PowerSGD (reduce/powersgd.h): the reducer over 1-4 ranks against a reference computed here in
// double from every rank's gradients (its own Gram-Schmidt, P summed, Q averaged, P Q^T, error
// feedback) over warm-started steps; the dense phase and the uncompressed tensors exactly
// averaged; gradients of true low rank reproduced; bit-identical ranks; byte accounting; zero and
// non-finite gradients; checkpoints that continue bit-identically; and parameters, layouts and
// states refused with errors naming the culprit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>

#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/common/random.h"
#include "dtrain/reduce/powersgd.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using reduce::Layout;
using reduce::PowerSgdReducer;

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;  // empty: flat
  size_t numel = 0;
};

Tensor shaped(const std::string& name, std::vector<int64_t> shape) {
  size_t numel = 1;
  for (int64_t d : shape) numel *= static_cast<size_t>(d);
  return {name, std::move(shape), numel};
}

Tensor flat(const std::string& name, size_t numel) {
  return {name, {}, numel};
}

Layout make_layout(const std::vector<std::vector<Tensor>>& buckets) {
  Layout layout;
  for (const auto& tensors : buckets) {
    reduce::BucketLayout b;
    for (const auto& t : tensors) {
      b.tensors.push_back({t.name, t.shape, b.numel, t.numel});
      b.numel += t.numel;
    }
    layout.buckets.push_back(std::move(b));
  }
  return layout;
}

// Matrices and vectors mixed in one bucket (with a conv kernel and a matrix too small to gain at
// rank >= 2), a matrix with its bias, a flat tensor, and an empty bucket.
Layout mixed_layout() {
  return make_layout({{shaped("fc1.weight", {24, 40}), shaped("fc1.bias", {24}),
                       shaped("conv.weight", {8, 3, 3, 3}), shaped("tiny.weight", {3, 5}),
                       shaped("norm.weight", {7})},
                      {shaped("out.weight", {10, 48}), shaped("out.bias", {10})},
                      {flat("embedding", 33)},
                      {}});
}

// The spec's rule, written out here: >= 2 dimensions and n m > r (n + m).
bool is_matrix(const reduce::TensorSlot& t, size_t rank, size_t* rows, size_t* cols) {
  if (t.shape.size() < 2) return false;
  *rows = static_cast<size_t>(t.shape[0]);
  *cols = t.numel / *rows;
  return *rows * *cols > rank * (*rows + *cols);
}

// Dyadic values k / 64 with |k| <= 64: a sum over a few ranks is exact in float, so an exact
// average is float(sum) / N.
float grad_value(int rank, uint64_t step, size_t bucket, size_t i) {
  const uint64_t h = mix64(splitmix64(uint64_t(rank) * 1000003 + step) ^
                           splitmix64(bucket * 7919 + uint64_t(i) * 104729));
  return static_cast<float>(static_cast<int64_t>(h % 129) - 64) / 64.0f;
}

std::vector<float> grad_bucket(const Layout& layout, int rank, uint64_t step, size_t bucket) {
  std::vector<float> g(layout.buckets[bucket].numel);
  for (size_t i = 0; i < g.size(); ++i) g[i] = grad_value(rank, step, bucket, i);
  return g;
}

// Gram-Schmidt on the columns of a rows x cols row-major matrix, normalising each column and
// removing it from the columns after it (PyTorch's order; the reducer's is the other one).
void orthonormalize(std::vector<double>& a, size_t rows, size_t cols) {
  for (size_t k = 0; k < cols; ++k) {
    double norm = 0;
    for (size_t i = 0; i < rows; ++i) norm += a[i * cols + k] * a[i * cols + k];
    norm = std::sqrt(norm);
    for (size_t i = 0; i < rows; ++i) a[i * cols + k] /= norm;
    for (size_t l = k + 1; l < cols; ++l) {
      double d = 0;
      for (size_t i = 0; i < rows; ++i) d += a[i * cols + k] * a[i * cols + l];
      for (size_t i = 0; i < rows; ++i) a[i * cols + l] -= d * a[i * cols + k];
    }
  }
}

struct RefOptions {
  size_t rank = 4;
  uint64_t start = 10;
  bool feedback = true;
  bool warm = true;
  uint64_t seed = 0;
};

// Every rank's gradients in, the gradient every rank must hold out, with its own state.
class Reference {
 public:
  Reference(Layout layout, RefOptions o, int world)
      : layout_(std::move(layout)), o_(o), world_(world) {}

  // g[rank][bucket]; returns the expected bucket contents (the same on every rank).
  std::vector<std::vector<double>> step(uint64_t step, bool dense,
                                        const std::vector<std::vector<std::vector<float>>>& g) {
    const size_t r = o_.rank;
    std::vector<std::vector<double>> out(layout_.buckets.size());
    for (size_t b = 0; b < layout_.buckets.size(); ++b) {
      out[b].assign(layout_.buckets[b].numel, 0.0);
      for (int w = 0; w < world_; ++w) {
        for (size_t i = 0; i < out[b].size(); ++i) out[b][i] += g[w][b][i];
      }
      for (double& x : out[b]) x /= world_;
      if (dense) continue;
      for (size_t t = 0; t < layout_.buckets[b].tensors.size(); ++t) {
        const auto& slot = layout_.buckets[b].tensors[t];
        size_t n = 0, m = 0;
        if (!is_matrix(slot, r, &n, &m)) continue;
        State& s = state_[{b, t}];
        if (s.q.empty() || !o_.warm) {
          s.q.assign(m * r, 0.0);
          for (size_t k = 0; k < r; ++k) {
            KeyedRng rng({o_.seed, b, t, step, k});
            for (size_t j = 0; j < m; ++j) s.q[j * r + k] = rng.dither();
          }
        }
        if (s.e.empty()) s.e.assign(world_, std::vector<double>(n * m, 0.0));
        orthonormalize(s.q, m, r);
        std::vector<std::vector<double>> c(world_, std::vector<double>(n * m));
        for (int w = 0; w < world_; ++w) {
          for (size_t i = 0; i < n * m; ++i) {
            c[w][i] = g[w][b][slot.offset + i] + (o_.feedback ? s.e[w][i] : 0.0);
          }
        }
        std::vector<double> p(n * r, 0.0), q(m * r, 0.0);
        for (int w = 0; w < world_; ++w) {
          for (size_t i = 0; i < n; ++i) {
            for (size_t k = 0; k < r; ++k) {
              for (size_t j = 0; j < m; ++j) p[i * r + k] += c[w][i * m + j] * s.q[j * r + k];
            }
          }
        }
        orthonormalize(p, n, r);
        for (int w = 0; w < world_; ++w) {
          for (size_t j = 0; j < m; ++j) {
            for (size_t k = 0; k < r; ++k) {
              for (size_t i = 0; i < n; ++i) q[j * r + k] += c[w][i * m + j] * p[i * r + k];
            }
          }
        }
        for (double& x : q) x /= world_;
        for (size_t i = 0; i < n; ++i) {
          for (size_t j = 0; j < m; ++j) {
            double a = 0;
            for (size_t k = 0; k < r; ++k) a += p[i * r + k] * q[j * r + k];
            out[b][slot.offset + i * m + j] = a;
            for (int w = 0; w < world_; ++w) s.e[w][i * m + j] = c[w][i * m + j] - a;
          }
        }
        s.q = std::move(q);
      }
    }
    return out;
  }

  const std::vector<double>& residual(int rank, size_t bucket, size_t tensor) {
    return state_.at({bucket, tensor}).e.at(rank);
  }

 private:
  struct State {
    std::vector<double> q;               // m x r, row-major
    std::vector<std::vector<double>> e;  // per rank, n x m
  };
  Layout layout_;
  RefOptions o_;
  int world_;
  std::map<std::pair<size_t, size_t>, State> state_;
};

std::string spec_of(const RefOptions& o) {
  return detail::concat("powersgd:rank=", o.rank, ",start=", o.start, ",feedback=", o.feedback,
                        ",warm=", o.warm, ",seed=", o.seed);
}

uint64_t ring_bytes(size_t floats, int world) {
  return world > 1 ? floats * 4 * 2 * (world - 1) / world : 0;
}

double metric(const std::vector<std::pair<std::string, double>>& metrics, const std::string& key) {
  for (const auto& [k, v] : metrics) {
    if (k == key) return v;
  }
  ADD_FAILURE() << "no metric " << key;
  return -1;
}

// What one rank saw: per step, per bucket.
struct Seen {
  std::vector<std::vector<std::vector<float>>> out, residual;
  std::vector<std::vector<std::pair<std::string, double>>> metrics;
  std::vector<bool> dense;
  uint64_t bytes_sent = 0, bytes_received = 0;
};

const RefOptions kVariants[] = {
    {4, 2, true, true, 7},   // the defaults but start
    {2, 2, false, true, 3},  // no error feedback
    {1, 2, true, false, 0},  // a fresh Q every step; tiny.weight is a matrix at rank 1
    {3, 0, true, true, 11},  // compressed from the first step
};

class PowerSgdRanks : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(PowerSgdRanks, MatchesTheReferenceOnEveryRank) {
  const auto [world, variant] = GetParam();
  const RefOptions o = kVariants[variant];
  const Layout layout = mixed_layout();
  const uint64_t first = 5;  // the first step seen: `start` counts from here
  const int steps = 8;
  std::vector<Seen> seen(world);
  spawn(world, [&](comm::Group& g) {
    auto made = reduce::make_reducer(spec_of(o), g);
    auto& reducer = dynamic_cast<PowerSgdReducer&>(*made);
    EXPECT_FALSE(reducer.applies_momentum());
    reducer.set_layout(layout);
    for (size_t b = 0; b < layout.buckets.size(); ++b) {
      for (size_t t = 0; t < layout.buckets[b].tensors.size(); ++t) {
        size_t n = 0, m = 0;
        EXPECT_EQ(reducer.matrix(b, t) != nullptr,
                  is_matrix(layout.buckets[b].tensors[t], o.rank, &n, &m))
            << layout.buckets[b].tensors[t].name;
      }
    }
    Seen& s = seen[g.rank()];
    for (int t = 0; t < steps; ++t) {
      s.dense.push_back(reducer.dense_phase(first + t));
      reducer.begin_step(first + t);
      s.out.emplace_back();
      for (size_t b = 0; b < layout.buckets.size(); ++b) {
        auto grad = grad_bucket(layout, g.rank(), t, b);
        reducer.reduce(b, grad);
        s.out.back().push_back(std::move(grad));
      }
      reducer.end_step();
      s.residual.emplace_back();
      for (size_t b = 0; b < layout.buckets.size(); ++b) {
        s.residual.back().push_back(reducer.bucket(b).residual);
      }
      s.metrics.push_back(reducer.step_metrics());
    }
    s.bytes_sent = reducer.bytes_sent();
    s.bytes_received = reducer.bytes_received();
  });

  Reference ref(layout, o, world);
  uint64_t want_bytes = 0;
  double worst = 0;
  for (int t = 0; t < steps; ++t) {
    const bool dense = uint64_t(t) < o.start;
    const std::string at = "step " + std::to_string(first + t);
    std::vector<std::vector<std::vector<float>>> grads(world);
    for (int w = 0; w < world; ++w) {
      for (size_t b = 0; b < layout.buckets.size(); ++b) {
        grads[w].push_back(grad_bucket(layout, w, t, b));
      }
    }
    const auto want = ref.step(first + t, dense, grads);
    uint64_t step_bytes = 0, allreduced = 0, elements = 0;
    for (size_t b = 0; b < layout.buckets.size(); ++b) {
      const auto& bl = layout.buckets[b];
      // Which elements are compressed, and the calls the bucket makes.
      std::vector<bool> compressed(bl.numel, false);
      size_t p = 0, q = 0, batch = 0;
      for (const auto& slot : bl.tensors) {
        size_t n = 0, m = 0;
        if (!dense && is_matrix(slot, o.rank, &n, &m)) {
          std::fill_n(compressed.begin() + slot.offset, slot.numel, true);
          p += o.rank * n;
          q += o.rank * m;
        } else {
          batch += slot.numel;
        }
      }
      std::vector<size_t> calls;
      if (p > 0) {
        calls = {p + batch, q};
      } else if (bl.numel > 0) {
        calls = {bl.numel};
      }
      for (size_t c : calls) {
        step_bytes += ring_bytes(c, world);
        allreduced += c;
      }
      elements += bl.numel;
      for (int w = 0; w < world; ++w) {
        const auto& out = seen[w].out[t][b];
        ASSERT_EQ(out.size(), bl.numel);
        EXPECT_TRUE(out.empty() ||  // memcmp takes no null pointer, even for 0 bytes
                    std::memcmp(out.data(), seen[0].out[t][b].data(), out.size() * sizeof(float)) ==
                        0)
            << at << " bucket " << b << ": rank " << w << " differs from rank 0";
      }
      const auto& out = seen[0].out[t][b];
      double scale = 0;
      for (size_t i = 0; i < bl.numel; ++i) scale = std::max(scale, std::fabs(want[b][i]));
      for (size_t i = 0; i < bl.numel; ++i) {
        if (!compressed[i]) {  // exactly the average
          double sum = 0;
          for (int w = 0; w < world; ++w) sum += grads[w][b][i];
          ASSERT_EQ(out[i], static_cast<float>(sum) / static_cast<float>(world))
              << at << " bucket " << b << " element " << i;
        } else {
          const double err = std::fabs(out[i] - want[b][i]) / scale;
          worst = std::max(worst, err);
          ASSERT_LE(err, 1e-4) << at << " bucket " << b << " element " << i << ": " << out[i]
                               << " vs the reference's " << want[b][i];
        }
      }
      // Residuals: e + P Q^T is the error-fed input on every rank, and matches the reference's.
      for (int w = 0; w < world; ++w) {
        const auto& e = seen[w].residual[t][b];
        if (!o.feedback || p == 0) {
          if (!o.feedback) {
            EXPECT_TRUE(e.empty()) << at << " bucket " << b;
          }
          continue;
        }
        const auto& e_before = t > 0 ? seen[w].residual[t - 1][b] : std::vector<float>();
        size_t at_e = 0;
        for (size_t ti = 0; ti < bl.tensors.size(); ++ti) {
          const auto& slot = bl.tensors[ti];
          size_t n = 0, m = 0;
          if (!is_matrix(slot, o.rank, &n, &m)) continue;
          const auto& e_ref = ref.residual(w, b, ti);
          for (size_t i = 0; i < n * m; ++i) {
            const float before = e_before.empty() ? 0.0f : e_before[at_e + i];
            const double fed = double(grads[w][b][slot.offset + i]) + before;
            const double got = double(e[at_e + i]) + seen[w].out[t][b][slot.offset + i];
            ASSERT_LE(std::fabs(got - fed), 1e-6 * (std::fabs(fed) + std::fabs(e[at_e + i])))
                << at << " rank " << w << " " << slot.name << " element " << i;
            ASSERT_LE(std::fabs(e[at_e + i] - e_ref[i]), 1e-4 * scale)
                << at << " rank " << w << " " << slot.name << " residual element " << i;
          }
          at_e += n * m;
        }
      }
    }
    want_bytes += step_bytes;
    for (int w = 0; w < world; ++w) {
      const auto& metrics = seen[w].metrics[t];
      EXPECT_EQ(seen[w].dense[t], dense) << at;
      EXPECT_EQ(metric(metrics, "powersgd_dense"), dense ? 1.0 : 0.0) << at;
      EXPECT_EQ(metric(metrics, "payload_bytes"), double(step_bytes)) << at;
      EXPECT_DOUBLE_EQ(metric(metrics, "compress_ratio"), double(elements) / double(allreduced))
          << at;
    }
  }
  for (int w = 0; w < world; ++w) {
    EXPECT_EQ(seen[w].bytes_sent, want_bytes) << "rank " << w;
    EXPECT_EQ(seen[w].bytes_received, want_bytes) << "rank " << w;
  }
  RecordProperty("worst_relative_error", detail::concat(worst));
}

INSTANTIATE_TEST_SUITE_P(WorldsAndOptions, PowerSgdRanks,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values(0, 1, 2, 3)));

// A random vector with entries in [-1/2, 1/2), from a key.
std::vector<double> random_vector(size_t n, std::initializer_list<uint64_t> key) {
  KeyedRng rng(key);
  std::vector<double> v(n);
  for (double& x : v) x = rng.dither();
  return v;
}

class PowerSgdLowRank : public ::testing::TestWithParam<int> {};

// Gradients whose average has rank <= R = 4: one power iteration from any Q spans it, so P Q^T is
// the average up to rounding, at every compressed step.
//  - with error feedback, every rank holds the same gradients: "a" one fixed matrix of rank 4
//    (= R), "conv" a new matrix of rank 2 every step; the residual stays at rounding level. (A
//    rank-R gradient whose row space changes every step is not reproduced for long with error
//    feedback: the rounding left in e tilts P, and with no spare column the stale Q amplifies the
//    tilt step after step until e is as large as the gradient. Exact arithmetic never starts it.)
//  - without, each rank its own: "a" = U W_(rank, step) with one shared 30 x 3 factor U, and
//    "conv" = u_(rank mod 3) v_(rank, step)^T, so the ranks together span min(N, 3) directions
//    (4 random directions of R^6 can be too ill-conditioned for 5e-6 in float).
// (With feedback and ranks that differ, PyTorch's residual e_w = M_w - P Q^T keeps each rank's
// difference from the average, which sums to zero over the ranks but grows step after step like
// a random walk; the float sums then cancel more and more, and exactness degrades gradually.)
TEST_P(PowerSgdLowRank, ReproducesGradientsOfRankAtMostR) {
  const int world = GetParam();
  const Layout layout = make_layout(
      {{shaped("a", {30, 50}), shaped("a.bias", {30})}, {shaped("conv", {6, 4, 3, 3})}});
  const int steps = 12;
  auto outer_sum = [](std::vector<float>& g, size_t n, size_t m, const std::vector<double>& u,
                      const std::vector<double>& v) {
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < m; ++j) g[i * m + j] += static_cast<float>(u[i] * v[j]);
    }
  };
  for (const bool same : {true, false}) {
    auto input = [&](int rank, uint64_t step, size_t bucket) {
      const uint64_t who = same ? 0 : uint64_t(rank) + 1;
      std::vector<float> g(layout.buckets[bucket].numel, 0.0f);
      if (bucket == 0) {
        for (uint64_t k = 0; k < (same ? 4u : 3u); ++k) {
          outer_sum(g, 30, 50, random_vector(30, {1, k}),
                    random_vector(50, {2, who, same ? 0 : step, k}));
        }
        for (size_t i = 0; i < 30; ++i) g[1500 + i] = grad_value(rank, step, bucket, i);
      } else {
        for (uint64_t k = 0; k < (same ? 2u : 1u); ++k) {
          outer_sum(g, 6, 36, random_vector(6, {3, same ? 0 : who % 3, same ? step : 0, k}),
                    random_vector(36, {4, who, step, k}));
        }
      }
      return g;
    };
    std::vector<std::vector<std::vector<float>>> out(world);  // [rank][step * 2 + bucket]
    std::vector<std::vector<double>> residual(2, std::vector<double>(steps, 0.0));
    spawn(world, [&](comm::Group& g) {
      PowerSgdReducer reducer(
          g, reduce::parse_powersgd_options(same ? "rank=4,start=1" : "rank=4,start=1,feedback=0"));
      reducer.set_layout(layout);
      for (int t = 0; t < steps; ++t) {
        reducer.begin_step(t);
        for (size_t b = 0; b < 2; ++b) {
          auto grad = input(g.rank(), t, b);
          reducer.reduce(b, grad);
          out[g.rank()].push_back(std::move(grad));
        }
        reducer.end_step();
        if (g.rank() != 0) continue;
        for (size_t b = 0; b < 2; ++b) {
          for (float e : reducer.bucket(b).residual) {
            residual[b][t] = std::max(residual[b][t], double(std::fabs(e)));
          }
        }
      }
    });
    for (int t = 1; t < steps; ++t) {  // step 0 is dense
      for (size_t b = 0; b < 2; ++b) {
        double scale = 0;
        std::vector<double> avg(layout.buckets[b].numel, 0.0);
        for (int w = 0; w < world; ++w) {
          const auto g = input(w, t, b);
          for (size_t i = 0; i < avg.size(); ++i) avg[i] += g[i];
        }
        for (double& x : avg) scale = std::max(scale, std::fabs(x /= world));
        const auto& got = out[0][t * 2 + b];
        for (size_t i = 0; i < avg.size(); ++i) {
          ASSERT_NEAR(got[i], avg[i], 5e-6 * scale)
              << (same ? "same" : "own") << " gradients, step " << t << " bucket " << b
              << " element " << i;
        }
        EXPECT_LE(residual[b][t], 5e-6 * scale) << "step " << t << " bucket " << b;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, PowerSgdLowRank, ::testing::Values(2, 3, 4));

// Every rank feeding the same gradients gets what one process gets from them alone.
TEST(PowerSgd, IdenticalInputsOnEveryRankGiveOneProcessResult) {
  const Layout layout = mixed_layout();
  auto run = [&](int world) {
    std::vector<std::vector<float>> out;  // rank 0's, [step * buckets + bucket]
    std::mutex mu;
    spawn(world, [&](comm::Group& g) {
      auto reducer = reduce::make_reducer("powersgd:rank=2,start=1", g);
      reducer->set_layout(layout);
      std::vector<std::vector<float>> mine;
      for (int t = 0; t < 5; ++t) {
        reducer->begin_step(t);
        for (size_t b = 0; b < layout.buckets.size(); ++b) {
          auto grad = grad_bucket(layout, 0, t, b);
          reducer->reduce(b, grad);
          mine.push_back(std::move(grad));
        }
        reducer->end_step();
      }
      std::lock_guard<std::mutex> lock(mu);
      if (g.rank() == 0) out = std::move(mine);
    });
    return out;
  };
  const auto one = run(1);
  for (int world : {2, 3, 4}) {
    const auto many = run(world);
    ASSERT_EQ(many.size(), one.size());
    for (size_t s = 0; s < one.size(); ++s) {
      double scale = 1e-30;
      for (float x : one[s]) scale = std::max(scale, double(std::fabs(x)));
      for (size_t i = 0; i < one[s].size(); ++i) {
        ASSERT_NEAR(many[s][i], one[s][i], 1e-5 * scale)
            << world << " ranks, call " << s << " element " << i;
      }
    }
  }
}

// Runs steps [from, to) of `reducer` on mixed_layout() gradients; returns every bucket's output.
std::vector<std::vector<float>> run_steps(reduce::GradientReducer& reducer, int rank, int from,
                                          int to) {
  const Layout& layout = reducer.layout();
  std::vector<std::vector<float>> out;
  for (int t = from; t < to; ++t) {
    reducer.begin_step(t);
    for (size_t b = 0; b < layout.buckets.size(); ++b) {
      auto grad = grad_bucket(layout, rank, t, b);
      reducer.reduce(b, grad);
      out.push_back(std::move(grad));
    }
    reducer.end_step();
  }
  return out;
}

class PowerSgdCheckpoint : public ::testing::TestWithParam<int> {};

TEST_P(PowerSgdCheckpoint, ResumedRunIsBitIdentical) {
  const int world = GetParam();
  const std::string spec = "powersgd:rank=2,start=3,seed=5";
  const int steps = 10;
  spawn(world, [&](comm::Group& g) {
    auto whole = reduce::make_reducer(spec, g);
    whole->set_layout(mixed_layout());
    const auto want = run_steps(*whole, g.rank(), 0, steps);
    const auto want_state = whole->save_state();
    for (int cut : {2, 6}) {  // in the dense phase, and after compressed steps
      auto first = reduce::make_reducer(spec, g);
      first->set_layout(mixed_layout());
      auto got = run_steps(*first, g.rank(), 0, cut);
      const auto state = first->save_state();
      auto resumed = reduce::make_reducer(spec, g);
      resumed->set_layout(mixed_layout());
      resumed->load_state(state);
      EXPECT_EQ(resumed->save_state(), state) << "cut " << cut;
      const auto rest = run_steps(*resumed, g.rank(), cut, steps);
      got.insert(got.end(), rest.begin(), rest.end());
      ASSERT_EQ(got.size(), want.size());
      for (size_t s = 0; s < want.size(); ++s) {
        ASSERT_EQ(got[s].size(), want[s].size());
        EXPECT_TRUE(want[s].empty() ||  // memcmp takes no null pointer, even for 0 bytes
                    std::memcmp(got[s].data(), want[s].data(), want[s].size() * sizeof(float)) == 0)
            << "rank " << g.rank() << " cut " << cut << ": call " << s << " differs";
      }
      EXPECT_EQ(resumed->save_state(), want_state) << "cut " << cut;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, PowerSgdCheckpoint, ::testing::Values(2, 3));

// A matrix that is zero for a while must not leave Q stuck at zero; a NaN on one rank reaches
// every rank's output and leaves the state as it was.
TEST(PowerSgd, ZeroThenNonFiniteGradients) {
  const Layout layout = make_layout({{shaped("w", {12, 20}), shaped("b", {12})}});
  const auto u = random_vector(12, {5});
  const auto v = random_vector(20, {6});
  std::vector<float> target(240);
  for (size_t i = 0; i < 12; ++i) {
    for (size_t j = 0; j < 20; ++j) target[i * 20 + j] = static_cast<float>(u[i] * v[j]);
  }
  spawn(2, [&](comm::Group& g) {
    PowerSgdReducer reducer(g, reduce::parse_powersgd_options("rank=2,start=0"));
    reducer.set_layout(layout);
    auto step = [&](uint64_t t, bool zero, bool nan) {
      std::vector<float> grad(252, 0.0f);
      if (!zero) std::copy(target.begin(), target.end(), grad.begin());
      for (size_t i = 0; i < 12; ++i) grad[240 + i] = grad_value(g.rank(), t, 0, i);
      if (nan && g.rank() == 1) grad[5] = std::numeric_limits<float>::quiet_NaN();
      reducer.begin_step(t);
      reducer.reduce(0, grad);
      reducer.end_step();
      for (size_t i = 0; i < 12; ++i) {  // the bias is averaged exactly whatever w holds
        EXPECT_EQ(grad[240 + i], (grad_value(0, t, 0, i) + grad_value(1, t, 0, i)) / 2.0f)
            << "step " << t;
      }
      return grad;
    };
    for (uint64_t t = 0; t < 2; ++t) {
      const auto out = step(t, true, false);
      for (size_t i = 0; i < 240; ++i) ASSERT_EQ(out[i], 0.0f) << "step " << t;
    }
    for (uint64_t t = 2; t < 5; ++t) {  // rank 1 <= R: reproduced, though Q was all zero
      const auto out = step(t, false, false);
      for (size_t i = 0; i < 240; ++i) ASSERT_NEAR(out[i], target[i], 1e-5) << "step " << t;
    }
    const auto residual = reducer.bucket(0).residual;
    const auto poisoned = step(5, false, true);
    for (size_t i = 0; i < 240; ++i) ASSERT_TRUE(std::isnan(poisoned[i])) << i;
    EXPECT_EQ(reducer.bucket(0).residual, residual) << "a non-finite step changed the residual";
    const auto out = step(6, false, false);
    for (size_t i = 0; i < 240; ++i) ASSERT_NEAR(out[i], target[i], 1e-5) << "after the NaN";
  });
}

TEST(PowerSgd, FlatLayoutsAverageAndLayoutChangesReset) {
  spawn(2, [&](comm::Group& g) {
    PowerSgdReducer reducer(g, reduce::parse_powersgd_options("rank=2,start=1"));
    const std::vector<size_t> sizes = {500, 40};
    reducer.set_layout(Layout::flat(sizes));
    for (uint64_t t = 0; t < 3; ++t) {
      reducer.begin_step(t);
      for (size_t b = 0; b < sizes.size(); ++b) {
        auto grad = grad_bucket(reducer.layout(), g.rank(), t, b);
        reducer.reduce(b, grad);
        for (size_t i = 0; i < grad.size(); ++i) {
          ASSERT_EQ(grad[i], (grad_value(0, t, b, i) + grad_value(1, t, b, i)) / 2.0f);
        }
      }
      reducer.end_step();
      EXPECT_EQ(metric(reducer.step_metrics(), "powersgd_dense"), t < 1 ? 1.0 : 0.0);
      EXPECT_EQ(metric(reducer.step_metrics(), "compress_ratio"), 1.0);
    }
    // Shapes arrive: compressed at once (the step count carries on), then a new layout resets.
    reducer.set_layout(mixed_layout());
    EXPECT_TRUE(reducer.bucket(0).q.empty());
    run_steps(reducer, g.rank(), 3, 4);
    EXPECT_EQ(metric(reducer.step_metrics(), "powersgd_dense"), 0.0);
    EXPECT_GT(metric(reducer.step_metrics(), "compress_ratio"), 1.5);
    EXPECT_FALSE(reducer.bucket(0).q.empty());
    EXPECT_FALSE(reducer.bucket(0).residual.empty());
    reducer.set_layout(make_layout({{shaped("fc1.weight", {24, 40})}}));
    EXPECT_TRUE(reducer.bucket(0).q.empty());
    EXPECT_TRUE(reducer.bucket(0).residual.empty());
  });
}

TEST(PowerSgd, ParametersAreParsedAndCheckedByName) {
  const auto d = reduce::parse_powersgd_options("");
  EXPECT_EQ(d.rank, 4u);
  EXPECT_EQ(d.start, 10u);
  EXPECT_TRUE(d.feedback);
  EXPECT_TRUE(d.warm);
  EXPECT_EQ(d.seed, 0u);
  EXPECT_EQ(d.min_compress, 1.0);
  EXPECT_EQ(reduce::parse_powersgd_options("2").rank, 2u);
  const auto o =
      reduce::parse_powersgd_options("rank=8,start=0,feedback=0,warm=0,seed=42,min_compress=2");
  EXPECT_EQ(o.rank, 8u);
  EXPECT_EQ(o.start, 0u);
  EXPECT_FALSE(o.feedback);
  EXPECT_FALSE(o.warm);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.min_compress, 2.0);
  EXPECT_INVALID(reduce::parse_powersgd_options("rank=0"), "powersgd: rank=0");
  EXPECT_INVALID(reduce::parse_powersgd_options("rank=four"), "powersgd: rank=four");
  EXPECT_INVALID(reduce::parse_powersgd_options("start=-1"), "powersgd: start=-1");
  EXPECT_INVALID(reduce::parse_powersgd_options("feedback=2"), "powersgd: feedback=2");
  EXPECT_INVALID(reduce::parse_powersgd_options("warm=yes"), "powersgd: warm=yes");
  EXPECT_INVALID(reduce::parse_powersgd_options("min_compress=0.5"), "powersgd: min_compress=0.5");
  EXPECT_INVALID(reduce::parse_powersgd_options("ranks=2"), "unknown parameter 'ranks'");
  EXPECT_INVALID(reduce::parse_powersgd_options("rank=2,rank=3"), "'rank' given twice");
  // rank 4: 3 x 5 has 15 elements, R (n + m) = 32; 24 x 40 has 960 > 256; min_compress scales R.
  EXPECT_FALSE(reduce::powersgd::compresses(3, 5, 4, 1.0));
  EXPECT_TRUE(reduce::powersgd::compresses(24, 40, 4, 1.0));
  EXPECT_FALSE(reduce::powersgd::compresses(24, 40, 4, 4.0));
  EXPECT_FALSE(reduce::powersgd::compresses(2, 2, 1, 1.0));  // 4 = 1 * (2 + 2): no gain
  const auto names = reduce::reducer_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "powersgd"), names.end());
  spawn(1, [&](comm::Group& g) {
    EXPECT_EQ(reduce::make_reducer("powersgd", g)->name(), "powersgd");
    EXPECT_INVALID(reduce::make_reducer("powersgd:rank=0", g), "powersgd: rank=0");
  });
}

TEST(PowerSgd, OrthogonalizeZeroesDependentColumns) {
  // Columns: a, 2a (dependent), 0, b: a and b come out orthonormal, the others zero and flagged.
  const size_t len = 5;
  std::vector<float> cols = {1, 2, 0, 0, 1, 2, 4, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 3, 0, 0};
  std::vector<double> scratch;
  std::vector<uint8_t> degenerate;
  EXPECT_EQ(reduce::powersgd::orthogonalize(cols.data(), len, 4, scratch, degenerate), 2u);
  EXPECT_EQ(degenerate, (std::vector<uint8_t>{0, 1, 1, 0}));
  auto dot = [&](size_t x, size_t y) {
    double d = 0;
    for (size_t i = 0; i < len; ++i) d += double(cols[x * len + i]) * cols[y * len + i];
    return d;
  };
  EXPECT_NEAR(dot(0, 0), 1.0, 1e-6);
  EXPECT_NEAR(dot(3, 3), 1.0, 1e-6);
  EXPECT_NEAR(dot(0, 3), 0.0, 1e-6);
  EXPECT_EQ(dot(1, 1), 0.0);
  EXPECT_EQ(dot(2, 2), 0.0);
  std::vector<float> bad = {1, std::numeric_limits<float>::infinity(), 0};
  EXPECT_EQ(reduce::powersgd::orthogonalize(bad.data(), 3, 1, scratch, degenerate), 1u);
}

TEST(PowerSgd, WrongLayoutsAndStatesAreRefusedByName) {
  spawn(1, [&](comm::Group& g) {
    PowerSgdReducer reducer(g, reduce::parse_powersgd_options("rank=2,start=0"));
    // A shape that disagrees with the element count names the tensor.
    Layout bad = make_layout({{shaped("ok", {4})}});
    bad.buckets[0].tensors.push_back({"bad", {3, 4}, 4, 13});
    bad.buckets[0].numel = 17;
    EXPECT_INVALID(reducer.set_layout(bad), "tensor 'bad' of bucket 0 has shape [3, 4]");
    std::vector<float> grad(17);
    reducer.begin_step(0);
    EXPECT_INVALID(reducer.reduce(0, grad), "has no plan");
    reducer.end_step();

    reducer.set_layout(mixed_layout());
    std::vector<float> g0(mixed_layout().buckets[0].numel);
    EXPECT_INVALID(reducer.reduce(0, g0), "outside a step");
    run_steps(reducer, 0, 0, 2);
    const auto state = reducer.save_state();

    // Another shape of fc1.weight: the state names bucket and tensor.
    PowerSgdReducer other(g, reduce::parse_powersgd_options("rank=2,start=0"));
    other.set_layout(make_layout({{shaped("fc1.weight", {24, 41}), shaped("fc1.bias", {24}),
                                   shaped("conv.weight", {8, 3, 3, 3}),
                                   shaped("tiny.weight", {3, 5}), shaped("norm.weight", {7})},
                                  {shaped("out.weight", {10, 48}), shaped("out.bias", {10})},
                                  {flat("embedding", 33)},
                                  {}}));
    EXPECT_INVALID(other.load_state(state), "bucket 0 tensor 'fc1.weight'");
    // Fewer buckets, another rank, feedback off, truncated, trailing bytes, not a state at all.
    PowerSgdReducer fewer(g, reduce::parse_powersgd_options("rank=2"));
    fewer.set_layout(make_layout({{shaped("fc1.weight", {24, 40})}}));
    EXPECT_INVALID(fewer.load_state(state), "holds 4 buckets, the layout has 1");
    PowerSgdReducer rank3(g, reduce::parse_powersgd_options("rank=3"));
    rank3.set_layout(mixed_layout());
    EXPECT_INVALID(rank3.load_state(state), "written with rank=2");
    PowerSgdReducer no_feedback(g, reduce::parse_powersgd_options("rank=2,feedback=0"));
    no_feedback.set_layout(mixed_layout());
    EXPECT_INVALID(no_feedback.load_state(state), "bucket 0 tensor 'fc1.weight': residual of");
    PowerSgdReducer fresh(g, reduce::parse_powersgd_options("rank=2,start=0"));
    fresh.set_layout(mixed_layout());
    EXPECT_INVALID(fresh.load_state(std::span(state).first(state.size() - 3)), "truncated");
    auto longer = state;
    longer.push_back(std::byte{0});
    EXPECT_INVALID(fresh.load_state(longer), "1 trailing bytes");
    const std::vector<std::byte> junk(64, std::byte{0x5a});
    EXPECT_INVALID(fresh.load_state(junk), "not a powersgd state");

    // A hand-made state whose Q has the wrong length names the tensor.
    ByteWriter w;
    w.put(uint32_t{0x44475350}).put(uint32_t{1}).put(uint64_t{2});
    w.put(uint8_t{1}).put(uint64_t{0}).put(uint64_t{1});
    w.put(uint64_t{1}).put(uint64_t{0}).put(uint64_t{24}).put(uint64_t{40});
    w.put_vector(std::vector<float>(3, 1.0f)).put_vector(std::vector<float>());
    PowerSgdReducer one(g, reduce::parse_powersgd_options("rank=2,start=0"));
    one.set_layout(make_layout({{shaped("fc1.weight", {24, 40})}}));
    EXPECT_INVALID(one.load_state(w.take()), "bucket 0 tensor 'fc1.weight': Q of 3 floats");

    // An empty state (a checkpoint of a reducer without state) starts afresh.
    fresh.load_state({});
    EXPECT_TRUE(fresh.bucket(0).q.empty());
    EXPECT_TRUE(fresh.dense_phase(0) == false);  // start=0
  });
}

}  // namespace
}  // namespace dtrain::test
