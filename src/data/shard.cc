// Epoch sharding. Works as follows:
//   1. The epoch's seed is splitmix64(seed ^ splitmix64(epoch)), which seeds a std::mt19937_64;
//      mixing keeps nearby (seed, epoch) pairs from giving correlated streams.
//   2. A Fisher–Yates shuffle of the identity permutation: for slot i from n-1 down to 1, swap it
//      with a slot j drawn uniformly from [0, i]. The draw is our own rejection sampler over the
//      engine's raw 64-bit output, whose sequence the standard fixes, whereas std::shuffle and
//      std::uniform_int_distribution are implementation-defined; so every process, whatever its
//      standard library, computes the same permutation.
//   3. Rank r keeps the contiguous slice [r*m, (r+1)*m), m = floor(n/world). The n % world entries
//      at the end are dropped for this epoch only; the next epoch's shuffle drops different ones.
#include "dtrain/data/shard.h"

#include <numeric>
#include <random>

#include "dtrain/common/error.h"
#include "dtrain/common/random.h"

namespace dtrain::data {

namespace {

// Uniform in [0, bound), bound >= 1, without modulo bias: raw values below 2^64 mod bound are
// redrawn so the accepted range is a whole number of copies of [0, bound).
uint64_t uniform_below(std::mt19937_64& engine, uint64_t bound) {
  const uint64_t reject_below = (0 - bound) % bound;
  for (;;) {
    uint64_t r = engine();
    if (r >= reject_below) return r % bound;
  }
}

}  // namespace

std::vector<size_t> epoch_permutation(size_t n, uint64_t seed, int epoch) {
  DT_ENFORCE(epoch >= 0, "epoch must be non-negative, got ", epoch);
  std::mt19937_64 engine(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(epoch))));
  std::vector<size_t> perm(n);
  std::iota(perm.begin(), perm.end(), size_t{0});
  for (size_t slot = n; slot > 1; --slot) {
    size_t i = slot - 1;
    size_t j = static_cast<size_t>(uniform_below(engine, i + 1));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

std::vector<size_t> shard_indices(size_t n, int rank, int world, uint64_t seed, int epoch) {
  DT_ENFORCE(world >= 1, "world size must be at least 1, got ", world);
  DT_ENFORCE(rank >= 0 && rank < world, "rank ", rank, " is outside [0, ", world, ")");
  std::vector<size_t> perm = epoch_permutation(n, seed, epoch);
  const size_t per_rank = n / static_cast<size_t>(world);
  const auto begin = perm.begin() + static_cast<ptrdiff_t>(per_rank * static_cast<size_t>(rank));
  return std::vector<size_t>(begin, begin + static_cast<ptrdiff_t>(per_rank));
}

}  // namespace dtrain::data
