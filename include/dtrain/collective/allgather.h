#pragma once

#include <vector>

#include "dtrain/collective/types.h"

namespace dtrain::collective {

struct AllgatherOptions : CommonOptions {
  using CommonOptions::CommonOptions;
  ConstView input;  // c elements; empty: in place (block `rank` of output already filled)
  View output;      // size * c elements
};

// Ring allgather: output block i holds rank i's input.
void allgather(const AllgatherOptions& options);

struct AllgathervOptions : CommonOptions {
  using CommonOptions::CommonOptions;
  ConstView input;             // counts[rank] elements; empty: in place
  View output;                 // sum(counts) elements
  std::vector<size_t> counts;  // one per rank, identical on every rank (checked)
};

// Ring allgather with a different count per rank; blocks are laid out in rank order.
void allgatherv(const AllgathervOptions& options);

}  // namespace dtrain::collective
