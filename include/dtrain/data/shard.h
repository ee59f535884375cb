// Which examples each rank trains on in an epoch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dtrain::data {

// A permutation of [0, n) that depends only on (n, seed, epoch): the same on every process and
// platform, different from epoch to epoch. Throws InvalidArgument for epoch < 0.
std::vector<size_t> epoch_permutation(size_t n, uint64_t seed, int epoch);

// Rank `rank`'s examples for `epoch`: the slice [rank * m, (rank + 1) * m) of
// epoch_permutation(n, seed, epoch), with m = n / world. The last n % world entries of the
// permutation are left out this epoch so every rank takes the same number of steps; slices of
// different ranks are disjoint. Throws InvalidArgument unless world >= 1, 0 <= rank < world and
// epoch >= 0.
std::vector<size_t> shard_indices(size_t n, int rank, int world, uint64_t seed, int epoch);

}  // namespace dtrain::data
