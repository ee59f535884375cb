// BucketStream against an independent computation: the exact average of every rank's buckets
// while a layout is learnt, and a reducer driven through its own protocol once it is known.
#include "dtrain/reduce/bucket_stream.h"

#include <gtest/gtest.h>

#include <random>

#include "harness.h"

namespace dtrain::reduce {
namespace {

using test::spawn;
using test::throws_invalid;

// Rank r's gradient for bucket b of step s: deterministic, different on every rank.
std::vector<float> grad(int rank, uint64_t step, size_t bucket, size_t n) {
  std::mt19937 rng(static_cast<uint32_t>(rank * 1000003 + step * 1009 + bucket * 17 + 1));
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> g(n);
  for (auto& x : g) x = d(rng);
  return g;
}

std::vector<float> exact_average(int size, uint64_t step, size_t bucket, size_t n) {
  std::vector<double> sum(n, 0.0);
  for (int r = 0; r < size; ++r) {
    auto g = grad(r, step, bucket, n);
    for (size_t i = 0; i < n; ++i) sum[i] += g[i];
  }
  std::vector<float> avg(n);
  for (size_t i = 0; i < n; ++i) avg[i] = static_cast<float>(sum[i] / size);
  return avg;
}

// A bucket of tensors of these shapes.
std::vector<TensorSlot> slots(std::vector<std::vector<int64_t>> shapes) {
  std::vector<TensorSlot> out;
  for (auto& s : shapes) out.push_back({"", std::move(s), 0, 0});
  return out;
}

size_t numel(const std::vector<TensorSlot>& t) {
  size_t n = 0;
  for (const auto& s : t) {
    size_t k = 1;
    for (auto d : s.shape) k *= static_cast<size_t>(d);
    n += k;
  }
  return n;
}

void expect_near(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-5f) << what << " element " << i;
  }
}

// DDP's pattern: a first layout on step 0, rebuilt buckets from step 1. Dense steps average
// exactly; the reducer is used from step 2 on.
TEST(BucketStream, LearnsTheLayoutAcrossARebuildAndAveragesExactly) {
  const int size = 3;
  const std::vector<std::vector<TensorSlot>> first = {slots({{64, 32}, {64}}), slots({{10, 64}})};
  const std::vector<std::vector<TensorSlot>> rebuilt = {slots({{10, 64}, {64}}), slots({{64, 32}})};
  spawn(size, [&](comm::Group& group) {
    BucketStream stream(group, "dense");
    for (uint64_t step = 0; step < 4; ++step) {
      const auto& layout = step == 0 ? first : rebuilt;
      for (size_t b = 0; b < layout.size(); ++b) {
        const size_t n = numel(layout[b]);
        auto g = grad(group.rank(), step, b, n);
        stream.reduce(b, g, layout[b], b + 1 == layout.size());
        expect_near(g, exact_average(size, step, b, n), "dense stream");
      }
      // Steps 0 and 1 saw a new layout; from step 2 the reducer moves the bytes.
      EXPECT_EQ(stream.learning_steps(), std::min<uint64_t>(step + 1, 2));
      EXPECT_EQ(stream.reducer().bytes_sent() > 0, step >= 2) << "step " << step;
    }
    EXPECT_EQ(stream.steps(), 4u);
    // The installed layout is the rebuilt one, with the shapes and offsets it was given.
    const auto& installed = stream.reducer().layout();
    ASSERT_EQ(installed.buckets.size(), 2u);
    EXPECT_EQ(installed.buckets[0].tensors[1].offset, 640u);
    EXPECT_EQ(installed.buckets[1].tensors[0].shape, (std::vector<int64_t>{64, 32}));
  });
}

// Once the layout is known, the stream is the reducer run through its protocol
// (set_layout, begin_step(step), reduce(b) in order, end_step) by an independent driver on a
// second group: same results, its state (top-k's error feedback) carried across steps.
TEST(BucketStream, KnownLayoutRunsTheReducerWithItsState) {
  const int size = 2;
  const std::vector<std::vector<TensorSlot>> layout = {slots({{50, 40}}), slots({{300}, {20}})};
  std::vector<std::vector<std::vector<float>>> via_stream(size), via_protocol(size);
  const uint64_t steps = 5;
  spawn(size, [&](comm::Group& group) {
    BucketStream stream(group, "topk:0.05");
    for (uint64_t step = 0; step < steps; ++step) {
      for (size_t b = 0; b < layout.size(); ++b) {
        auto g = grad(group.rank(), step, b, numel(layout[b]));
        stream.reduce(b, g, layout[b], b + 1 == layout.size());
        via_stream[group.rank()].push_back(g);
      }
    }
    EXPECT_EQ(stream.learning_steps(), 1u);
  });
  spawn(size, [&](comm::Group& group) {
    auto reducer = make_reducer("topk:0.05", group);
    Layout l;
    for (size_t b = 0; b < layout.size(); ++b) {
      auto t = layout[b];
      size_t off = 0;
      for (size_t j = 0; j < t.size(); ++j) {
        t[j].name = "b" + std::to_string(b) + "." + std::to_string(j);
        t[j].numel = numel({t[j]});
        t[j].offset = off;
        off += t[j].numel;
      }
      l.buckets.push_back({off, t});
    }
    for (uint64_t step = 0; step < steps; ++step) {
      for (size_t b = 0; b < layout.size(); ++b) {
        auto g = grad(group.rank(), step, b, numel(layout[b]));
        if (step == 0) {
          g = exact_average(size, step, b, g.size());  // the stream's learning step
        } else {
          if (b == 0) {
            if (step == 1) reducer->set_layout(l);
            reducer->begin_step(step);
          }
          reducer->reduce(b, g);
          if (b + 1 == layout.size()) reducer->end_step();
        }
        via_protocol[group.rank()].push_back(g);
      }
    }
  });
  for (int r = 0; r < size; ++r) {
    ASSERT_EQ(via_stream[r].size(), via_protocol[r].size());
    for (size_t i = 0; i < via_stream[r].size(); ++i) {
      expect_near(via_stream[r][i], via_protocol[r][i], "stream vs protocol");
    }
  }
  // Top-k is not the exact average: the comparison above is not one of two dense paths.
  auto exact = exact_average(size, 3, 0, numel(layout[0]));
  size_t differ = 0;
  for (size_t i = 0; i < exact.size(); ++i)
    differ += std::abs(exact[i] - via_stream[0][6][i]) > 1e-4f;
  EXPECT_GT(differ, exact.size() / 2);
}

// A layout that changes in the middle of a step: the buckets before the change go through the
// reducer, the rest dense, and the next step uses the new layout.
TEST(BucketStream, ChangeInTheMiddleOfAStep) {
  const int size = 2;
  const std::vector<std::vector<TensorSlot>> a = {slots({{128}}), slots({{64}})};
  const std::vector<std::vector<TensorSlot>> b = {slots({{128}}), slots({{32}}), slots({{32}})};
  spawn(size, [&](comm::Group& group) {
    BucketStream stream(group, "dense");
    auto run = [&](uint64_t step, const std::vector<std::vector<TensorSlot>>& layout) {
      for (size_t i = 0; i < layout.size(); ++i) {
        const size_t n = numel(layout[i]);
        auto g = grad(group.rank(), step, i, n);
        stream.reduce(i, g, layout[i], i + 1 == layout.size());
        expect_near(g, exact_average(size, step, i, n), "mid-step change");
      }
    };
    run(0, a);
    run(1, a);
    const uint64_t before = stream.reducer().bytes_sent();
    EXPECT_GT(before, 0u);
    run(2, b);  // bucket 0 through the reducer (128 floats), buckets 1 and 2 dense
    EXPECT_EQ(stream.reducer().bytes_sent() - before, 128u * 4);  // 2 ranks: 2(n-1)/n = 1
    EXPECT_EQ(stream.learning_steps(), 2u);
    run(3, b);
    EXPECT_EQ(stream.learning_steps(), 2u);
    EXPECT_EQ(stream.reducer().layout().buckets.size(), 3u);
    const uint64_t at = stream.reducer().bytes_sent();
    run(4, {b[0]});  // fewer buckets: its one bucket is the last too soon, so the step is dense
    EXPECT_EQ(stream.reducer().bytes_sent(), at);
    EXPECT_EQ(stream.learning_steps(), 3u);
    EXPECT_EQ(stream.reducer().layout().buckets.size(), 1u);
  });
}

TEST(BucketStream, BadInputIsNamed) {
  spawn(1, [&](comm::Group& group) {
    EXPECT_INVALID(BucketStream(group, "nosuch:1"), "nosuch");
    BucketStream stream(group, "dense");
    std::vector<float> g(10, 1.f);
    EXPECT_INVALID(stream.reduce(1, g, slots({{10}}), true), "bucket 1 arrived where bucket 0");
    EXPECT_INVALID(stream.reduce(0, g, slots({{3, 3}}), true), "bucket 0: its tensors hold 9");
    stream.reduce(0, g, {}, true);  // no shapes: one flat tensor
    EXPECT_EQ(stream.steps(), 1u);
    // A step that fails in its middle ends there: the next one starts at bucket 0.
    stream.reduce(0, g, slots({{10}}), false);
    EXPECT_INVALID(stream.reduce(1, g, slots({{3, 3}}), true), "bucket 1: its tensors hold 9");
    stream.reduce(0, g, slots({{10}}), true);
    EXPECT_EQ(stream.steps(), 2u);
    // A scalar tensor (shape {}, numel left to the stream) holds one element.
    std::vector<float> one(1, 2.f);
    stream.reduce(0, one, {{"scale", {}, 0, 0}}, true);
    EXPECT_EQ(stream.steps(), 3u);
  });
}

}  // namespace
}  // namespace dtrain::reduce
