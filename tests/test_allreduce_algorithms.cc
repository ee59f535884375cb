// Allreduce algorithms (ring, halving-doubling, recursive doubling) and the size switch between
// them: exact results for every world size 1-8, element type and reduction, at the crossover
// sizes; bit-identical outputs on every rank even where the order of additions matters;
// unverified calls (verify=false) that agree give the same bits, and ones that disagree fail with
// a named error instead of crashing.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "dtrain/collective/collective.h"
#include "dtrain/common/error.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using collective::AllreduceAlgorithm;
using collective::AllreduceSwitch;
using collective::DataType;
using collective::ReduceOp;

const std::vector<ReduceOp> kOps = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax};
const std::vector<AllreduceAlgorithm> kForced = {AllreduceAlgorithm::kRing,
                                                 AllreduceAlgorithm::kHalvingDoubling,
                                                 AllreduceAlgorithm::kRecursiveDoubling};
const std::vector<AllreduceAlgorithm> kAlgorithms = {
    AllreduceAlgorithm::kRing, AllreduceAlgorithm::kHalvingDoubling,
    AllreduceAlgorithm::kRecursiveDoubling, AllreduceAlgorithm::kAuto};

// ---------------------------------------------------------------------------------------------
// Exact values: multiples of 1/8 in [-6, 6.5] (integers: v * 1000 + rank). Sums over up to 8
// ranks are exact in every type, float16 included (|sum| <= 52 needs 9 of its 11 bits), so the
// expected result does not depend on the order of additions.

int64_t base_value(int rank, size_t i) {
  return static_cast<int64_t>((rank * 37 + i * 17 + (i >> 7) * 3) % 101) - 48;
}

// The value rank `rank` contributes at element i, as a double (exact for every type here).
double exact_value(DataType t, int rank, size_t i) {
  const int64_t v = base_value(rank, i);
  if (t == DataType::kInt32 || t == DataType::kInt64) return static_cast<double>(v * 1000 + rank);
  return static_cast<double>(v) / 8.0;
}

// Store / load one element of type t at index i.
void store(DataType t, void* data, size_t i, double v) {
  switch (t) {
    case DataType::kFloat32:
      static_cast<float*>(data)[i] = static_cast<float>(v);
      break;
    case DataType::kFloat64:
      static_cast<double*>(data)[i] = v;
      break;
    case DataType::kInt32:
      static_cast<int32_t*>(data)[i] = static_cast<int32_t>(v);
      break;
    case DataType::kInt64:
      static_cast<int64_t*>(data)[i] = static_cast<int64_t>(v);
      break;
    case DataType::kFloat16:
      static_cast<uint16_t*>(data)[i] = collective::float_to_half(static_cast<float>(v));
      break;
  }
}

// The expected element, as the bytes of type t: op over the ranks computed in double (exact),
// then kAvg divided in the element type, as documented (integers truncate; float16 divides in
// float and rounds to half once).
std::vector<std::byte> expected_bytes(DataType t, ReduceOp op, int n, size_t count) {
  const size_t elem = collective::element_size(t);
  std::vector<std::byte> out(count * elem);
  for (size_t i = 0; i < count; ++i) {
    double acc = exact_value(t, 0, i);
    for (int r = 1; r < n; ++r) {
      const double v = exact_value(t, r, i);
      if (op == ReduceOp::kMin) {
        acc = std::min(acc, v);
      } else if (op == ReduceOp::kMax) {
        acc = std::max(acc, v);
      } else {
        acc += v;
      }
    }
    if (op != ReduceOp::kAvg) {
      store(t, out.data(), i, acc);
      continue;
    }
    switch (t) {
      case DataType::kFloat32:
        reinterpret_cast<float*>(out.data())[i] = static_cast<float>(acc) / static_cast<float>(n);
        break;
      case DataType::kFloat64:
        reinterpret_cast<double*>(out.data())[i] = acc / n;
        break;
      case DataType::kInt32:
        reinterpret_cast<int32_t*>(out.data())[i] = static_cast<int32_t>(acc) / n;
        break;
      case DataType::kInt64:
        reinterpret_cast<int64_t*>(out.data())[i] = static_cast<int64_t>(acc) / n;
        break;
      case DataType::kFloat16:
        reinterpret_cast<uint16_t*>(out.data())[i] =
            collective::float_to_half(static_cast<float>(acc) / static_cast<float>(n));
        break;
    }
  }
  return out;
}

std::vector<std::byte> exact_fill(DataType t, int rank, size_t count) {
  std::vector<std::byte> out(count * collective::element_size(t));
  for (size_t i = 0; i < count; ++i) store(t, out.data(), i, exact_value(t, rank, i));
  return out;
}

// The first element where two byte vectors of type t differ, or -1.
int64_t first_difference(const std::vector<std::byte>& a, const std::vector<std::byte>& b,
                         size_t elem) {
  for (size_t i = 0; i < a.size(); i += elem) {
    if (std::memcmp(a.data() + i, b.data() + i, elem) != 0) return static_cast<int64_t>(i / elem);
  }
  return -1;
}

// Every rank's bytes must equal rank 0's: gathered with allgather (a plain copy, as int32 words
// padded with zeros) and compared.
void expect_same_on_all_ranks(comm::Group& g, const std::vector<std::byte>& mine,
                              const std::string& what) {
  const int n = g.size();
  const size_t words = (mine.size() + 3) / 4;
  std::vector<int32_t> all(words * n, 0);
  std::memcpy(all.data() + g.rank() * words, mine.data(), mine.size());
  collective::AllgatherOptions o(g);
  o.output = collective::View(all.data(), all.size(), DataType::kInt32);
  collective::allgather(o);
  for (int r = 1; r < n; ++r) {
    if (std::memcmp(all.data() + r * words, all.data(), mine.size()) != 0) {
      ADD_FAILURE() << what << ": rank " << r << "'s output bytes differ from rank 0's";
      return;
    }
  }
}

struct Case {
  AllreduceAlgorithm algorithm;
  DataType dtype;
  ReduceOp op;
  size_t count;
};

std::string describe(const Case& c, int n) {
  return detail::concat(collective::name(c.algorithm), " allreduce of ", c.count, " ",
                        collective::name(c.dtype), " (", collective::name(c.op), ") on ", n,
                        " ranks");
}

// Runs one case on this rank and checks it exactly; returns the output bytes.
std::vector<std::byte> run_exact(comm::Group& g, const Case& c, const AllreduceSwitch& by_size = {},
                                 bool verify = true) {
  auto data = exact_fill(c.dtype, g.rank(), c.count);
  collective::AllreduceOptions o(g);
  o.output = collective::View(data.data(), c.count, c.dtype);
  o.op = c.op;
  o.algorithm = c.algorithm;
  o.size_switch = by_size;
  o.verify = verify;
  collective::allreduce(o);
  const auto want = expected_bytes(c.dtype, c.op, g.size(), c.count);
  const int64_t bad = first_difference(data, want, collective::element_size(c.dtype));
  EXPECT_EQ(bad, -1) << describe(c, g.size()) << ": rank " << g.rank() << " is wrong at element "
                     << bad;
  return data;
}

class AllreduceAlgorithms : public ::testing::TestWithParam<int> {};

// Every algorithm, type and reduction on small counts: 0, 1, fewer elements than ranks, not
// divisible by the world size, and a few blocks per rank (the switch's picks: CrossoverSizes).
TEST_P(AllreduceAlgorithms, ExactSweep) {
  const int n = GetParam();
  spawn(n, [n](comm::Group& g) {
    const std::vector<size_t> counts = {0, 1, 2, size_t(n) + 1, 7, 1003, 4099};
    for (auto algorithm : kForced) {
      for (DataType t : {DataType::kFloat32, DataType::kFloat64, DataType::kInt32, DataType::kInt64,
                         DataType::kFloat16}) {
        for (ReduceOp op : kOps) {
          for (size_t count : counts) {
            const Case c{algorithm, t, op, count};
            auto out = run_exact(g, c);
            if (count > 0 && count < 10) expect_same_on_all_ranks(g, out, describe(c, n));
          }
        }
      }
    }
  });
}

// The default switch's crossovers for this world size, one element either side of each (so
// every algorithm the switch can pick runs), each also with every algorithm forced.
TEST_P(AllreduceAlgorithms, CrossoverSizes) {
  const int n = GetParam();
  spawn(n, [n](comm::Group& g) {
    const AllreduceSwitch by_size;
    const bool power_of_two = std::has_single_bit(static_cast<unsigned>(n));
    std::vector<size_t> crossovers = {by_size.recursive_doubling_max_bytes};
    crossovers.push_back(power_of_two ? by_size.halving_doubling_max_bytes
                                      : by_size.fold_max_bytes);
    std::vector<size_t> counts;
    for (size_t bytes : crossovers) {
      const size_t at = bytes / sizeof(float);
      counts.insert(counts.end(), {at - 1, at, at + 1});
    }
    for (size_t count : counts) {
      for (auto algorithm : kAlgorithms) {
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
          run_exact(g, {algorithm, DataType::kFloat32, op, count}, by_size);
        }
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, AllreduceAlgorithms, ::testing::Range(1, 9),
                         [](const auto& info) { return detail::concat("n", info.param); });

// ---------------------------------------------------------------------------------------------
// Bit-identical results where the order of operations matters: full-mantissa values whose sums
// round, signed zeros under min/max, NaNs with rank-unique payloads.

float rounding_value(int rank, size_t i) {
  uint32_t h = static_cast<uint32_t>(rank * 2654435761u) ^ static_cast<uint32_t>(i * 40503u);
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  return (static_cast<float>(h % 2000003) / 2000003.0f - 0.5f) * 3.1f;
}

std::vector<std::byte> awkward_fill(DataType t, ReduceOp op, int rank, size_t count) {
  std::vector<std::byte> out(count * collective::element_size(t));
  for (size_t i = 0; i < count; ++i) {
    float v = rounding_value(rank, i);
    if (op == ReduceOp::kMin || op == ReduceOp::kMax) {
      // Only zeros of both signs and a few NaNs: which one wins depends on the operand order.
      v = ((rank + i) % 2 == 0) ? 0.0f : -0.0f;
      if (i % 5 == 0) v = std::bit_cast<float>(0x7fc00000u | static_cast<uint32_t>(rank + 1));
    } else if (i % 7 == 0) {
      v = std::bit_cast<float>(0x7fc00000u | static_cast<uint32_t>(rank + 1));
    }
    if (t == DataType::kFloat32) {
      reinterpret_cast<float*>(out.data())[i] = v;
    } else {
      reinterpret_cast<uint16_t*>(out.data())[i] = collective::float_to_half(v);
    }
  }
  return out;
}

TEST_P(AllreduceAlgorithms, BitIdenticalOnEveryRank) {
  const int n = GetParam();
  spawn(n, [n](comm::Group& g) {
    for (auto algorithm : kAlgorithms) {
      for (DataType t : {DataType::kFloat32, DataType::kFloat16}) {
        for (ReduceOp op : kOps) {
          for (size_t count : {size_t{1}, size_t{1003}, size_t{100003}}) {
            auto data = awkward_fill(t, op, g.rank(), count);
            collective::AllreduceOptions o(g);
            o.output = collective::View(data.data(), count, t);
            o.op = op;
            o.algorithm = algorithm;
            o.segment_bytes = 4096;  // many ring segments per chunk
            collective::allreduce(o);
            const Case c{algorithm, t, op, count};
            expect_same_on_all_ranks(g, data, describe(c, n));
            if (t == DataType::kFloat32 && (op == ReduceOp::kSum || op == ReduceOp::kAvg)) {
              // Close to the sum in double (the NaN elements aside).
              const float* got = reinterpret_cast<const float*>(data.data());
              for (size_t i = 0; i < count; ++i) {
                if (i % 7 == 0) {
                  ASSERT_TRUE(std::isnan(got[i])) << describe(c, n) << " element " << i;
                  continue;
                }
                double want = 0;
                for (int r = 0; r < n; ++r) want += rounding_value(r, i);
                if (op == ReduceOp::kAvg) want /= n;
                ASSERT_NEAR(got[i], want, 1e-5 * n) << describe(c, n) << " element " << i;
              }
            }
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// verify=false

TEST_P(AllreduceAlgorithms, UnverifiedGivesTheSameBits) {
  spawn(GetParam(), [](comm::Group& g) {
    for (auto algorithm : kAlgorithms) {
      for (size_t count : {size_t{0}, size_t{5}, size_t{1003}, size_t{300001}}) {
        std::vector<std::byte> results[2];
        for (bool verify : {true, false}) {
          auto data = awkward_fill(DataType::kFloat32, ReduceOp::kSum, g.rank(), count);
          collective::AllreduceOptions o(g);
          o.output = collective::View(data.data(), count, DataType::kFloat32);
          o.algorithm = algorithm;
          o.verify = verify;
          collective::allreduce(o);
          results[verify] = data;
        }
        EXPECT_EQ(first_difference(results[0], results[1], 4), -1)
            << collective::name(algorithm) << " allreduce of " << count
            << " float32: verify=false differs from verify=true on rank " << g.rank();
      }
    }
  });
}

// Ranks that skip verification and disagree: each must throw a dtrain::Error (a timeout, or the
// notice of the rank that timed out first) naming the other rank, never pair mismatched buffers
// (which would make Gloo abort the process).
void expect_named_failures(const std::vector<std::exception_ptr>& errors) {
  const int n = static_cast<int>(errors.size());
  for (int r = 0; r < n; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r << " finished a mismatched unverified allreduce";
    try {
      std::rethrow_exception(errors[r]);
    } catch (const TimeoutError&) {
    } catch (const ProtocolError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << r
                    << " threw neither TimeoutError nor ProtocolError: " << e.what();
    }
    const std::string msg = what(errors[r]);
    bool names_other = false;
    for (int other = 0; other < n; ++other) {
      if (other == r) continue;
      const std::string s = std::to_string(other);
      names_other = names_other || msg.find("rank " + s) != std::string::npos ||
                    msg.find("rank(s) " + s) != std::string::npos;
    }
    EXPECT_TRUE(names_other) << "rank " << r << ": " << msg;
  }
}

TEST(AllreduceUnverified, MismatchedCountsTimeOutNamingThePeer) {
  for (auto algorithm : {AllreduceAlgorithm::kRing, AllreduceAlgorithm::kHalvingDoubling,
                         AllreduceAlgorithm::kRecursiveDoubling}) {
    TempDir dir;
    auto errors = run_threads(2, [&](int r) {
      auto g = comm::Group::connect(local_options(dir, r, 2, comm::Millis(10000)));
      std::vector<float> data(r == 0 ? 1000 : 1001, 1.0f);
      collective::AllreduceOptions o(*g);
      o.output = data;
      o.algorithm = algorithm;
      o.verify = false;
      o.timeout = comm::Millis(2000);
      collective::allreduce(o);
    });
    SCOPED_TRACE(collective::name(algorithm));
    expect_named_failures(errors);
  }
}

// Same count, so the same number of bytes travels, but another type on one rank: without the
// call's hash in the slots this would pair and silently add int32 bits to float32 bits.
TEST(AllreduceUnverified, MismatchedTypeOrAlgorithmNeverPairs) {
  TempDir dir;
  auto errors = run_threads(3, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 3, comm::Millis(10000)));
    std::vector<float> f(4096, 1.0f);
    std::vector<int32_t> i(4096, 1);
    collective::AllreduceOptions o(*g);
    if (r == 2) {
      o.output = i;
    } else {
      o.output = f;
    }
    o.verify = false;
    o.timeout = comm::Millis(2000);
    collective::allreduce(o);
  });
  expect_named_failures(errors);

  TempDir dir2;
  errors = run_threads(2, [&](int r) {
    auto g = comm::Group::connect(local_options(dir2, r, 2, comm::Millis(10000)));
    std::vector<float> f(4096, 1.0f);
    collective::AllreduceOptions o(*g);
    o.output = f;
    o.algorithm = r == 0 ? AllreduceAlgorithm::kRing : AllreduceAlgorithm::kHalvingDoubling;
    o.verify = false;
    o.timeout = comm::Millis(2000);
    collective::allreduce(o);
  });
  expect_named_failures(errors);
}

// With verification on, ranks that force different algorithms are told so.
TEST(AllreduceVerified, MismatchedAlgorithmIsAProtocolError) {
  TempDir dir;
  auto errors = run_threads(2, [&](int r) {
    auto g = comm::Group::connect(local_options(dir, r, 2, comm::Millis(10000)));
    std::vector<float> f(4096, 1.0f);
    collective::AllreduceOptions o(*g);
    o.output = f;
    o.algorithm = r == 0 ? AllreduceAlgorithm::kRing : AllreduceAlgorithm::kHalvingDoubling;
    collective::allreduce(o);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]);
    EXPECT_THROW(std::rethrow_exception(errors[r]), ProtocolError);
    EXPECT_NE(what(errors[r]).find("halving_doubling"), std::string::npos) << what(errors[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// The switch itself.

TEST(AllreduceSwitch, PicksBySize) {
  AllreduceSwitch s;
  s.recursive_doubling_max_bytes = 100;
  s.halving_doubling_max_bytes = 1000;
  s.fold_max_bytes = 500;
  EXPECT_EQ(s.pick(0, 4), AllreduceAlgorithm::kRecursiveDoubling);
  EXPECT_EQ(s.pick(100, 4), AllreduceAlgorithm::kRecursiveDoubling);
  EXPECT_EQ(s.pick(101, 4), AllreduceAlgorithm::kHalvingDoubling);
  EXPECT_EQ(s.pick(1000, 8), AllreduceAlgorithm::kHalvingDoubling);
  EXPECT_EQ(s.pick(1001, 4), AllreduceAlgorithm::kRing);
  EXPECT_EQ(s.pick(100, 3), AllreduceAlgorithm::kRecursiveDoubling);
  EXPECT_EQ(s.pick(500, 6), AllreduceAlgorithm::kHalvingDoubling);
  EXPECT_EQ(s.pick(501, 5), AllreduceAlgorithm::kRing);
  EXPECT_EQ(s.pick(10, 1), AllreduceAlgorithm::kRing);
  EXPECT_EQ(s.pick(10, 2), AllreduceAlgorithm::kRecursiveDoubling);
  const AllreduceSwitch d;
  EXPECT_LE(d.recursive_doubling_max_bytes, d.fold_max_bytes);
  EXPECT_LE(d.fold_max_bytes, d.halving_doubling_max_bytes);
}

TEST(AllreduceSwitch, StrParseRoundTrip) {
  AllreduceSwitch s;
  s.recursive_doubling_max_bytes = 12345;
  s.halving_doubling_max_bytes = size_t{1} << 40;
  EXPECT_EQ(AllreduceSwitch::parse(s.str()), s);
  EXPECT_EQ(AllreduceSwitch::parse(AllreduceSwitch().str()), AllreduceSwitch());
  s.fold_max_bytes = 0;
  EXPECT_EQ(AllreduceSwitch::parse(s.str()), s);
  EXPECT_EQ(AllreduceSwitch().str(), "rd_max=262144,hd_max=2097152,fold_max=524288");
  EXPECT_EQ(AllreduceSwitch::parse("fold_max=5,hd_max=7,rd_max=3").halving_doubling_max_bytes, 7u);
  EXPECT_INVALID(AllreduceSwitch::parse(""), "rd_max");
  EXPECT_INVALID(AllreduceSwitch::parse("rd_max=1,hd_max=2"), "fold_max is missing");
  EXPECT_INVALID(AllreduceSwitch::parse("rd_max=1,hd_max=x,fold_max=3"), "'x'");
  EXPECT_INVALID(AllreduceSwitch::parse("rd_max=1,hd_max=2,fold_max=3,ring=3"),
                 "unknown key 'ring'");
  EXPECT_INVALID(AllreduceSwitch::parse("rd_max=1,rd_max=2"), "twice");
  EXPECT_INVALID(AllreduceSwitch::parse("rd_max=-1,hd_max=2,fold_max=3"), "'-1'");
  EXPECT_INVALID(AllreduceSwitch::parse("rd_max=1,hd_max=2,fold_max=3,"), "key=bytes");
  EXPECT_EQ(collective::parse_allreduce_algorithm("hd"), AllreduceAlgorithm::kHalvingDoubling);
  EXPECT_EQ(collective::parse_allreduce_algorithm("ring"), AllreduceAlgorithm::kRing);
  EXPECT_INVALID(collective::parse_allreduce_algorithm("tree"), "'tree'");
}

}  // namespace
}  // namespace dtrain::test
