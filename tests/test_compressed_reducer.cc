// The compressed reducer (reduce/compressed.h): every rank bit-identical for every compressor,
// byte accounting, spec parsing, error-feedback state, and top-k through OmniReduce.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "dtrain/common/error.h"
#include "dtrain/compress/compressor.h"
#include "dtrain/reduce/compressed.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using compress::make_compressor;

float fill(int rank, size_t bucket, uint64_t step, size_t i) {
  return std::sin(0.37f * float(i) + 1.3f * float(rank) + 0.11f * float(step) + float(bucket)) *
         (1.0f + 0.5f * float(rank));
}

class Reducer : public ::testing::TestWithParam<int> {};

TEST_P(Reducer, EveryRankEndsBitIdenticalAndNoneIsTheDenseAverage) {
  const int world = GetParam();
  const std::vector<std::string> specs = {"none",
                                          "fp16",
                                          "topk:0.1",
                                          "topk:1",
                                          "randomk:0.2",
                                          "threshold:lambda=0.5",
                                          "topk:0.1,via=omnireduce,block=8",
                                          "threshold:lambda=0.5,via=omnireduce",
                                          "qcs:bucket=64,rows=16",
                                          "qcs:bucket=64,rows=32,shared=1,beta=0.5"};
  const std::vector<size_t> buckets = {100, 37, 1, 0};
  // results[spec][rank]: every bucket of the last step, concatenated.
  std::vector<std::vector<std::vector<float>>> results(specs.size(),
                                                       std::vector<std::vector<float>>(world));
  std::mutex mu;
  spawn(world, [&](comm::Group& g) {
    for (size_t s = 0; s < specs.size(); ++s) {
      auto reducer = reduce::make_compressed_reducer(specs[s], g);
      reducer->set_layout(reduce::Layout::flat(buckets));
      std::vector<float> last;
      for (uint64_t step = 0; step < 3; ++step) {
        last.clear();
        reducer->begin_step(step);
        for (size_t b = 0; b < buckets.size(); ++b) {
          std::vector<float> grad(buckets[b]);
          for (size_t i = 0; i < grad.size(); ++i) grad[i] = fill(g.rank(), b, step, i);
          reducer->reduce(b, grad);
          last.insert(last.end(), grad.begin(), grad.end());
        }
        reducer->end_step();
      }
      if (world == 1) {
        EXPECT_EQ(reducer->bytes_sent(), 0u) << specs[s];
      } else {
        EXPECT_GT(reducer->bytes_sent(), 0u) << specs[s];
        EXPECT_GT(reducer->bytes_received(), 0u) << specs[s];
      }
      std::lock_guard<std::mutex> lock(mu);
      results[s][g.rank()] = std::move(last);
    }
  });
  for (size_t s = 0; s < specs.size(); ++s) {
    for (int r = 1; r < world; ++r) {
      ASSERT_EQ(results[s][r].size(), results[s][0].size());
      EXPECT_EQ(std::memcmp(results[s][r].data(), results[s][0].data(),
                            results[s][0].size() * sizeof(float)),
                0)
          << specs[s] << ": rank " << r << " differs from rank 0";
    }
    // Dense average of the last step (step 2), for the exact compressors.
    if (specs[s] != "none" && specs[s] != "topk:1" && specs[s] != "fp16") continue;
    size_t pos = 0;
    for (size_t b = 0; b < buckets.size(); ++b) {
      for (size_t i = 0; i < buckets[b]; ++i, ++pos) {
        double avg = 0;
        for (int r = 0; r < world; ++r) avg += fill(r, b, 2, i);
        avg /= world;
        // fp16: each input and each of the world-1 partial sums rounds to half (2^-11 relative),
        // bounded by the sum of magnitudes; float: a few roundings of values below 10.
        double magnitude = 0;
        for (int r = 0; r < world; ++r) magnitude += std::fabs(fill(r, b, 2, i));
        const double tol = specs[s] == "fp16" ? 0x1p-11 * (world + 1) * magnitude / world : 1e-5;
        ASSERT_NEAR(results[s][0][pos], avg, tol) << specs[s] << " bucket " << b << " i " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Reducer, ::testing::Values(1, 2, 3, 4));

TEST(ReducerVia, OmniReduceSumsTheSameSelectionsAsTheAllgather) {
  // The same top-k selections (same inputs, same error feedback) summed by OmniReduce and by the
  // allgather: equal results every step; OmniReduce moves only the blocks holding a selection.
  spawn(3, [](comm::Group& g) {
    auto gathered = reduce::make_compressed_reducer("topk:0.05", g);
    auto omni = reduce::make_compressed_reducer("topk:0.05,via=omnireduce,block=4", g);
    EXPECT_EQ(omni->name(), "topk:density=0.05,ef=1,via=omnireduce,block=4");
    const std::vector<size_t> sizes = {4000, 4000};
    gathered->set_layout(reduce::Layout::flat(sizes));
    omni->set_layout(reduce::Layout::flat(sizes));
    for (uint64_t step = 0; step < 4; ++step) {
      gathered->begin_step(step);
      omni->begin_step(step);
      for (size_t b = 0; b < 2; ++b) {
        // Rank-specific inputs whose large entries cluster in a few blocks.
        std::vector<float> a(4000), c;
        for (size_t i = 0; i < a.size(); ++i) {
          a[i] = fill(g.rank(), b, step, i) * ((i / 64) % 16 == size_t(g.rank()) ? 50.0f : 1.0f);
        }
        c = a;
        gathered->reduce(b, a);
        omni->reduce(b, c);
        ASSERT_EQ(a, c) << "step " << step << " bucket " << b;
      }
      gathered->end_step();
      omni->end_step();
    }
    const auto m = omni->step_metrics();
    ASSERT_EQ(m.size(), 6u);  // then density, mean_density (tests/test_compressed_momentum.cc)
    EXPECT_EQ(m[2].first, "union_density");
    EXPECT_GT(m[2].second, 0.0);
    EXPECT_LT(m[2].second, 0.5);
    EXPECT_GT(omni->bytes_sent(), 0u);
  });
}

TEST(ReducerVia, BadUsesAreNamed) {
  spawn(1, [](comm::Group& g) {
    EXPECT_INVALID(reduce::make_compressed_reducer("qcs:via=omnireduce", g),
                   "via=omnireduce takes the sparsifiers topk and threshold");
    EXPECT_INVALID(reduce::make_compressed_reducer("topk:0.01,via=ring", g),
                   "via=ring is not allgather or omnireduce");
    EXPECT_INVALID(reduce::make_compressed_reducer("topk:0.01,block=16", g),
                   "block= needs via=omnireduce");
    EXPECT_INVALID(reduce::make_compressed_reducer("topk:0.01,via=omnireduce,block=0", g),
                   "block=0 is not an integer in [1, 16777216]");
    EXPECT_EQ(reduce::make_compressed_reducer("threshold:lambda=0.5,via=allgather", g)->name(),
              "threshold:lambda=0.5,ef=1");
  });
}

TEST(ReducerBytes, CountsWhatTheRingMoves) {
  spawn(3, [](comm::Group& g) {
    const size_t n = 1000;  // topk 0.01: 10 kept, 80-byte payloads, all equal: no size exchange
    reduce::CompressedReducer topk(g, make_compressor("topk:0.01"), true);
    reduce::CompressedReducer none(g, make_compressor("none"), false);
    std::vector<float> grad(n, 1.0f);
    topk.reduce_step(0, grad);
    EXPECT_EQ(topk.bytes_sent(), 2u * 80);
    EXPECT_EQ(topk.bytes_received(), 2u * 80);
    none.reduce_step(0, grad);
    // 1000 floats in chunks 334, 333, 333: rank r sends 2*1000 - c_r - c_{r+1} elements.
    const size_t c[3] = {334, 333, 333};
    const int r = g.rank();
    EXPECT_EQ(none.bytes_sent(), 4 * (2 * n - c[r] - c[(r + 1) % 3]));
    EXPECT_EQ(none.bytes_received(), 4 * (2 * n - c[(r + 2) % 3] - c[r]));
    const auto m = topk.step_metrics();
    ASSERT_EQ(m.size(), 4u);  // then density, mean_density (tests/test_compressed_momentum.cc)
    EXPECT_EQ(m[1].first, "compress_ratio");
    EXPECT_DOUBLE_EQ(m[1].second, 4000.0 / 80);
  });
}

TEST(ReducerSpec, ParsesReducerParametersAndRejectsBadOnes) {
  spawn(1, [](comm::Group& g) {
    EXPECT_EQ(reduce::make_compressed_reducer("topk:0.01", g)->name(), "topk:density=0.01,ef=1");
    EXPECT_EQ(reduce::make_compressed_reducer("fp16", g)->name(), "fp16:ef=0");
    EXPECT_EQ(reduce::make_compressed_reducer("qcs:rows=16,recon=mmse,beta=0.5", g)->name(),
              "qcs:bucket=256,rows=16,levels=1,seed=0,recon=mmse,shared=0,ef=1,beta=0.5");
    // Unbiased QCS: gamma = 8/2 - 1 + 8 ln(2) / (4 (2 - 1)) = 4.386, default beta 1/(1+gamma),
    // and beta >= 2/(1+gamma) = 0.371 is refused.
    const auto unbiased = reduce::make_compressed_reducer("qcs:bucket=8,rows=2", g);
    const double gamma = 3 + 2 * std::log(2.0);
    const std::string prefix =
        "qcs:bucket=8,rows=2,levels=1,seed=0,recon=unbiased,shared=0,ef=1,beta=";
    ASSERT_EQ(unbiased->name().substr(0, prefix.size()), prefix);
    EXPECT_DOUBLE_EQ(std::stod(unbiased->name().substr(prefix.size())), 1 / (1 + gamma));
    EXPECT_INVALID(reduce::make_compressed_reducer("qcs:bucket=8,rows=2,beta=0.5", g),
                   "must be below 2/(1+gamma)");
    EXPECT_EQ(reduce::make_compressed_reducer(unbiased->name(), g)->name(), unbiased->name());
    EXPECT_EQ(reduce::make_compressed_reducer("topk:ef=0,density=0.2", g)->name(),
              "topk:density=0.2,ef=0");
    const std::string canonical =
        reduce::make_compressed_reducer("randomk:0.1,beta=0.3", g)->name();
    EXPECT_EQ(reduce::make_compressed_reducer(canonical, g)->name(), canonical);
    EXPECT_INVALID(reduce::make_compressed_reducer("topk:0.01,ef=2", g),
                   "ef=2 is not an integer in [0, 1]");
    EXPECT_INVALID(reduce::make_compressed_reducer("fp16:beta=0.5", g),
                   "beta needs error feedback");
    EXPECT_INVALID(reduce::make_compressed_reducer("topk:beta=0", g), "beta=0 is not a number");
    EXPECT_INVALID(reduce::make_compressed_reducer("topk:dens=1", g),
                   "unknown parameter 'dens' (valid: density, ef, beta, via, block, momentum, "
                   "mask, warmup)");
    EXPECT_INVALID(reduce::make_compressed_reducer("lz4", g), "unknown compressor 'lz4'");
    EXPECT_EQ(reduce::compressed_reducer_names(), compress::compressor_names());
  });
}

TEST(ReducerState, BucketLayoutIsCheckedAndStateRoundTrips) {
  spawn(1, [](comm::Group& g) {
    auto reducer = reduce::make_compressed_reducer("topk:0.1", g);
    std::vector<float> a(100, 1.0f), b(37, 2.0f);
    reducer->reduce_step(0, std::vector<std::span<float>>{a, b});
    std::vector<float> c(36, 1.0f);
    EXPECT_INVALID(reducer->reduce_step(1, std::vector<std::span<float>>{a, c}),
                   "bucket 1 of step 1 has 36 elements but the layout has 37");

    const auto state = reducer->save_state();
    auto copy = reduce::make_compressed_reducer("topk:0.1", g);
    copy->load_state(state);
    EXPECT_EQ(copy->save_state(), state);
    auto other = reduce::make_compressed_reducer("topk:0.2", g);
    EXPECT_INVALID(other->load_state(state), "state of reducer 'topk:density=0.1,ef=1'");
    auto plain = reduce::make_compressed_reducer("fp16", g);
    EXPECT_INVALID(plain->load_state(state), "keeps no state");
    EXPECT_INVALID(copy->load_state(std::span<const std::byte>(state).first(5)), "expects");
  });
}

}  // namespace
}  // namespace dtrain::test
