// Momentum correction, momentum factor masking and density warm-up of the compressed reducer
// (reduce/compressed.h), ExDyna's warm-up, and the group-free spec check
// (reduce::validate_reducer_spec). Every expectation is computed here from the definitions, not
// by the code under test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>

#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/reduce/compressed.h"
#include "dtrain/reduce/exdyna.h"
#include "dtrain/reduce/omnireduce.h"
#include "dtrain/reduce/reducer.h"
#include "dtrain/sparse/omnireduce.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using reduce::CompressedReducer;
using reduce::GradientReducer;
using reduce::Layout;

// Rank-unique values in (-1, 1) * (1 + rank / 2) from a hash, so magnitudes rarely tie.
float fill(int rank, size_t bucket, uint64_t step, size_t i) {
  uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t(rank) + 1) + 0xbf58476d1ce4e5b9ull * bucket +
               0x94d049bb133111ebull * step + 0x2545f4914f6cdd1dull * (i + 1);
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  const double unit = double(x >> 11) / double(uint64_t{1} << 53);  // [0, 1)
  return float((2 * unit - 1) * (1.0 + 0.5 * rank));
}

std::vector<float> gradient(int rank, size_t bucket, uint64_t step, size_t n) {
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = fill(rank, bucket, step, i);
  return g;
}

// round(density n), at least 1 when n > 0 (the documented top-k / random-k count).
size_t kept(double density, size_t n) {
  if (n == 0) return 0;
  return std::clamp<size_t>(size_t(std::llround(density * double(n))), 1, n);
}

// The k entries of largest magnitude, ties to the lower index, ascending.
std::vector<size_t> top_k(const std::vector<float>& v, size_t k) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return std::fabs(v[a]) > std::fabs(v[b]); });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

// The documented warm-up schedule (reduce/reducer.h), written out independently.
double schedule(double target, uint64_t warmup, uint64_t t) {
  if (warmup == 0 || t >= warmup || target >= 0.25) return target;
  return 0.25 * std::pow(target / 0.25, double(t) / double(warmup));
}

// A compressed reducer's state as version 1 wrote it: the name (u64 length, characters), then
// the error-feedback state of one stream 0: "DTEF", u32 version 1, u64 stream count, u64 stream
// id, u64 length, floats. Out of line: GCC 12 warns falsely (-Wstringop-overflow) when the
// writes are inlined into a test body.
[[gnu::noinline]] std::vector<std::byte> version1_state(const std::string& name,
                                                        const std::vector<float>& residual) {
  ByteWriter w;
  w.put_string(name);
  w.put(uint32_t{0x46455444}).put(uint32_t{1}).put(uint64_t{1});
  w.put(uint64_t{0}).put(uint64_t{residual.size()}).put_array(std::span<const float>(residual));
  return w.take();
}

std::map<std::string, double> metrics(const GradientReducer& r) {
  std::map<std::string, double> m;
  for (const auto& [k, v] : r.step_metrics()) m[k] = v;
  return m;
}

// The message of the InvalidArgument fn throws, or "" when it throws none.
template <typename Fn>
std::string invalid_message(Fn fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

class MomentumAtDensityOne : public ::testing::TestWithParam<int> {};

TEST_P(MomentumAtDensityOne, MomentumCorrectionWithoutMaskingIsTheDenseMomentumUpdate) {
  // At density 1 every entry is sent each step, so v = u after the step before was zeroed,
  // and without masking u keeps its history: rank r's u_t = M u_{t-1} + g_r,t, and the average
  // over ranks is the dense momentum buffer of the averaged gradient, buf_t = M buf_{t-1} +
  // mean_r g_r,t. SGD on it (p -= lr buf) is SGD with momentum.
  const int world = GetParam();
  const double m = 0.9, lr = 0.05;
  const std::vector<size_t> sizes = {100, 37, 1, 0};
  const uint64_t steps = 8;
  std::vector<std::vector<double>> buf(sizes.size()), param(sizes.size());
  for (size_t b = 0; b < sizes.size(); ++b) {
    buf[b].assign(sizes[b], 0.0);
    param[b].assign(sizes[b], 1.0);
  }
  // expected[step][bucket]: the dense momentum buffer; params_ref: the parameters after all steps.
  std::vector<std::vector<std::vector<double>>> expected(steps);
  for (uint64_t t = 0; t < steps; ++t) {
    for (size_t b = 0; b < sizes.size(); ++b) {
      for (size_t i = 0; i < sizes[b]; ++i) {
        double mean = 0;
        for (int r = 0; r < world; ++r) mean += fill(r, b, t, i);
        buf[b][i] = m * buf[b][i] + mean / world;
        param[b][i] -= lr * buf[b][i];
      }
      expected[t].push_back(buf[b]);
    }
  }
  spawn(world, [&](comm::Group& g) {
    auto reducer = reduce::make_compressed_reducer("topk:density=1,momentum=0.9,mask=0", g);
    EXPECT_EQ(reducer->name(), "topk:density=1,ef=1,momentum=0.9,mask=0");
    EXPECT_TRUE(reducer->applies_momentum());
    reducer->set_layout(Layout::flat(sizes));
    std::vector<std::vector<float>> p(sizes.size());
    for (size_t b = 0; b < sizes.size(); ++b) p[b].assign(sizes[b], 1.0f);
    for (uint64_t t = 0; t < steps; ++t) {
      reducer->begin_step(t);
      for (size_t b = 0; b < sizes.size(); ++b) {
        auto grad = gradient(g.rank(), b, t, sizes[b]);
        reducer->reduce(b, grad);
        for (size_t i = 0; i < sizes[b]; ++i) {
          const double want = expected[t][b][i];
          ASSERT_NEAR(grad[i], want, 1e-5 * std::max(1.0, std::fabs(want)))
              << "rank " << g.rank() << " step " << t << " bucket " << b << " i " << i;
          p[b][i] -= float(lr) * grad[i];
        }
      }
      reducer->end_step();
    }
    for (size_t b = 0; b < sizes.size(); ++b) {
      for (size_t i = 0; i < sizes[b]; ++i) ASSERT_NEAR(p[b][i], param[b][i], 1e-5);
    }
    const auto figures = metrics(*reducer);
    EXPECT_EQ(figures.at("density"), 1.0);
    EXPECT_EQ(figures.at("mean_density"), 1.0);
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, MomentumAtDensityOne, ::testing::Values(1, 2, 3));

TEST(MomentumMasking, SelectionIsZeroedInUAndVAndTheRestKeepsAccumulating) {
  // Per rank, in float as the reducer computes: u = M u + g; v = v + u; S = top-k of |v|;
  // sent: v at S; then v[S] = 0 and, with masking, u[S] = 0. The result is (1/N) sum_r v_r[S_r].
  const int world = 3;
  const float m = 0.9f;
  const double density = 0.1;
  const std::vector<size_t> sizes = {200, 61};
  const uint64_t steps = 6;
  for (const bool mask : {true, false}) {
    SCOPED_TRACE(mask ? "mask=1" : "mask=0");
    // Reference state after each step: u[rank][step][bucket], v likewise; out[step][bucket].
    using Trace = std::vector<std::vector<std::vector<float>>>;
    std::vector<Trace> u_ref(world, Trace(steps)), v_ref(world, Trace(steps));
    std::vector<std::vector<std::vector<double>>> out(steps);
    std::vector<std::vector<std::vector<std::vector<size_t>>>> chosen(
        world, std::vector<std::vector<std::vector<size_t>>>(steps));
    std::vector<std::vector<std::vector<float>>> u(world), v(world);
    for (int r = 0; r < world; ++r) {
      for (size_t n : sizes) {
        u[r].emplace_back(n, 0.0f);
        v[r].emplace_back(n, 0.0f);
      }
    }
    for (uint64_t t = 0; t < steps; ++t) {
      for (size_t b = 0; b < sizes.size(); ++b) {
        std::vector<double> sum(sizes[b], 0.0);
        for (int r = 0; r < world; ++r) {
          const auto g = gradient(r, b, t, sizes[b]);
          for (size_t i = 0; i < sizes[b]; ++i) {
            u[r][b][i] = m * u[r][b][i] + g[i];
            v[r][b][i] = v[r][b][i] + u[r][b][i];
          }
          const auto s = top_k(v[r][b], kept(density, sizes[b]));
          for (size_t i : s) {
            sum[i] += v[r][b][i];
            v[r][b][i] = 0.0f;
            if (mask) u[r][b][i] = 0.0f;
          }
          chosen[r][t].push_back(s);
          u_ref[r][t].push_back(u[r][b]);
          v_ref[r][t].push_back(v[r][b]);
        }
        for (double& x : sum) x /= world;
        out[t].push_back(sum);
      }
    }
    spawn(world, [&](comm::Group& g) {
      const std::string spec = std::string("topk:0.1,momentum=0.9") + (mask ? "" : ",mask=0");
      auto reducer = reduce::make_compressed_reducer(spec, g);
      auto& compressed = static_cast<CompressedReducer&>(*reducer);
      EXPECT_EQ(compressed.options().mask, mask);
      reducer->set_layout(Layout::flat(sizes));
      const int r = g.rank();
      for (uint64_t t = 0; t < steps; ++t) {
        reducer->begin_step(t);
        for (size_t b = 0; b < sizes.size(); ++b) {
          auto grad = gradient(r, b, t, sizes[b]);
          reducer->reduce(b, grad);
          for (size_t i = 0; i < sizes[b]; ++i) {
            ASSERT_NEAR(grad[i], out[t][b][i], 1e-5) << "step " << t << " bucket " << b;
          }
          const auto cu = compressed.velocity(b), cv = compressed.residual(b);
          ASSERT_EQ(cu.size(), sizes[b]);
          ASSERT_EQ(cv.size(), sizes[b]);
          std::vector<char> selected(sizes[b], 0);
          for (size_t i : chosen[r][t][b]) selected[i] = 1;
          for (size_t i = 0; i < sizes[b]; ++i) {
            const float want_u = u_ref[r][t][b][i], want_v = v_ref[r][t][b][i];
            if (selected[i]) {
              ASSERT_EQ(cv[i], 0.0f) << "v at sent index " << i << ", step " << t;
              if (mask) {
                ASSERT_EQ(cu[i], 0.0f) << "u at sent index " << i << ", step " << t;
              }
            } else {
              ASSERT_NE(want_v, 0.0f);  // an unselected entry keeps its accumulation
            }
            ASSERT_NEAR(cu[i], want_u, 1e-5f * std::max(1.0f, std::fabs(want_u))) << i;
            ASSERT_NEAR(cv[i], want_v, 1e-5f * std::max(1.0f, std::fabs(want_v))) << i;
          }
        }
        reducer->end_step();
      }
    });
  }
}

TEST(DensityWarmup, DensitySentFollowsTheScheduleAndReachesTheTarget) {
  // Top-k and random-k keep round(d_t n) entries per bucket with d_t the documented schedule:
  // 0.25 (target / 0.25)^(t / W) before step W, the target from W on.
  const std::vector<size_t> sizes = {1000, 300};
  const size_t total = 1300;
  struct Case {
    std::string spec;
    double target;
    uint64_t warmup;
  };
  const std::vector<Case> cases = {{"topk:0.01,warmup=8", 0.01, 8},
                                   {"randomk:density=0.02,warmup=5", 0.02, 5},
                                   {"topk:0.01,momentum=0.9,warmup=8", 0.01, 8},
                                   {"topk:0.01,ef=0,warmup=3", 0.01, 3},
                                   {"topk:0.5,warmup=4", 0.5, 4}};  // above 0.25: no warm-up
  spawn(2, [&](comm::Group& g) {
    for (const auto& c : cases) {
      SCOPED_TRACE(c.spec);
      auto reducer = reduce::make_compressed_reducer(c.spec, g);
      auto& compressed = static_cast<CompressedReducer&>(*reducer);
      reducer->set_layout(Layout::flat(sizes));
      std::vector<double> densities;
      for (uint64_t t = 0; t < c.warmup + 3; ++t) {
        const double d = schedule(c.target, c.warmup, t);
        const size_t k = kept(d, sizes[0]) + kept(d, sizes[1]);
        reducer->begin_step(t);
        EXPECT_NEAR(compressed.step_density(), d, 1e-15 * d);
        for (size_t b = 0; b < sizes.size(); ++b) {
          auto grad = gradient(g.rank(), b, t, sizes[b]);
          reducer->reduce(b, grad);
        }
        reducer->end_step();
        const auto figures = metrics(*reducer);
        densities.push_back(double(k) / double(total));
        EXPECT_EQ(figures.at("density"), densities.back()) << "step " << t;
        const double mean =
            std::accumulate(densities.begin(), densities.end(), 0.0) / double(densities.size());
        EXPECT_NEAR(figures.at("mean_density"), mean, 1e-15) << "step " << t;
        // The payload carries k entries: 8 bytes each for top-k, 4 for random-k's values.
        const size_t entry = c.spec.starts_with("topk") ? 8 : 4;
        EXPECT_EQ(figures.at("payload_bytes"), double(k * entry)) << "step " << t;
        if (t == 0 && c.target < 0.25) {
          EXPECT_EQ(k, kept(0.25, 1000) + kept(0.25, 300));
        }
        if (t >= c.warmup) {
          EXPECT_EQ(k, kept(c.target, 1000) + kept(c.target, 300));
        }
      }
    }
  });
  // The schedule in closed form at a few points.
  EXPECT_EQ(reduce::warmup_density(0.01, 0, 0), 0.01);
  EXPECT_EQ(reduce::warmup_density(0.01, 10, 0), 0.25);
  EXPECT_NEAR(reduce::warmup_density(0.01, 10, 5), 0.05, 1e-15);  // 0.25 sqrt(0.04)
  EXPECT_EQ(reduce::warmup_density(0.01, 10, 10), 0.01);
  EXPECT_EQ(reduce::warmup_density(0.01, 10, 1000), 0.01);
  EXPECT_EQ(reduce::warmup_density(0.5, 10, 0), 0.5);
}

TEST(DensityWarmup, ExDynaAimsAtTheScheduleAndSettlesOnTheTarget) {
  // ExDyna's threshold picks, every step, the level whose count is nearest to d_t * d: the
  // density sent tracks the schedule (its levels move the threshold by up to 17% a step, and
  // the schedule falls by 5% a step here), and mean_density is the mean of the step densities.
  const size_t d = 20000;
  const uint64_t warmup = 60;
  spawn(2, [&](comm::Group& g) {
    auto reducer = reduce::make_exdyna_reducer("density=0.01,warmup=60", g);
    auto& exdyna = static_cast<reduce::ExDynaReducer&>(*reducer);
    EXPECT_EQ(exdyna.options().warmup, warmup);
    std::vector<double> densities;
    for (uint64_t t = 0; t < warmup + 6; ++t) {
      auto grad = gradient(g.rank(), 0, t, d);
      reducer->reduce_step(t, grad);
      const double aim = schedule(0.01, warmup, t);
      EXPECT_NEAR(exdyna.step_density(), aim, 1e-15 * aim);
      const auto figures = metrics(*reducer);
      densities.push_back(figures.at("density"));
      EXPECT_EQ(figures.at("density_target"), 0.01);
      EXPECT_GT(densities.back(), aim / 1.2) << "step " << t;
      EXPECT_LT(densities.back(), aim * 1.2) << "step " << t;
      const double mean =
          std::accumulate(densities.begin(), densities.end(), 0.0) / double(densities.size());
      EXPECT_NEAR(figures.at("mean_density"), mean, 1e-12);
    }
    EXPECT_GT(densities.front(), 0.2);  // mildly sparse at the start
  });
}

TEST(MomentumState, SaveAndLoadContinueBitIdentically) {
  const std::vector<size_t> sizes = {500, 77};
  const std::vector<std::string> specs = {
      "topk:0.1,momentum=0.9",    "topk:0.1,momentum=0.9,mask=0,warmup=9",
      "randomk:0.2,momentum=0.5", "threshold:0.8,momentum=0.9,via=omnireduce,block=8",
      "topk:0.1,warmup=8",        "topk:0.1,ef=0,warmup=8",
      "qcs:bucket=64,rows=16"};
  spawn(2, [&](comm::Group& g) {
    for (const auto& spec : specs) {
      SCOPED_TRACE(spec);
      auto a = reduce::make_compressed_reducer(spec, g);
      a->set_layout(Layout::flat(sizes));
      auto run = [&](GradientReducer& r, uint64_t t) {
        std::vector<std::vector<float>> out;
        r.begin_step(t);
        for (size_t b = 0; b < sizes.size(); ++b) {
          out.push_back(gradient(g.rank(), b, t, sizes[b]));
          r.reduce(b, out.back());
        }
        r.end_step();
        return out;
      };
      for (uint64_t t = 0; t < 5; ++t) run(*a, t);
      const auto state = a->save_state();
      ASSERT_FALSE(state.empty());
      auto b = reduce::make_compressed_reducer(spec, g);
      b->set_layout(Layout::flat(sizes));
      b->load_state(state);
      EXPECT_EQ(b->save_state(), state);
      for (uint64_t t = 5; t < 12; ++t) {
        const auto x = run(*a, t), y = run(*b, t);
        for (size_t k = 0; k < sizes.size(); ++k) {
          ASSERT_EQ(0, std::memcmp(x[k].data(), y[k].data(), x[k].size() * sizeof(float)))
              << "step " << t << " bucket " << k;
        }
        EXPECT_EQ(a->step_metrics(), b->step_metrics()) << "step " << t;
      }
      EXPECT_EQ(a->save_state(), b->save_state());
      // Truncated or padded state is refused.
      EXPECT_INVALID(b->load_state(std::span<const std::byte>(state).first(state.size() - 1)),
                     "truncated");
      auto padded = state;
      padded.push_back(std::byte{0});
      EXPECT_INVALID(b->load_state(padded), "trailing bytes");
    }
  });
}

TEST(MomentumState, OldErrorFeedbackCheckpointsStillLoad) {
  // Version 1 (before momentum), written here by hand.
  const std::vector<float> r0 = {0.5f, -0.25f, 0.0f, 2.0f, 1.0f, -3.0f, 0.125f, 0.0f, 0.0f, 1.5f};
  const std::vector<std::byte> old = version1_state("topk:density=0.2,ef=1", r0);
  spawn(1, [&](comm::Group& g) {
    auto reducer = reduce::make_compressed_reducer("topk:0.2", g);
    auto& compressed = static_cast<CompressedReducer&>(*reducer);
    reducer->set_layout(Layout::flat(std::vector<size_t>{r0.size()}));
    reducer->load_state(old);
    const auto loaded = compressed.residual(0);
    ASSERT_EQ(std::vector<float>(loaded.begin(), loaded.end()), r0);
    // One step at one rank: z = g + r, the 2 largest |z| are the result, the rest the residual.
    std::vector<float> grad(r0.size(), 0.25f), z(r0.size());
    for (size_t i = 0; i < z.size(); ++i) z[i] = grad[i] + r0[i];
    reducer->reduce_step(7, grad);
    const auto s = top_k(z, 2);
    for (size_t i = 0; i < z.size(); ++i) {
      const bool sent = std::find(s.begin(), s.end(), i) != s.end();
      EXPECT_EQ(grad[i], sent ? z[i] : 0.0f) << i;
      EXPECT_EQ(compressed.residual(0)[i], sent ? 0.0f : z[i]) << i;
    }
    // The same checkpoint under another reducer is refused, naming both.
    auto with_momentum = reduce::make_compressed_reducer("topk:0.2,momentum=0.9", g);
    EXPECT_INVALID(with_momentum->load_state(old),
                   "holds the state of reducer 'topk:density=0.2,ef=1' but this run uses "
                   "'topk:density=0.2,ef=1,momentum=0.9'");
    // A sparsifier without error feedback kept no state before: an empty state still loads.
    auto plain = reduce::make_compressed_reducer("topk:0.2,ef=0", g);
    plain->load_state({});
    // A newer version is refused by number.
    ByteWriter v3;
    v3.put(uint32_t{0x52435444}).put(uint32_t{3});
    EXPECT_INVALID(plain->load_state(v3.take()), "version 3 is not one of 1, 2");
    // Momentum state written for other bucket sizes is refused.
    auto a = reduce::make_compressed_reducer("topk:0.2,momentum=0.9", g);
    std::vector<float> ten(10, 1.0f);
    a->reduce_step(0, ten);
    auto b = reduce::make_compressed_reducer("topk:0.2,momentum=0.9", g);
    b->set_layout(Layout::flat(std::vector<size_t>{11}));
    EXPECT_INVALID(b->load_state(a->save_state()),
                   "bucket 0 holds 10 elements; in the layout it has 11");
  });
}

TEST(ValidateSpec, RefusalsNameTheParameterOnBothPaths) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"fp16:momentum=0.9", "momentum=0.9 (momentum correction) needs a sparsifier"},
      {"qcs:rows=16,momentum=0.9", "momentum=0.9 (momentum correction) needs a sparsifier"},
      {"none:momentum=0.5", "momentum=0.5 (momentum correction) needs a sparsifier"},
      {"randomk:0.1,scale=1,momentum=0.9", "needs a sparsifier that sends entries as they are"},
      {"topk:0.01,momentum=1", "momentum=1 is not a number in [0, 1)"},
      {"topk:0.01,momentum=-0.1", "momentum=-0.1 is not a number in [0, 1)"},
      {"topk:0.01,momentum=0.9,ef=0", "cannot go with ef=0"},
      {"topk:0.01,momentum=0.9,beta=0.5", "beta=0.5 does not apply"},
      {"topk:0.01,mask=0", "mask= needs momentum > 0"},
      {"topk:0.01,momentum=0.9,mask=2", "mask=2 is not an integer in [0, 1]"},
      {"topk:0.01,warmup=-1", "warmup=-1 is not an integer"},
      {"topk:0.01,warmup=x", "warmup=x is not an integer"},
      {"threshold:0.5,warmup=10", "warmup=10 needs a compressor with a density"},
      {"fp16:warmup=10", "warmup=10 needs a compressor with a density"},
      {"fp16:1", "'1' is not key=value (fp16 has no parameters of its own"},
      {"exdyna:density=0.01,warmup=-1", "exdyna: warmup=-1 is not an integer"},
  };
  spawn(1, [&](comm::Group& g) {
    for (const auto& [spec, fragment] : bad) {
      const std::string made = invalid_message([&] { reduce::make_reducer(spec, g); });
      const std::string checked = invalid_message([&] { reduce::validate_reducer_spec(spec); });
      EXPECT_NE(made.find(fragment), std::string::npos) << spec << ": " << made;
      EXPECT_EQ(checked, made) << spec;
    }
  });
}

TEST(ValidateSpec, ValidateAcceptsWhatMakeReducerBuildsAndRefusesTheSame) {
  const std::vector<std::string> good = {
      "dense",
      "omnireduce",
      "omnireduce:block=4,slots=1,fusion=2",
      "omnireduce:block=256,aggregators=2,colocate=1,slots=2,fusion=256",
      "exdyna",
      "exdyna:0.001",
      "exdyna:density=0.01,momentum=0.9",
      "exdyna:density=0.1,lambda0=spec,levels=1",
      "exdyna:density=0.01,momentum=0.9,warmup=235",
      "powersgd",
      "powersgd:rank=2,start=1",
      "powersgd:rank=4,start=0,feedback=0,warm=0,seed=3,min_compress=2",
      "none",
      "fp16",
      "topk:0.1",
      "topk:1",
      "randomk:0.2",
      "threshold:lambda=0.5",
      "topk:0.1,via=omnireduce,block=8",
      "topk:0.05,via=omnireduce,block=4",
      "threshold:lambda=0.5,via=omnireduce",
      "threshold:lambda=0.5,via=allgather",
      "qcs:bucket=64,rows=16",
      "qcs:bucket=64,rows=32,shared=1,beta=0.5",
      "qcs:rows=16,recon=mmse,beta=0.5",
      "qcs:bucket=8,rows=2",
      "topk:ef=0,density=0.2",
      "randomk:0.1,beta=0.3",
      "topk:0.01,momentum=0.9",
      "topk:0.01,momentum=0.9,mask=0,warmup=100",
      "randomk:0.01,momentum=0.9,warmup=50",
      "threshold:0.01,momentum=0.9,via=omnireduce",
  };
  const std::vector<std::string> bad = {
      "dense:1",
      "top-k:0.01",
      "",
      "omnireduce:block=0",
      "omnireduce:colocate=0",
      "omnireduce:foo=1",
      "exdyna:density=2",
      "exdyna:densty=0.1",
      "powersgd:rank=0",
      "powersgd:bogus=1",
      "topk:0",
      "topk:dens=1",
      "topk:0.01,ef=2",
      "topk:0.1,,",
      "fp16:beta=0.5",
      "qcs:via=omnireduce",
      "qcs:bucket=100",
      "qcs:bucket=8,rows=2,beta=0.5",
      "topk:0.01,block=16",
      "topk:0.01,via=ring",
      "randomk:0.1,via=omnireduce",
  };
  spawn(1, [&](comm::Group& g) {
    for (const auto& spec : good) {
      SCOPED_TRACE(spec);
      EXPECT_NO_THROW(reduce::validate_reducer_spec(spec));
      auto reducer = reduce::make_reducer(spec, g);
      // A compressed reducer's canonical name is itself a valid spec.
      const std::string name = reducer->name();
      EXPECT_NO_THROW(reduce::validate_reducer_spec(name)) << name;
    }
    for (const auto& spec : bad) {
      SCOPED_TRACE(spec);
      const std::string made = invalid_message([&] { reduce::make_reducer(spec, g); });
      ASSERT_FALSE(made.empty());
      EXPECT_EQ(invalid_message([&] { reduce::validate_reducer_spec(spec); }), made);
    }
    // The parsed OmniReduce settings default to sparse::OmniReduceOptions's.
    const sparse::OmniReduceOptions defaults(g);
    const reduce::OmniReduceSettings parsed = reduce::parse_omnireduce_options("");
    EXPECT_EQ(parsed.block, defaults.block);
    EXPECT_EQ(parsed.slots, defaults.slots);
    EXPECT_EQ(parsed.fusion, defaults.blocks_per_message);
    EXPECT_EQ(parsed.aggregators, defaults.aggregators);
  });
}

}  // namespace
}  // namespace dtrain::test
