// OmniReduce and the AGsparse baseline: sweeps over world size, tensor size, block size, fusion,
// slots and non-zero patterns, against a dense rank-order reference computed here, compared bit for
// bit; statistics against counts computed here; disagreement and timeouts named, never a hang.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "dtrain/common/error.h"
#include "dtrain/reduce/reducer.h"
#include "dtrain/sparse/omnireduce.h"
#include "harness.h"

namespace dtrain::test {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

enum class Pattern { kZero, kSingleBlock, kOnePercent, kThirtyPercent, kRandomPerRank, kDense };
enum class Overlap { kSame, kDisjoint, kIndependent };

const char* name(Pattern p) {
  switch (p) {
    case Pattern::kZero:
      return "zero";
    case Pattern::kSingleBlock:
      return "single-block";
    case Pattern::kOnePercent:
      return "1%";
    case Pattern::kThirtyPercent:
      return "30%";
    case Pattern::kRandomPerRank:
      return "random-per-rank";
    case Pattern::kDense:
      return "dense";
  }
  return "?";
}

const char* name(Overlap o) {
  switch (o) {
    case Overlap::kSame:
      return "same";
    case Overlap::kDisjoint:
      return "disjoint";
    case Overlap::kIndependent:
      return "independent";
  }
  return "?";
}

struct Case {
  size_t n = 0;
  size_t block = 256;
  size_t columns = 8;
  int slots = 2;
  Pattern pattern = Pattern::kDense;
  Overlap overlap = Overlap::kIndependent;
  bool inexact = false;  // values whose sums round: checks the summation order, not just the sum

  std::string str() const {
    return detail::concat("n=", n, " block=", block, " columns=", columns, " slots=", slots, " ",
                          name(pattern), " ", name(overlap), inexact ? " inexact" : "");
  }
};

// Whether rank r selects block b (the elements of a selected block are still partly zero).
bool selected(const Case& c, int r, int world, uint64_t b, uint64_t blocks) {
  const uint64_t h = mix(c.overlap == Overlap::kIndependent ? b * 1000003 + r : b);
  if (c.overlap == Overlap::kDisjoint && c.pattern != Pattern::kZero &&
      static_cast<int>(mix(b ^ 0x5555) % world) != r) {
    return false;
  }
  switch (c.pattern) {
    case Pattern::kZero:
      return false;
    case Pattern::kSingleBlock:
      return b == (c.overlap == Overlap::kSame ? blocks / 2 : (blocks / 3 + r * 5) % blocks);
    case Pattern::kOnePercent:
      return h % 100 == 0;
    case Pattern::kThirtyPercent:
      return h % 100 < 30;
    case Pattern::kRandomPerRank:
      return h % 100 < static_cast<uint64_t>((r * 37 + 11) % 101);
    case Pattern::kDense:
      return true;
  }
  return false;
}

// Rank r's input: multiples of 1/8 in [-6, 6] (sums of a few are exact), some zero elements in
// selected blocks; with `inexact`, thirds of varied magnitude instead.
std::vector<float> input(const Case& c, int r, int world) {
  std::vector<float> x(c.n, 0.0f);
  const uint64_t blocks = (c.n + c.block - 1) / c.block;
  for (uint64_t b = 0; b < blocks; ++b) {
    if (!selected(c, r, world, b, blocks)) continue;
    for (size_t i = b * c.block; i < std::min(c.n, (b + 1) * c.block); ++i) {
      const uint64_t h = mix(i * 31 + r);
      if (h % 4 == 0 && c.block > 1) continue;  // a zero inside a non-zero block
      int v = static_cast<int>(h % 97) - 48;
      if (v == 0) v = 49;
      x[i] = c.inexact ? static_cast<float>(v) / 3.0f * static_cast<float>(1 + h % 1000)
                       : static_cast<float>(v) / 8.0f;
    }
  }
  return x;
}

struct Expected {
  std::vector<float> sum;  // 0 + x_0 + x_1 + ... in rank order
  uint64_t blocks_nonzero_local = 0;
  uint64_t blocks_union = 0;
};

Expected expected(const Case& c, int rank, int world) {
  Expected e;
  e.sum.assign(c.n, 0.0f);
  const uint64_t blocks = (c.n + c.block - 1) / c.block;
  std::vector<uint8_t> any(blocks, 0);
  for (int r = 0; r < world; ++r) {
    auto x = input(c, r, world);
    for (uint64_t b = 0; b < blocks; ++b) {
      bool nz = false;
      for (size_t i = b * c.block; i < std::min(c.n, (b + 1) * c.block); ++i) nz |= x[i] != 0.0f;
      any[b] |= nz;
      if (r == rank) e.blocks_nonzero_local += nz;
    }
    for (size_t i = 0; i < c.n; ++i) e.sum[i] += x[i];
  }
  for (uint8_t a : any) e.blocks_union += a;
  return e;
}

void check(const Case& c, const char* algo, int rank, const std::vector<float>& got,
           const sparse::OmniReduceStats& stats, const Expected& e) {
  const std::string where = detail::concat(algo, " ", c.str(), " rank ", rank);
  for (size_t i = 0; i < c.n; ++i) {
    if (std::memcmp(&got[i], &e.sum[i], sizeof(float)) != 0) {
      throw std::runtime_error(detail::concat(
          where, ": element ", i, " is ", got[i], " (bits ", std::bit_cast<uint32_t>(got[i]),
          "), expected ", e.sum[i], " (bits ", std::bit_cast<uint32_t>(e.sum[i]), ")"));
    }
  }
  if (stats.blocks_nonzero_local != e.blocks_nonzero_local ||
      stats.blocks_union != e.blocks_union) {
    throw std::runtime_error(
        detail::concat(where, ": blocks_nonzero_local ", stats.blocks_nonzero_local, " (expected ",
                       e.blocks_nonzero_local, "), blocks_union ", stats.blocks_union,
                       " (expected ", e.blocks_union, ")"));
  }
}

std::vector<Case> sweep() {
  std::vector<Case> cases;
  const std::vector<Pattern> patterns = {Pattern::kZero,          Pattern::kSingleBlock,
                                         Pattern::kOnePercent,    Pattern::kThirtyPercent,
                                         Pattern::kRandomPerRank, Pattern::kDense};
  const size_t fusion[] = {8, 1, 3};
  size_t k = 0;
  for (size_t block : {size_t{1}, size_t{7}, size_t{256}}) {
    for (size_t n : {size_t{0}, size_t{1}, block - 1, block + 1, 100 * block + 17}) {
      for (Pattern p : patterns) {
        for (Overlap o : {Overlap::kSame, Overlap::kDisjoint, Overlap::kIndependent}) {
          if ((p == Pattern::kZero || p == Pattern::kDense) && o != Overlap::kIndependent) continue;
          if (n < 2 * block && o == Overlap::kSame) continue;  // few blocks: one overlap mode
          Case c;
          c.n = n;
          c.block = block;
          c.pattern = p;
          c.overlap = o;
          c.columns = fusion[k % 3];
          c.slots = k % 2 == 0 ? 1 : 3;
          cases.push_back(c);
          ++k;
        }
      }
    }
  }
  Case inexact;
  inexact.n = 5000;
  inexact.block = 64;
  inexact.pattern = Pattern::kRandomPerRank;
  inexact.inexact = true;
  cases.push_back(inexact);
  return cases;
}

class Sparse : public ::testing::TestWithParam<int> {};

TEST_P(Sparse, OmniReduceAndAllgatherSparseMatchTheDenseSum) {
  const int world = GetParam();
  const auto cases = sweep();
  std::mutex mu;
  std::vector<std::vector<sparse::OmniReduceStats>> stats(world);  // per rank, per case
  spawn(world, [&](comm::Group& g) {
    std::vector<sparse::OmniReduceStats> mine;
    for (const Case& c : cases) {
      const Expected e = expected(c, g.rank(), world);
      auto data = input(c, g.rank(), world);
      sparse::OmniReduceOptions o(g);
      o.data = data;
      o.block = c.block;
      o.blocks_per_message = c.columns;
      o.slots = c.slots;
      const auto s = sparse::omnireduce(o);
      check(c, "omnireduce", g.rank(), data, s, e);
      mine.push_back(s);

      auto baseline = input(c, g.rank(), world);
      o.data = baseline;
      const auto sb = sparse::allgather_sparse(o);
      check(c, "allgather_sparse", g.rank(), baseline, sb, e);
    }
    std::lock_guard<std::mutex> lock(mu);
    stats[g.rank()] = std::move(mine);
  });
  // Every byte one rank sends, another receives; a single worker sends nothing.
  for (size_t k = 0; k < cases.size(); ++k) {
    uint64_t sent = 0, received = 0;
    for (int r = 0; r < world; ++r) {
      sent += stats[r][k].bytes_sent;
      received += stats[r][k].bytes_received;
    }
    EXPECT_EQ(sent, received) << cases[k].str();
    if (world == 1) {
      EXPECT_EQ(sent, 0u) << cases[k].str();
    }
    if (cases[k].pattern == Pattern::kZero && cases[k].n > 0 && world > 1) {
      // Only the first round's look-aheads and replies travel.
      EXPECT_GT(sent, 0u) << cases[k].str();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Sparse, ::testing::Values(1, 2, 3, 4, 5, 8),
                         [](const auto& info) { return "n" + std::to_string(info.param); });

// Placements: colocated with fewer, equal or more aggregators than workers, and dedicated
// aggregator ranks (the last `servers` ranks, which pass no data), on a subset of the sweep; each
// call is repeated without the handshake (verify = false), as a reducer repeats its buckets.
struct Placement {
  int workers;
  int aggregators;  // 0: one per worker or server
  int servers;
};

class SparsePlacement : public ::testing::TestWithParam<Placement> {};

TEST_P(SparsePlacement, MatchesTheDenseSum) {
  const Placement p = GetParam();
  const int world = p.workers + p.servers;
  std::vector<Case> cases;
  const auto all = sweep();
  for (size_t k = 0; k < all.size(); k += 4) cases.push_back(all[k]);
  cases.push_back(all.back());
  std::mutex mu;
  std::vector<std::vector<sparse::OmniReduceStats>> stats(world);
  spawn(world, [&](comm::Group& g) {
    const bool server = g.rank() >= p.workers;
    std::vector<sparse::OmniReduceStats> mine;
    for (const Case& c : cases) {
      auto data = server ? std::vector<float>() : input(c, g.rank(), p.workers);
      sparse::OmniReduceOptions o(g);
      o.data = data;
      o.block = c.block;
      o.blocks_per_message = c.columns;
      o.slots = c.slots;
      o.aggregators = p.aggregators;
      o.servers = p.servers;
      const auto s = sparse::omnireduce(o);
      mine.push_back(s);
      // The same call again without the handshake (verified at first use), as a reducer does.
      auto again = server ? std::vector<float>() : input(c, g.rank(), p.workers);
      o.data = again;
      o.verify = false;
      o.server_count = c.n;
      const auto s2 = sparse::omnireduce(o);
      if (server) {
        EXPECT_EQ(s.blocks_nonzero_local, 0u);
        EXPECT_EQ(s2.blocks_union, s.blocks_union);
        continue;
      }
      const Expected e = expected(c, g.rank(), p.workers);
      check(c, "omnireduce", g.rank(), data, s, e);
      check(c, "omnireduce unverified", g.rank(), again, s2, e);
    }
    std::lock_guard<std::mutex> lock(mu);
    stats[g.rank()] = std::move(mine);
  });
  for (size_t k = 0; k < cases.size(); ++k) {
    uint64_t sent = 0, received = 0, union_at_servers = 0;
    for (int r = 0; r < world; ++r) {
      sent += stats[r][k].bytes_sent;
      received += stats[r][k].bytes_received;
      if (r >= p.workers) union_at_servers += stats[r][k].blocks_union;
    }
    EXPECT_EQ(sent, received) << cases[k].str();
    // Dedicated aggregators split the union between them.
    if (p.servers > 0) {
      EXPECT_EQ(union_at_servers, stats[0][k].blocks_union) << cases[k].str();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Placements, SparsePlacement,
                         ::testing::Values(Placement{3, 1, 0}, Placement{4, 2, 0},
                                           Placement{2, 5, 0}, Placement{3, 7, 0},
                                           Placement{1, 0, 1}, Placement{2, 0, 1},
                                           Placement{3, 0, 2}, Placement{2, 3, 2},
                                           Placement{4, 0, 4}),
                         [](const auto& info) {
                           const Placement& p = info.param;
                           return "w" + std::to_string(p.workers) + "a" +
                                  std::to_string(p.aggregators) + "s" + std::to_string(p.servers);
                         });

TEST(SparseBadInput, DedicatedAggregatorsTakeNoData) {
  spawn(2, [](comm::Group& g) {
    std::vector<float> data(10, 1.0f);
    sparse::OmniReduceOptions o(g);
    o.data = data;
    o.servers = 2;  // no worker left
    EXPECT_THROW(sparse::omnireduce(o), InvalidArgument);
    if (g.rank() == 1) {
      o.servers = 1;  // rank 1 is the aggregator but passes data
      EXPECT_THROW(sparse::omnireduce(o), InvalidArgument);
    }
  });
}

// Zero blocks never travel: with one shared non-zero block, the data bytes are one block each way
// per worker and aggregator pair that handles it.
TEST(SparseBytes, OnlyNonZeroBlocksTravel) {
  spawn(3, [](comm::Group& g) {
    std::vector<float> dense(64 * 100, 1.0f);
    std::vector<float> sparse_data(64 * 100, 0.0f);
    sparse_data[64 * 50 + 3] = 1.0f;
    sparse::OmniReduceOptions o(g);
    o.block = 64;
    // Small messages: on a 100-block tensor the per-message look-ahead pointers of large
    // messages would dominate what this test measures.
    o.blocks_per_message = 8;
    o.slots = 2;
    o.data = dense;
    const auto sd = sparse::omnireduce(o);
    o.data = sparse_data;
    const auto ss = sparse::omnireduce(o);
    EXPECT_EQ(sparse_data[64 * 50 + 3], 3.0f);
    EXPECT_EQ(ss.blocks_union, 1u);
    EXPECT_LT(ss.bytes_sent * 20, sd.bytes_sent) << ss.bytes_sent << " vs " << sd.bytes_sent;
  });
}

TEST(SparseBadInput, MismatchedSizesFailEveryRank) {
  for (const std::vector<size_t>& sizes :
       {std::vector<size_t>{1000, 1000, 1001, 1000}, std::vector<size_t>{0, 0, 100}}) {
    const int world = static_cast<int>(sizes.size());
    for (bool baseline : {false, true}) {
      TempDir dir;
      auto errors = run_threads(world, [&](int r) {
        auto g = comm::Group::connect(local_options(dir, r, world, comm::Millis(10000)));
        std::vector<float> data(sizes[r], 1.0f);
        sparse::OmniReduceOptions o(*g);
        o.data = data;
        if (baseline) {
          sparse::allgather_sparse(o);
        } else {
          sparse::omnireduce(o);
        }
      });
      const size_t odd = sizes[2];
      for (int r = 0; r < world; ++r) {
        ASSERT_TRUE(errors[r]) << "rank " << r << " finished with mismatched sizes";
        EXPECT_THROW(std::rethrow_exception(errors[r]), ProtocolError) << what(errors[r]);
        const std::string want =
            baseline ? detail::concat("rank 2 has ", odd, " floats")
                     : detail::concat("rank 2 called omnireduce of ", odd, " floats");
        EXPECT_NE(what(errors[r]).find(want), std::string::npos)
            << "rank " << r << ": " << what(errors[r]);
      }
    }
  }
}

TEST(SparseBadInput, MismatchedSettingsFailEveryRank) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(10000)));
    std::vector<float> data(1000, 1.0f);
    sparse::OmniReduceOptions o(*g);
    o.data = data;
    o.slots = r == 1 ? 3 : 2;
    sparse::omnireduce(o);
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[r]);
    EXPECT_THROW(std::rethrow_exception(errors[r]), ProtocolError) << what(errors[r]);
    EXPECT_NE(what(errors[r]).find("3 slots"), std::string::npos) << what(errors[r]);
  }
}

TEST(SparseBadInput, LocalErrors) {
  spawn(1, [](comm::Group& g) {
    std::vector<float> data(10, 1.0f);
    sparse::OmniReduceOptions o(g);
    o.data = data;
    o.block = 0;
    EXPECT_THROW(sparse::omnireduce(o), InvalidArgument);
    o.block = 4;
    o.slots = 0;
    EXPECT_THROW(sparse::omnireduce(o), InvalidArgument);
    o.slots = 1;
    o.blocks_per_message = 0;
    EXPECT_THROW(sparse::omnireduce(o), InvalidArgument);
  });
}

// Only rank 0 enters: it fails with a TimeoutError naming rank 1 instead of hanging.
TEST(SparseFaults, TimeoutNamesTheSilentRank) {
  TempDir dir;
  std::atomic<bool> finished{false};
  auto errors = run_threads(2, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 2, comm::Millis(1500)));
    if (r == 1) {
      while (!finished) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return;
    }
    std::vector<float> data(1000, 1.0f);
    sparse::OmniReduceOptions o(*g);
    o.data = data;
    try {
      sparse::omnireduce(o);
    } catch (...) {
      finished = true;
      throw;
    }
    finished = true;
  });
  ASSERT_TRUE(errors[0]);
  EXPECT_THROW(std::rethrow_exception(errors[0]), TimeoutError) << what(errors[0]);
  EXPECT_NE(what(errors[0]).find("rank(s) 1"), std::string::npos) << what(errors[0]);
}

// A worker SIGKILLed in the middle of a stream of omnireduces (forked processes, so the kill is
// real): every survivor, worker or dedicated aggregator, fails with an IoError naming it, whether
// its worker or its aggregator thread noticed, long before the deadline. Param: dedicated
// aggregators (0: colocated).
class SparseFaults : public ::testing::TestWithParam<int> {};

TEST_P(SparseFaults, KilledWorkerIsNamedByEverySurvivor) {
  using namespace std::chrono_literals;
  const int servers = GetParam();
  const int kSize = 3 + servers;
  constexpr int kVictim = 1;
  TempDir dir;
  std::vector<std::pair<pid_t, int>> children;  // pid, read end of the report pipe
  for (int r = 0; r < kSize; ++r) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      std::string report = "ok\n";
      try {
        auto g = comm::Group::connect(local_options(dir, r, kSize, comm::Millis(60000)));
        Case c;
        c.n = 1 << 16;
        c.block = 32;
        c.pattern = Pattern::kThirtyPercent;
        const bool server = r >= 3;
        for (int it = 0; it < 1000000; ++it) {
          auto data = server ? std::vector<float>() : input(c, r, 3);
          sparse::OmniReduceOptions o(*g);
          o.data = data;
          o.block = c.block;
          o.servers = servers;
          sparse::omnireduce(o);
          if (it == 0) std::ofstream(dir.path() + "/ready." + std::to_string(r)) << "1";
        }
      } catch (const IoError& e) {
        report = std::string("IoError\n") + e.what();
      } catch (const std::exception& e) {
        report = std::string("other\n") + e.what();
      }
      (void)!::write(fds[1], report.data(), report.size());
      ::close(fds[1]);
      ::_exit(0);
    }
    ::close(fds[1]);
    children.emplace_back(pid, fds[0]);
  }
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < kSize; ++r) {
    while (!std::filesystem::exists(dir.path() + "/ready." + std::to_string(r)) &&
           std::chrono::steady_clock::now() - start < 60s) {
      std::this_thread::sleep_for(5ms);
    }
  }
  std::this_thread::sleep_for(20ms);
  ::kill(children[kVictim].first, SIGKILL);
  for (int r = 0; r < kSize; ++r) {
    if (r == kVictim) continue;
    const auto give_up = std::chrono::steady_clock::now() + 120s;
    int status = 0;
    bool hung = false;
    while (::waitpid(children[r].first, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > give_up) {
        ::kill(children[r].first, SIGKILL);
        ::waitpid(children[r].first, &status, 0);
        hung = true;
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    std::string text;
    char buf[4096];
    ssize_t got;
    while ((got = ::read(children[r].second, buf, sizeof(buf))) > 0) text.append(buf, got);
    ::close(children[r].second);
    EXPECT_FALSE(hung) << "rank " << r << " hung";
    EXPECT_EQ(text.substr(0, text.find('\n')), "IoError") << "rank " << r << ": " << text;
    EXPECT_NE(text.find("rank(s) 1 failed"), std::string::npos) << "rank " << r << ": " << text;
  }
  ::waitpid(children[kVictim].first, nullptr, 0);
  ::close(children[kVictim].second);
}

INSTANTIATE_TEST_SUITE_P(Placements, SparseFaults, ::testing::Values(0, 2), [](const auto& info) {
  return info.param ? "dedicated" + std::to_string(info.param) : std::string("colocated");
});

}  // namespace
}  // namespace dtrain::test

namespace dtrain::test {
namespace {

// The reducer averages exactly like the dense one on block-sparse buckets and reports densities.
TEST(OmniReduceReducer, AveragesAndReportsDensities) {
  spawn(3, [](comm::Group& g) {
    auto r = reduce::make_reducer("omnireduce:block=4,slots=1,fusion=2", g);
    EXPECT_EQ(r->name(), "omnireduce:block=4,aggregators=3,colocate=1,slots=1,fusion=2");
    std::vector<float> a(40, 0.0f), b(8, 0.0f);
    // Bucket a: rank k fills block k (blocks 0..2 of 10); bucket b: every rank fills block 1.
    for (int i = 0; i < 4; ++i) a[4 * g.rank() + i] = 3.0f * float(i + 1);
    for (int i = 4; i < 8; ++i) b[i] = 3.0f;
    r->reduce_step(7, std::vector<std::span<float>>{a, b});
    for (int i = 0; i < 40; ++i) EXPECT_EQ(a[i], i < 12 ? float(i % 4 + 1) : 0.0f) << i;
    for (int i = 0; i < 8; ++i) EXPECT_EQ(b[i], i < 4 ? 0.0f : 3.0f) << i;
    auto m = r->step_metrics();
    ASSERT_EQ(m.size(), 2u);
    EXPECT_EQ(m[0].first, "union_density");
    EXPECT_DOUBLE_EQ(m[0].second, 4.0 / 12.0);  // 3 of a's 10 blocks + 1 of b's 2
    EXPECT_DOUBLE_EQ(m[1].second, 2.0 / 12.0);
    EXPECT_GT(r->bytes_sent(), 0u);
  });
}

TEST(OmniReduceReducer, BadParametersAreNamed) {
  spawn(1, [](comm::Group& g) {
    auto err = [&](const std::string& spec) {
      try {
        reduce::make_reducer(spec, g);
      } catch (const InvalidArgument& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    };
    EXPECT_NE(err("omnireduce:block=0").find("block=0"), std::string::npos);
    EXPECT_NE(err("omnireduce:blok=4").find("valid: block, aggregators"), std::string::npos);
    EXPECT_NE(err("omnireduce:slots=-1").find("slots=-1"), std::string::npos);
    EXPECT_NE(err("omnireduce:colocate=0").find("--servers"), std::string::npos);
    EXPECT_NE(err("omnireduce:block=4,block=8").find("given twice"), std::string::npos);
    EXPECT_NE(err("omnireduz").find("omnireduce"), std::string::npos);
  });
}

}  // namespace
}  // namespace dtrain::test
