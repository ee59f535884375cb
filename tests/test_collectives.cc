// Dense collectives: sweeps over world size, element count, element type and reduction, with
// rank-unique fills and an independently computed reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using collective::DataType;
using collective::ReduceOp;

const std::vector<size_t> kCounts = {0, 1, 7, 1000, (size_t{1} << 20) + 3};
const std::vector<ReduceOp> kOps = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax};

// Values are multiples of 1/8 in [-6, 6.5]: exact in every type, so sums of a few are exact.
template <typename T>
T fill(int rank, size_t i) {
  int64_t v = static_cast<int64_t>((rank * 37 + i * 17 + (i >> 7) * 3) % 101) - 48;
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(v) / T(8);
  } else {
    return static_cast<T>(v * 1000 + rank);
  }
}

template <typename T>
T reference(ReduceOp op, int n, size_t i) {
  T acc = fill<T>(0, i);
  for (int r = 1; r < n; ++r) {
    T v = fill<T>(r, i);
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg:
        acc += v;
        break;
      case ReduceOp::kMin:
        acc = std::min(acc, v);
        break;
      case ReduceOp::kMax:
        acc = std::max(acc, v);
        break;
    }
  }
  if (op == ReduceOp::kAvg) acc /= static_cast<T>(n);
  return acc;
}

template <typename T>
void expect_equal(const std::vector<T>& got, size_t begin, size_t n, ReduceOp op, int world,
                  const std::string& what) {
  for (size_t k = 0; k < n; ++k) {
    T want = reference<T>(op, world, begin + k);
    if constexpr (std::is_floating_point_v<T>) {
      if (std::abs(got[k] - want) > 1e-5 * (1 + std::abs(want))) {
        FAIL() << what << ": element " << begin + k << " is " << got[k] << ", expected " << want;
      }
    } else {
      if (got[k] != want) {
        FAIL() << what << ": element " << begin + k << " is " << got[k] << ", expected " << want;
      }
    }
  }
}

template <typename T>
std::vector<T> filled(int rank, size_t n, size_t offset = 0) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = fill<T>(rank, offset + i);
  return v;
}

class Collectives : public ::testing::TestWithParam<int> {};

template <typename T>
void allreduce_sweep(comm::Group& g, bool gloo) {
  for (size_t count : kCounts) {
    for (ReduceOp op : kOps) {
      auto data = filled<T>(g.rank(), count);
      collective::AllreduceOptions o(g);
      o.output = data;
      o.op = op;
      if (gloo) {
        collective::gloo_allreduce(o);
      } else {
        collective::allreduce(o);
      }
      expect_equal(data, 0, count, op, g.size(),
                   detail::concat(gloo ? "gloo " : "", "allreduce ", count, " ",
                                  collective::name(collective::dtype_of<T>()), " ",
                                  collective::name(op), " rank ", g.rank()));
    }
  }
}

TEST_P(Collectives, Allreduce) {
  spawn(GetParam(), [](comm::Group& g) {
    allreduce_sweep<float>(g, false);
    allreduce_sweep<double>(g, false);
    allreduce_sweep<int32_t>(g, false);
    allreduce_sweep<int64_t>(g, false);
  });
}

TEST_P(Collectives, AllreduceOutOfPlaceAndSmallSegments) {
  spawn(GetParam(), [](comm::Group& g) {
    for (size_t count : {size_t{5}, size_t{100003}}) {
      auto in = filled<float>(g.rank(), count);
      const auto original = in;
      std::vector<float> out(count, -1.0f);
      collective::AllreduceOptions o(g);
      o.input = collective::ConstView(std::span<const float>(in));
      o.output = out;
      o.segment_bytes = 4096;  // many segments per chunk: exercises the pipeline
      collective::allreduce(o);
      EXPECT_EQ(in, original);
      expect_equal(out, 0, count, ReduceOp::kSum, g.size(), "out-of-place allreduce");
    }
  });
}

TEST_P(Collectives, GlooBaselineAgrees) {
  spawn(GetParam(), [](comm::Group& g) {
    allreduce_sweep<float>(g, true);
    allreduce_sweep<int64_t>(g, true);
  });
}

template <typename T>
void reduce_scatter_sweep(comm::Group& g) {
  const int n = g.size();
  for (size_t per : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{(1 << 18) + 3}}) {
    for (ReduceOp op : kOps) {
      // Uneven counts: rank i's block has per + i elements.
      std::vector<size_t> counts;
      for (int i = 0; i < n; ++i) counts.push_back(per + i);
      size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
      size_t offset = std::accumulate(counts.begin(), counts.begin() + g.rank(), size_t{0});
      auto in = filled<T>(g.rank(), total);
      std::vector<T> out(counts[g.rank()]);
      collective::ReduceScatterOptions o(g);
      o.input = collective::ConstView(std::span<const T>(in));
      o.output = out;
      o.counts = counts;
      o.op = op;
      collective::reduce_scatter(o);
      expect_equal(out, offset, out.size(), op, n, detail::concat("reduce_scatter ", per));
    }
  }
}

TEST_P(Collectives, ReduceScatter) {
  spawn(GetParam(), [](comm::Group& g) {
    reduce_scatter_sweep<float>(g);
    reduce_scatter_sweep<double>(g);
    reduce_scatter_sweep<int32_t>(g);
    reduce_scatter_sweep<int64_t>(g);
  });
}

TEST_P(Collectives, ReduceScatterEvenSplit) {
  spawn(GetParam(), [](comm::Group& g) {
    const int n = g.size();
    for (size_t total : kCounts) {
      auto in = filled<int64_t>(g.rank(), total);
      size_t base = total / n, extra = total % n;
      size_t mine = base + (size_t(g.rank()) < extra ? 1 : 0);
      size_t offset = g.rank() * base + std::min<size_t>(g.rank(), extra);
      std::vector<int64_t> out(mine);
      collective::ReduceScatterOptions o(g);
      o.input = collective::ConstView(std::span<const int64_t>(in));
      o.output = out;
      collective::reduce_scatter(o);
      expect_equal(out, offset, mine, ReduceOp::kSum, n, "reduce_scatter even");
    }
  });
}

template <typename T>
void check_gathered(const std::vector<T>& out, const std::vector<size_t>& counts,
                    const std::string& what) {
  size_t off = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    for (size_t k = 0; k < counts[r]; ++k) {
      T want = fill<T>(static_cast<int>(r), k);
      if (out[off + k] != want) {
        FAIL() << what << ": block " << r << " element " << k << " is " << out[off + k]
               << ", expected " << want;
      }
    }
    off += counts[r];
  }
}

template <typename T>
void allgather_sweep(comm::Group& g) {
  const int n = g.size();
  for (size_t count : kCounts) {
    auto in = filled<T>(g.rank(), count);
    std::vector<T> out(count * n);
    collective::AllgatherOptions o(g);
    o.input = collective::ConstView(std::span<const T>(in));
    o.output = out;
    collective::allgather(o);
    check_gathered(out, std::vector<size_t>(n, count), detail::concat("allgather ", count));
  }
}

TEST_P(Collectives, Allgather) {
  spawn(GetParam(), [](comm::Group& g) {
    allgather_sweep<float>(g);
    allgather_sweep<double>(g);
    allgather_sweep<int32_t>(g);
    allgather_sweep<int64_t>(g);
  });
}

TEST_P(Collectives, Allgatherv) {
  spawn(GetParam(), [](comm::Group& g) {
    const int n = g.size();
    // Variable counts, including empty blocks and one large one.
    std::vector<std::vector<size_t>> patterns;
    std::vector<size_t> a, b, c;
    for (int r = 0; r < n; ++r) {
      a.push_back(r % 2 == 0 ? 0 : 7 * r + 1);
      b.push_back(r == n - 1 ? (1 << 20) + 3 : r);
      c.push_back(0);
    }
    patterns = {a, b, c};
    for (const auto& counts : patterns) {
      size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
      auto in = filled<int32_t>(g.rank(), counts[g.rank()]);
      std::vector<int32_t> out(total, -7);
      collective::AllgathervOptions o(g);
      o.input = collective::ConstView(std::span<const int32_t>(in));
      o.output = out;
      o.counts = counts;
      collective::allgatherv(o);
      check_gathered(out, counts, "allgatherv");
    }
  });
}

TEST_P(Collectives, Broadcast) {
  spawn(GetParam(), [](comm::Group& g) {
    const int n = g.size();
    for (size_t count : kCounts) {
      for (int root : {0, n - 1, n / 2}) {
        std::vector<double> data =
            g.rank() == root ? filled<double>(root, count) : std::vector<double>(count, -1);
        collective::BroadcastOptions o(g);
        o.data = data;
        o.root = root;
        o.segment_bytes = 64 << 10;
        collective::broadcast(o);
        check_gathered(
            data,
            [&] {
              std::vector<size_t> c(n, 0);
              c[root] = count;
              return c;
            }(),
            detail::concat("broadcast from ", root));
        if (count > 0 && root > 0) {
          EXPECT_EQ(data[0], fill<double>(root, 0));
        }
      }
    }
  });
}

TEST_P(Collectives, BarrierOrdersPhases) {
  const int n = GetParam();
  std::atomic<int> arrived{0};
  std::atomic<bool> early{false};
  spawn(n, [&](comm::Group& g) {
    for (int round = 1; round <= 3; ++round) {
      arrived++;
      collective::barrier(collective::BarrierOptions(g));
      if (arrived.load() < round * n) early = true;
      collective::barrier(collective::BarrierOptions(g));
    }
  });
  EXPECT_FALSE(early) << "a rank left a barrier before every rank had entered it";
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Collectives, ::testing::Values(1, 2, 3, 4, 5, 8),
                         [](const auto& info) { return "n" + std::to_string(info.param); });

// ----------------------------------------------------------------------------------------------
// Disagreement between ranks is detected and named, never a hang.

TEST(CollectiveBadInput, MismatchedAllreduceCounts) {
  TempDir dir;
  auto errors = run_threads(4, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 4, comm::Millis(10000)));
    std::vector<float> data(r == 2 ? 1001 : 1000, 1.0f);
    collective::AllreduceOptions o(*g);
    o.output = data;
    collective::allreduce(o);
  });
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r << " finished an allreduce with mismatched counts";
    EXPECT_THROW(std::rethrow_exception(errors[r]), ProtocolError) << what(errors[r]);
    EXPECT_NE(what(errors[r]).find("rank 2 called allreduce of 1001 float32"), std::string::npos)
        << "rank " << r << ": " << what(errors[r]);
  }
}

TEST(CollectiveBadInput, MismatchedDtypeAndRoot) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(10000)));
    std::vector<int32_t> data(10, r);
    collective::BroadcastOptions o(*g);
    o.data = data;
    o.root = r == 1 ? 1 : 0;
    collective::broadcast(o);
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[r]);
    EXPECT_THROW(std::rethrow_exception(errors[r]), ProtocolError);
    EXPECT_NE(what(errors[r]).find("from root 1"), std::string::npos) << what(errors[r]);
  }
}

TEST(CollectiveBadInput, MismatchedAllgathervCounts) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(10000)));
    std::vector<size_t> counts = {1, 2, r == 0 ? size_t{4} : size_t{3}};
    std::vector<float> in(counts[r]), out(counts[0] + counts[1] + counts[2]);
    collective::AllgathervOptions o(*g);
    o.input = collective::ConstView(std::span<const float>(in));
    o.output = out;
    o.counts = counts;
    collective::allgatherv(o);
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[r]);
    EXPECT_THROW(std::rethrow_exception(errors[r]), ProtocolError) << what(errors[r]);
  }
}

TEST(CollectiveBadInput, LocalShapeErrorsNameTheProblem) {
  spawn(2, [](comm::Group& g) {
    std::vector<float> a(10), b(11);
    collective::AllreduceOptions o(g);
    o.input = collective::ConstView(std::span<const float>(a));
    o.output = b;
    EXPECT_THROW(collective::allreduce(o), InvalidArgument);
    collective::AllgathervOptions v(g);
    v.output = b;
    v.counts = {5};
    EXPECT_THROW(collective::allgatherv(v), InvalidArgument);
    collective::BroadcastOptions bo(g);
    bo.data = a;
    bo.root = 2;
    EXPECT_THROW(collective::broadcast(bo), InvalidArgument);
    EXPECT_FALSE(g.poisoned());
  });
}

TEST(CollectiveBadInput, PoisonedGroupRefusesUntilReconnect) {
  TempDir dir;
  auto errors = run_threads(2, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 2, comm::Millis(10000)));
    std::vector<float> data(r == 0 ? 8 : 9, 1.0f);
    collective::AllreduceOptions o(*g);
    o.output = data;
    EXPECT_THROW(collective::allreduce(o), ProtocolError);
    EXPECT_TRUE(g->poisoned());
    std::vector<float> ok(8, float(r + 1));
    collective::AllreduceOptions o2(*g);
    o2.output = ok;
    EXPECT_THROW(collective::allreduce(o2), ProtocolError);  // still the stored failure
    g->reconnect();
    EXPECT_FALSE(g->poisoned());
    collective::allreduce(o2);
    EXPECT_EQ(ok, std::vector<float>(8, 3.0f));
  });
  for (auto& e : errors) EXPECT_FALSE(e) << what(e);
}

}  // namespace
}  // namespace dtrain::test
