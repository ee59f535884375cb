// ExDyna's blocks and partitions: which worker may select which elements of a bucket.
//
// A bucket of d floats is cut into fine-grained blocks; the blocks are laid out in a fixed order
// and the order is cut into n runs, one partition per worker. The spec lays the blocks out in
// index order, so a partition is one contiguous range of the bucket. Real gradients cluster by
// layer (a bucket holds several layers whose gradient scales differ by orders of magnitude), so a
// contiguous partition that holds the busy layer sends several times more than the others, and
// one block moving per step cannot catch up. BlockOrder::kInterleaved (the default) deals every
// n consecutive blocks out to the n partitions, one each, in an order drawn per group from a seed
// shared by all ranks, so every partition holds an even share of every layer; the spec's
// boundary moves then act on that order. (On real training most of the imbalance that remains
// follows the workers, not the regions: see docs/results/2026-12-02/exdyna.md.)
// Either way partitions are exclusive and covering by construction: each block sits at exactly one
// position of the order.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dtrain::reduce::exdyna {

enum class BlockOrder : uint32_t {
  kContiguous = 0,   // the spec's: block b at position b, a partition is one range
  kInterleaved = 1,  // each n consecutive blocks dealt to the n partitions in a seeded random
                     // order, the same on every rank
};
const char* name(BlockOrder order);

// Blocks hold block_size() elements (a multiple of 32, at least 32), the last block also the
// remainder; a vector shorter than 32 * max_blocks gets d / 32 blocks (one block when d < 64).
// Partition p owns the blocks at positions [boundaries()[p], boundaries()[p + 1]) of the block
// order; partitions start even and are never smaller than min_blocks() = max(1, blocks / (4n)).
// A bucket with fewer blocks than partitions leaves some partitions empty (min_blocks() is 0).
class Partitions {
 public:
  Partitions() = default;
  Partitions(size_t d, size_t max_blocks, int n, BlockOrder order = BlockOrder::kInterleaved,
             uint64_t seed = 0);
  // Restores saved boundaries (n + 1 positions); throws InvalidArgument unless they start at 0,
  // end at num_blocks and no partition is below the minimum.
  Partitions(size_t d, size_t block_size, BlockOrder order, uint64_t seed,
             std::vector<size_t> boundaries);

  size_t size() const { return d_; }
  int count() const { return static_cast<int>(bounds_.size()) - 1; }
  size_t block_size() const { return block_size_; }
  size_t num_blocks() const { return num_blocks_; }
  size_t min_blocks() const { return min_blocks_; }
  BlockOrder order() const { return order_kind_; }
  uint64_t seed() const { return seed_; }
  size_t blocks_in(int p) const { return bounds_[p + 1] - bounds_[p]; }
  const std::vector<size_t>& boundaries() const { return bounds_; }

  // Elements [block_begin(b), block_end(b)) form block b.
  size_t block_begin(size_t b) const { return b >= num_blocks_ ? d_ : b * block_size_; }
  size_t block_end(size_t b) const { return block_begin(b + 1); }
  size_t block_of(size_t i) const { return std::min(i / block_size_, num_blocks_ - 1); }
  // The partition that owns block b, element i (i < size()).
  int owner_of_block(size_t b) const { return owner_[b]; }
  int owner(size_t i) const { return owner_[block_of(i)]; }
  // Number of elements partition p owns.
  size_t elements_in(int p) const;
  // Calls f(begin, end, owned) for the maximal element ranges of the bucket, in increasing
  // order, that partition p owns (owned = true) or not: one sweep over the block owners.
  template <typename F>
  void for_each_run(int p, F&& f) const;
  // The element ranges partition p owns, in increasing order (adjacent blocks merged).
  std::vector<std::pair<size_t, size_t>> runs(int p) const;

  // The spec's dynamic allocation from last step's per-partition counts: with avg = sum / n, for
  // each adjacent pair (i, i + 1) in order, if c_i > balance * avg and c_{i+1} < avg / balance
  // partition i gives its last block (in the block order) to i + 1, and symmetrically; a
  // partition never drops below min_blocks(). Returns the number of boundaries moved.
  int rebalance(std::span<const uint64_t> counts, double balance = 1.05);

 private:
  // Builds order_ for count() partitions; returns where each slot's blocks start in it (the
  // interleaved order's even start).
  std::vector<size_t> lay_out();
  void assign_owners();  // owner_ from order_ and bounds_

  size_t d_ = 0;
  size_t block_size_ = 32;
  size_t num_blocks_ = 0;
  size_t min_blocks_ = 0;
  BlockOrder order_kind_ = BlockOrder::kInterleaved;
  uint64_t seed_ = 0;
  std::vector<size_t> bounds_{0};
  std::vector<uint32_t> order_;  // position -> block
  std::vector<int32_t> owner_;   // block -> partition
};

template <typename F>
void Partitions::for_each_run(int p, F&& f) const {
  size_t b = 0;
  while (b < num_blocks_) {
    const bool owned = owner_[b] == p;
    size_t e = b + 1;
    while (e < num_blocks_ && (owner_[e] == p) == owned) ++e;
    f(block_begin(b), block_begin(e), owned);
    b = e;
  }
}

}  // namespace dtrain::reduce::exdyna
