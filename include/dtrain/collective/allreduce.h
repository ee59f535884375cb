// Dense collectives on a Group: ring allreduce and reduce-scatter.
#pragma once

#include <vector>

#include "dtrain/collective/types.h"

namespace dtrain::collective {

struct AllreduceOptions : CommonOptions {
  using CommonOptions::CommonOptions;
  ConstView input;  // empty: in place on `output`
  View output;
  ReduceOp op = ReduceOp::kSum;
};

// Ring allreduce: reduce-scatter then allgather, both segmented and pipelined (see ring.h).
// Every rank ends with op(input of all ranks). kAvg divides the sum by the world size
// (truncating for integer types).
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
