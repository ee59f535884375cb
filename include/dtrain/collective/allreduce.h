// Dense collectives on a Group: allreduce (ring, halving-doubling, recursive doubling, chosen by
// size) and reduce-scatter.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "dtrain/collective/types.h"

namespace dtrain::collective {

enum class AllreduceAlgorithm : uint32_t {
  kAuto = 0,               // AllreduceOptions::size_switch picks one of the others
  kRing = 1,               // bandwidth-optimal, 2(N-1) steps: large buffers
  kHalvingDoubling = 2,    // bandwidth-optimal, 2 log2(N) steps: mid-sized buffers
  kRecursiveDoubling = 3,  // log2(N) steps, each moving the whole buffer: tiny buffers
};
// "auto", "ring", "halving_doubling", "recursive_doubling".
const char* name(AllreduceAlgorithm a);
// Accepts the names above and the short forms "hd", "rd"; InvalidArgument listing them otherwise.
AllreduceAlgorithm parse_allreduce_algorithm(const std::string& s);

// Which algorithm kAuto runs for a buffer of a given size. Different algorithms add in different
// orders, so a job that must resume bit-exactly stores str() with its checkpoint and parse()s it
// back. The defaults were measured on the development box (see allreduce_switch.cc).
struct AllreduceSwitch {
  size_t recursive_doubling_max_bytes = size_t{256} << 10;
  size_t halving_doubling_max_bytes = size_t{2} << 20;
  // World sizes that are not a power of two: the largest buffer either of the above gets. Their
  // extra ranks fold the whole buffer into a partner and back, two more transfers of it.
  size_t fold_max_bytes = size_t{512} << 10;

  // Recursive doubling up to its maximum, then halving-doubling up to its maximum, then the ring;
  // a world that is not a power of two goes to the ring above fold_max_bytes. A group of one rank
  // always gets kRing (nothing moves).
  AllreduceAlgorithm pick(size_t bytes, int world) const;
  // "rd_max=262144,hd_max=2097152,fold_max=524288"; parse() takes exactly what str() gives (all
  // keys, any order, decimal bytes) and throws InvalidArgument on anything else.
  std::string str() const;
  static AllreduceSwitch parse(const std::string& s);
  bool operator==(const AllreduceSwitch&) const = default;
};

struct AllreduceOptions : CommonOptions {
  using CommonOptions::CommonOptions;
  ConstView input;  // empty: in place on `output`
  View output;
  ReduceOp op = ReduceOp::kSum;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::kAuto;
  AllreduceSwitch size_switch;  // used when algorithm is kAuto
  // true: the ranks first check that they all make the same call (count, type, op, algorithm,
  // segment), one extra round trip. false: the caller promises an identical call was verified
  // earlier (the same layout every step); a call that nevertheless disagrees uses other transport
  // slots than its peers, so it never pairs with them and every rank fails at its deadline with
  // a TimeoutError naming the ranks it did not hear from (never a crash).
  bool verify = true;
};

// Every rank ends with op(input of all ranks), bit-identical on every rank: each element is
// reduced along one fixed tree by one owner, then copied to the others. kAvg divides the sum by
// the world size once, on the owner (truncating for integer types). See ring.h and
// halving_doubling.h for the algorithms.
void allreduce(const AllreduceOptions& options);

struct ReduceScatterOptions : CommonOptions {
  using CommonOptions::CommonOptions;
  ConstView input;             // sum(counts) elements
  View output;                 // counts[rank] elements
  std::vector<size_t> counts;  // empty: input split evenly (first input % n ranks get one more)
  ReduceOp op = ReduceOp::kSum;
};

// Rank r receives op over all ranks of block r of the input.
void reduce_scatter(const ReduceScatterOptions& options);

}  // namespace dtrain::collective
