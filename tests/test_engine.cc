// The gradient engine without LibTorch: bucket plans, in-order reduction across ranks while
// gradients arrive, zero-filled unused parameters, non-finite handling.
#include <gtest/gtest.h>

#include <cmath>

#include "dtrain/common/error.h"
#include "dtrain/engine/engine.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using engine::GradientEngine;
using engine::ParamInfo;
using engine::Schedule;

std::vector<ParamInfo> params_of(std::vector<size_t> sizes) {
  std::vector<ParamInfo> out;
  for (size_t i = 0; i < sizes.size(); ++i) out.push_back({"p" + std::to_string(i), sizes[i], {}});
  return out;
}

TEST(Schedule, Parse) {
  EXPECT_EQ(Schedule::parse("single").kind, Schedule::Kind::kSingle);
  EXPECT_EQ(Schedule::parse("wfbp").kind, Schedule::Kind::kWfbp);
  EXPECT_EQ(Schedule::parse("fused").fused_mb, 25);
  EXPECT_EQ(Schedule::parse("fused:4.5").fused_mb, 4.5);
  for (const char* bad : {"fused:", "fused:x", "fused:-1", "fused:0", "ring", ""}) {
    EXPECT_THROW(Schedule::parse(bad), InvalidArgument) << bad;
  }
  EXPECT_THROW(engine::parse_on_nonfinite("ignore"), InvalidArgument);
}

TEST(Schedule, FusedBucketsFirstSmallThenCapped) {
  // 6 params of 0.5 MB each, readiness order 5..0: first bucket 1 MB, then 2 MB buckets.
  auto params = params_of(std::vector<size_t>(6, 131072));
  Schedule s = Schedule::parse("fused:2");
  auto plan = engine::plan_buckets(params, {5, 4, 3, 2, 1, 0}, s);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0], (std::vector<size_t>{5, 4}));
  EXPECT_EQ(plan[1], (std::vector<size_t>{3, 2, 1, 0}));
  EXPECT_EQ(engine::plan_buckets(params, {5, 4, 3, 2, 1, 0}, Schedule::parse("wfbp")).size(), 6u);
  EXPECT_EQ(engine::plan_buckets(params, {5, 4, 3, 2, 1, 0}, Schedule::parse("single")).size(), 1u);
  // A parameter larger than the cap gets a bucket of its own.
  auto big = params_of({10, 1 << 20, 10});
  auto plan2 = engine::plan_buckets(big, {2, 1, 0}, Schedule::parse("fused:1"));
  EXPECT_EQ(plan2.size(), 3u);
}

class EngineRanks : public ::testing::TestWithParam<std::tuple<int, std::string>> {};

TEST_P(EngineRanks, AveragesEveryParameterInOrder) {
  const auto [n, schedule] = GetParam();
  const std::vector<size_t> sizes = {7, 300000, 1, 5000, 40000};
  spawn(n, [&, n = n, schedule = schedule](comm::Group& g) {
    GradientEngine eng(params_of(sizes), Schedule::parse(schedule),
                       reduce::make_reducer("dense", g), engine::OnNonFinite::kAbort, nullptr);
    for (int64_t step = 0; step < 3; ++step) {
      eng.begin_step(step);
      // Gradients arrive in reverse order, as backprop produces them; parameter 2 gets none.
      for (size_t i = sizes.size(); i-- > 0;) {
        if (i == 2) continue;
        std::vector<float> grad(sizes[i]);
        for (size_t k = 0; k < grad.size(); ++k) grad[k] = float(g.rank() * 8 + (k % 5) + i + step);
        eng.on_gradient(i, grad);
      }
      ASSERT_TRUE(eng.finish());
      for (size_t i = 0; i < sizes.size(); ++i) {
        auto r = eng.reduced(i);
        ASSERT_EQ(r.size(), sizes[i]);
        for (size_t k = 0; k < r.size(); k += 997) {
          float want = i == 2 ? 0.0f : float(8.0 * (n - 1) / 2.0 + (k % 5) + i + step);
          ASSERT_NEAR(r[k], want, 1e-4) << "param " << i << " element " << k;
        }
      }
    }
    if (n == 1) {
      EXPECT_EQ(eng.reducer().bytes_sent(), 0u);  // nothing to send
    } else {
      EXPECT_GT(eng.reducer().bytes_sent(), 0u);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(RanksAndSchedules, EngineRanks,
                         ::testing::Combine(::testing::Values(1, 2, 3),
                                            ::testing::Values("single", "wfbp", "fused:0.5")),
                         [](const auto& info) {
                           std::string s = std::get<1>(info.param);
                           for (char& c : s) {
                             if (!isalnum(c)) c = '_';
                           }
                           return "n" + std::to_string(std::get<0>(info.param)) + "_" + s;
                         });

TEST(Engine, NonFiniteAbortsNamingParametersOrSkips) {
  spawn(2, [](comm::Group& g) {
    for (auto policy : {engine::OnNonFinite::kAbort, engine::OnNonFinite::kSkip}) {
      GradientEngine eng(params_of({4, 4}), Schedule::parse("wfbp"),
                         reduce::make_reducer("dense", g), policy, nullptr);
      eng.begin_step(0);
      std::vector<float> ok(4, 1.0f), bad(4, 1.0f);
      if (g.rank() == 1) bad[2] = std::nanf("");  // only one rank sees the NaN
      eng.on_gradient(1, ok);
      eng.on_gradient(0, bad);
      if (policy == engine::OnNonFinite::kSkip) {
        EXPECT_FALSE(eng.finish());
        EXPECT_EQ(eng.stats().skipped_steps, 1u);
        // The next step is fine again.
        eng.begin_step(1);
        eng.on_gradient(1, ok);
        eng.on_gradient(0, ok);
        EXPECT_TRUE(eng.finish());
      } else {
        try {
          eng.finish();
          FAIL() << "no error for a NaN gradient";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("p0"), std::string::npos) << e.what();
          EXPECT_NE(std::string(e.what()).find("step 0"), std::string::npos) << e.what();
        }
      }
    }
  });
}

// Local SGD's local steps: nothing is reduced, each rank keeps its own (accumulated) gradient,
// and the next communicating step reduces again.
TEST(Engine, StepWithoutCommunicationKeepsEachRanksGradient) {
  spawn(2, [](comm::Group& g) {
    GradientEngine eng(params_of({3, 5}), Schedule::parse("wfbp"),
                       reduce::make_reducer("dense", g), engine::OnNonFinite::kSkip, nullptr);
    const float mine = 1.0f + g.rank();
    eng.begin_step(0, 2, /*communicate=*/false);
    eng.on_gradient(1, std::vector<float>(5, mine));
    eng.on_gradient(0, std::vector<float>(3, mine));
    eng.next_micro_batch();
    eng.on_gradient(1, std::vector<float>(5, mine));
    eng.on_gradient(0, std::vector<float>(3, mine));
    ASSERT_TRUE(eng.finish());
    for (size_t p = 0; p < 2; ++p) {
      for (float v : eng.reduced(p)) EXPECT_EQ(v, 2 * mine);
    }
    EXPECT_EQ(eng.reducer().bytes_sent(), 0u);
    // A local NaN skips only this rank's step.
    eng.begin_step(1, 1, false);
    std::vector<float> bad(3, 1.0f);
    if (g.rank() == 1) bad[0] = std::nanf("");
    eng.on_gradient(0, bad);
    eng.on_gradient(1, std::vector<float>(5, 1.0f));
    EXPECT_EQ(eng.finish(), g.rank() == 0);
    // Communicating again: the average of 1 and 2.
    eng.begin_step(2);
    eng.on_gradient(1, std::vector<float>(5, mine));
    eng.on_gradient(0, std::vector<float>(3, mine));
    ASSERT_TRUE(eng.finish());
    for (float v : eng.reduced(0)) EXPECT_EQ(v, 1.5f);
    EXPECT_GT(eng.reducer().bytes_sent(), 0u);
  });
}

TEST(Engine, BadGradientSizeIsNamed) {
  spawn(1, [](comm::Group& g) {
    GradientEngine eng(params_of({4}), Schedule::parse("single"), reduce::make_reducer("dense", g),
                       engine::OnNonFinite::kAbort, nullptr);
    eng.begin_step(0);
    std::vector<float> wrong(5);
    EXPECT_THROW(eng.on_gradient(0, wrong), InvalidArgument);
    EXPECT_THROW(eng.on_gradient(3, wrong), InvalidArgument);
  });
}

// A gradient that arrives twice in a step is refused before it touches memory that may be on
// the wire; accumulation is explicit (micro-batches) and sums.
TEST(Engine, SecondGradientInAStepIsRefusedAndMicroBatchesSum) {
  spawn(2, [](comm::Group& g) {
    GradientEngine eng(params_of({3, 5}), Schedule::parse("wfbp"), reduce::make_reducer("dense", g),
                       engine::OnNonFinite::kAbort, nullptr);
    std::vector<float> a(3, 1.0f + g.rank()), b(5, 10.0f * (g.rank() + 1));
    eng.begin_step(0);
    eng.on_gradient(1, b);  // bucket 0 (param 1) is handed over at once
    EXPECT_INVALID(eng.on_gradient(1, b), "p1 arrived twice in step 0");
    eng.on_gradient(0, a);
    ASSERT_TRUE(eng.finish());
    EXPECT_EQ(eng.reduced(1)[4], 15.0f);  // (10 + 20) / 2: the refused copy was not added
    EXPECT_EQ(eng.reduced(0)[0], 1.5f);

    // Three micro-batches: the first two only accumulate, the last reduces the sum.
    eng.begin_step(1, 3);
    for (int m = 0; m < 3; ++m) {
      if (m > 0) eng.next_micro_batch();
      eng.on_gradient(1, b);
      eng.on_gradient(0, a);
    }
    EXPECT_INVALID(eng.next_micro_batch(), "has 3 micro-batches");
    ASSERT_TRUE(eng.finish());
    EXPECT_EQ(eng.reduced(1)[0], 45.0f);  // 3 * (10 + 20) / 2
    EXPECT_EQ(eng.reduced(0)[2], 4.5f);   // 3 * (1 + 2) / 2

    // finish() before the last micro-batch is an error, not a partial reduction.
    eng.begin_step(2, 2);
    EXPECT_INVALID(eng.finish(), "before its last micro-batch");
  });
}

// New buckets between steps: the reducer learns the new layout, the gradient memory moves only
// when the parameters' order changes, and results stay right.
TEST(Engine, SetBucketsRelayoutsTheReducer) {
  spawn(2, [](comm::Group& g) {
    GradientEngine eng(params_of({4, 6, 2}), Schedule::parse("single"),
                       reduce::make_reducer("dense", g), engine::OnNonFinite::kAbort, nullptr);
    ASSERT_EQ(eng.reducer().layout().buckets.size(), 1u);
    EXPECT_EQ(eng.reducer().layout().buckets[0].tensors[0].name, "p2");  // produced first
    const uint64_t v0 = eng.memory_version();
    eng.set_buckets({{2, 1}, {0}});  // same order, other boundaries: memory stays
    EXPECT_EQ(eng.memory_version(), v0);
    ASSERT_EQ(eng.reducer().layout().buckets.size(), 2u);
    EXPECT_EQ(eng.reducer().layout().buckets[0].numel, 8u);
    EXPECT_EQ(eng.reducer().layout().buckets[1].tensors[0].offset, 0u);
    eng.set_buckets({{0, 1}, {2}});  // another order: memory moves
    EXPECT_NE(eng.memory_version(), v0);
    EXPECT_INVALID(eng.set_buckets({{0, 1}}), "covers 2 of 3 parameters");
    EXPECT_INVALID(eng.set_buckets({{0, 1}, {1, 2}}), "lists parameter p1 twice");
    for (int64_t step = 0; step < 2; ++step) {
      eng.begin_step(step);
      for (size_t p : {2, 1, 0}) {
        std::vector<float> grad(eng.param(p).numel, float(g.rank() + p));
        eng.on_gradient(p, grad);
      }
      ASSERT_TRUE(eng.finish());
      for (size_t p = 0; p < 3; ++p) EXPECT_EQ(eng.reduced(p)[0], 0.5f + p) << p;
    }
  });
}

TEST(Reducer, UnknownNameListsValidOnes) {
  spawn(1, [](comm::Group& g) {
    try {
      reduce::make_reducer("top-k:0.01", g);
      FAIL();
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("valid: dense, omnireduce, exdyna, none, fp16, topk"),
                std::string::npos)
          << e.what();
    }
    EXPECT_THROW(reduce::make_reducer("dense:1", g), InvalidArgument);
  });
}

}  // namespace
}  // namespace dtrain::test
