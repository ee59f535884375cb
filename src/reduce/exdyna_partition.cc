// ExDyna's blocks and partitions (see include/dtrain/reduce/exdyna_partition.h).
//
// Works as follows. The n + 1 boundaries are positions in the block order; order_ maps a
// position to its block and owner_ maps a block to its partition. Moving a boundary by one
// position hands exactly one block from one partition to its neighbour in the order, so both
// tables change in O(1) and partitions stay disjoint and covering. The interleaved order deals
// each group of n consecutive blocks out to the n partitions, one block each, through a
// permutation of the n slots drawn per group (Fisher-Yates on a keyed stream of seed, d, block
// count and group): the order lists every group's slot-0 block, then every group's slot-1 block,
// and so on, and partition p starts as exactly the slot-p blocks. So every layer of at least n
// blocks splits evenly by block count, smaller clusters still spread, and no row length of a
// weight matrix can alias with the stride. Every rank (and a resumed run) draws the same order
// without communicating; a checkpoint stores the kind, the seed and the boundaries, never the
// permutation.
#include "dtrain/reduce/exdyna_partition.h"

#include <algorithm>
#include <numeric>

#include "dtrain/common/error.h"
#include "dtrain/common/random.h"

namespace dtrain::reduce::exdyna {
namespace {

constexpr size_t kAlign = 32;
constexpr uint64_t kOrderDomain = 0x65786479626c6bull;  // "exdyblk"

size_t minimum_blocks(size_t num_blocks, size_t parts) {
  return num_blocks >= parts ? std::max<size_t>(1, num_blocks / (4 * parts)) : 0;
}

}  // namespace

const char* name(BlockOrder order) {
  return order == BlockOrder::kContiguous ? "contiguous" : "interleaved";
}

Partitions::Partitions(size_t d, size_t max_blocks, int n, BlockOrder order, uint64_t seed)
    : d_(d), order_kind_(order), seed_(seed) {
  DT_ENFORCE(max_blocks >= 1, "exdyna: blocks must be >= 1, got ", max_blocks);
  DT_ENFORCE(n >= 1, "exdyna: partitions need n >= 1, got ", n);
  block_size_ = std::max(kAlign, d / max_blocks / kAlign * kAlign);
  // The spec gives the remainder to the last block, which can make it up to 32 * max_blocks
  // elements long; interleaved, that lump would weigh on one partition, so the blocks keep their
  // size and the count goes up to d / block_size (at most max_blocks (1 + 32 / block_size)).
  num_blocks_ = d == 0 ? 0
                : order == BlockOrder::kContiguous
                    ? std::clamp<size_t>(d / block_size_, 1, max_blocks)
                    : std::max<size_t>(1, d / block_size_);
  const size_t parts = static_cast<size_t>(n);
  min_blocks_ = minimum_blocks(num_blocks_, parts);
  bounds_.resize(parts + 1);
  for (size_t p = 0; p <= parts; ++p) bounds_[p] = p * num_blocks_ / parts;
  // Interleaved, partition p starts as exactly the blocks dealt to slot p.
  const std::vector<size_t> slot_start = lay_out();
  if (order == BlockOrder::kInterleaved) bounds_ = slot_start;
  assign_owners();
}

Partitions::Partitions(size_t d, size_t block_size, BlockOrder order, uint64_t seed,
                       std::vector<size_t> boundaries)
    : d_(d),
      block_size_(block_size),
      order_kind_(order),
      seed_(seed),
      bounds_(std::move(boundaries)) {
  DT_ENFORCE(block_size_ >= kAlign && block_size_ % kAlign == 0, "exdyna partitions: block size ",
             block_size_, " is not a positive multiple of 32");
  DT_ENFORCE(bounds_.size() >= 2, "exdyna partitions: need at least 2 boundaries, got ",
             bounds_.size());
  DT_ENFORCE(order == BlockOrder::kContiguous || order == BlockOrder::kInterleaved,
             "exdyna partitions: unknown block order ", static_cast<uint32_t>(order));
  num_blocks_ = d == 0 ? 0 : std::max<size_t>(1, std::min(d / block_size_, bounds_.back()));
  const size_t parts = bounds_.size() - 1;
  min_blocks_ = minimum_blocks(num_blocks_, parts);
  DT_ENFORCE(bounds_.front() == 0 && bounds_.back() == num_blocks_,
             "exdyna partitions: ", "boundaries run from ", bounds_.front(), " to ", bounds_.back(),
             ", expected 0 to ", num_blocks_);
  for (size_t p = 0; p < parts; ++p) {
    DT_ENFORCE(bounds_[p] <= bounds_[p + 1] && bounds_[p + 1] - bounds_[p] >= min_blocks_,
               "exdyna partitions: partition ", p, " spans positions [", bounds_[p], ", ",
               bounds_[p + 1], "), fewer than ", min_blocks_, " blocks");
  }
  lay_out();
  assign_owners();
}

std::vector<size_t> Partitions::lay_out() {
  DT_ENFORCE(num_blocks_ <= UINT32_MAX, "exdyna partitions: ", num_blocks_, " blocks");
  const size_t parts = bounds_.size() - 1;
  std::vector<size_t> slot_start(parts + 1, 0);
  order_.resize(num_blocks_);
  std::iota(order_.begin(), order_.end(), uint32_t{0});
  if (order_kind_ == BlockOrder::kInterleaved && num_blocks_ > 0) {
    const size_t groups = (num_blocks_ + parts - 1) / parts;
    // slot_blocks[s]: the block each group deals to slot s, in group order.
    std::vector<std::vector<uint32_t>> slot_blocks(parts);
    std::vector<uint32_t> slots(parts);
    for (size_t q = 0; q < groups; ++q) {
      std::iota(slots.begin(), slots.end(), uint32_t{0});
      KeyedRng rng({kOrderDomain, seed_, d_, num_blocks_, q});
      for (size_t i = parts; i > 1; --i) std::swap(slots[i - 1], slots[rng.below(i)]);
      for (size_t j = 0; j < parts && q * parts + j < num_blocks_; ++j) {
        slot_blocks[slots[j]].push_back(static_cast<uint32_t>(q * parts + j));
      }
    }
    size_t at = 0;
    for (size_t p = 0; p < parts; ++p) {
      for (uint32_t b : slot_blocks[p]) order_[at++] = b;
      slot_start[p + 1] = at;
    }
  }
  return slot_start;
}

void Partitions::assign_owners() {
  owner_.assign(num_blocks_, -1);
  for (int p = 0; p < count(); ++p) {
    for (size_t pos = bounds_[p]; pos < bounds_[p + 1]; ++pos) owner_[order_[pos]] = p;
  }
}

size_t Partitions::elements_in(int p) const {
  size_t n = 0;
  for (size_t pos = bounds_[p]; pos < bounds_[p + 1]; ++pos) {
    n += block_end(order_[pos]) - block_begin(order_[pos]);
  }
  return n;
}

std::vector<std::pair<size_t, size_t>> Partitions::runs(int p) const {
  std::vector<std::pair<size_t, size_t>> out;
  for_each_run(p, [&](size_t begin, size_t end, bool owned) {
    if (owned) out.emplace_back(begin, end);
  });
  return out;
}

int Partitions::rebalance(std::span<const uint64_t> counts, double balance) {
  const int n = count();
  DT_ENFORCE(counts.size() == static_cast<size_t>(n), "exdyna rebalance: ", counts.size(),
             " counts for ", n, " partitions");
  double sum = 0;
  for (uint64_t c : counts) sum += static_cast<double>(c);
  const double avg = sum / n;
  const double high = balance * avg, low = avg / balance;
  int moved = 0;
  for (int i = 0; i + 1 < n; ++i) {
    const auto left = static_cast<double>(counts[i]), right = static_cast<double>(counts[i + 1]);
    if (left > high && right < low && blocks_in(i) > min_blocks_) {
      owner_[order_[--bounds_[i + 1]]] = i + 1;  // i's last block goes to i + 1
      ++moved;
    } else if (right > high && left < low && blocks_in(i + 1) > min_blocks_) {
      owner_[order_[bounds_[i + 1]++]] = i;  // i + 1's first block goes to i
      ++moved;
    }
  }
  return moved;
}

}  // namespace dtrain::reduce::exdyna
