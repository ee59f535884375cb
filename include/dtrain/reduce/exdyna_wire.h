// Checks of what ExDyna's collectives bring from the other ranks (see src/reduce/exdyna.cc): the
// gathered threshold-level counts and the gathered union of indices. Pure functions of the bytes
// received and of the state every rank shares, so they can be tested and fuzzed without a group.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "dtrain/reduce/exdyna_partition.h"

namespace dtrain::reduce::exdyna {

// The allgathered counts, rank-major: levels counts per rank for a bucket of d elements. Throws
// ProtocolError naming the first rank whose count is negative or above d, or InvalidArgument
// when level_counts does not hold a whole number of ranks' counts (a local error).
void check_level_counts(std::span<const int64_t> level_counts, int levels, size_t d);

// The allgathered union in rank order: counts[w] indices from rank w, each below the bucket size
// and inside partition (step + w) mod n of `parts`, the one rank w owned in this step (that is
// what keeps the union free of duplicates). Throws ProtocolError naming the rank, the index and
// the partition, or when the counts do not add up to all.size() or are negative.
template <typename Index>
void check_union(std::span<const Index> all, std::span<const int64_t> counts,
                 const Partitions& parts, uint64_t step);

extern template void check_union<uint32_t>(std::span<const uint32_t>, std::span<const int64_t>,
                                           const Partitions&, uint64_t);
extern template void check_union<uint64_t>(std::span<const uint64_t>, std::span<const int64_t>,
                                           const Partitions&, uint64_t);

}  // namespace dtrain::reduce::exdyna
