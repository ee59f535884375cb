// Shared pieces of the OmniReduce worker and aggregator: the block geometry every rank derives
// from the agreed call, the wire format, and the two roles' entry points.
//
// Wire format (raw, fixed-size messages whose size both ends compute from state they share):
//   request, round 0:   columns x u64 look-ahead (first non-zero block of each column, or kEnd)
//   request, round k>0: for the k' columns where the worker's look-ahead equals the aggregator's
//                       target: k' x u64 next look-ahead, then k' x block floats (the blocks)
//   reply, round k:     columns x u64 next targets, then one summed block (block floats) per
//                       column whose current target is not kEnd (none in round 0)
// A worker with no block to contribute in a round sends nothing: the aggregator knows from its
// look-ahead that it is not part of that round. The last block is zero-padded to `block` floats.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::sparse::detail {

inline constexpr uint64_t kEnd = UINT64_MAX;

// Lane = (aggregator, slot): message row m (blocks m*columns .. m*columns + columns-1) belongs
// to lane m % (aggregators * slots); lane L is served by aggregator L % aggregators, which runs on
// rank host(aggregator). Column c of lane L holds blocks L*columns + c + j*stride, j = 0, 1, ...
// Ranks 0 .. workers-1 are workers; ranks from `workers` on, if any, are dedicated aggregators.
struct Layout {
  size_t n = 0;
  size_t block = 0;
  size_t columns = 0;  // blocks per message
  int workers = 1;
  int aggregators = 1;
  int servers = 0;
  int slots = 1;
  uint64_t blocks = 0;  // ceil(n / block)
  uint64_t lanes = 0;   // lanes that own at least one message row
  uint64_t stride = 0;  // aggregators * slots * columns

  Layout(size_t n, size_t block, size_t columns, int workers, int aggregators, int servers,
         int slots);

  int aggregator_of(uint64_t lane) const { return static_cast<int>(lane % aggregators); }
  int host(int aggregator) const {
    return servers == 0 ? aggregator % workers : workers + aggregator % servers;
  }
  int host_of_lane(uint64_t lane) const { return host(aggregator_of(lane)); }
  uint64_t first_block(uint64_t lane, size_t c) const { return lane * columns + c; }
  size_t elems(uint64_t b) const { return std::min<size_t>(block, n - b * block); }
  // A look-ahead or target a peer may legally name for column c of `lane`, strictly after `after`
  // (kEnd for "no previous": round 0).
  bool valid_pointer(uint64_t lane, size_t c, uint64_t p, uint64_t after) const;

  size_t request_bytes(size_t contributed) const {
    return contributed * (sizeof(uint64_t) + block * sizeof(float));
  }
  size_t first_request_bytes() const { return columns * sizeof(uint64_t); }
  size_t reply_bytes(size_t active) const {
    return columns * sizeof(uint64_t) + active * block * sizeof(float);
  }
  size_t max_message_bytes() const { return reply_bytes(columns); }

  // Sub-channel 0 carries the call handshake.
  static uint32_t request_sub(uint64_t lane) { return static_cast<uint32_t>(2 + 2 * lane); }
  static uint32_t reply_sub(uint64_t lane) { return static_cast<uint32_t>(3 + 2 * lane); }
};

// What one rank brings to the call, shared read-only by its worker and aggregator threads; each
// thread writes only the blocks of its own lanes into `data`.
struct Context {
  comm::Group* group = nullptr;
  uint64_t tag = 0;
  comm::Clock::time_point deadline;
  const Layout* layout = nullptr;
  std::span<float> data;  // empty on a dedicated aggregator
  // Which blocks of the input are non-zero, one byte per block, filled a message row at a time
  // (row_scanned[m] once row m's `columns` contiguous blocks were tested): a row belongs to one
  // lane and a lane to one thread, so the worker and aggregator threads never share a byte.
  // Sized by the caller (blocks and rows of the layout) on ranks with data.
  std::span<uint8_t> nonzero;
  std::span<uint8_t> row_scanned;

  // First block at or after b (in b's column) that is non-zero here; kEnd if none. The input is
  // scanned lazily as the protocol walks it, so the scan overlaps the communication: the first
  // query that lands in a message row tests the row's contiguous blocks in one sequential pass
  // (a column-by-column walk would read 1 block per stride, defeating the prefetcher and the TLB).
  // Each thread walks its own lanes, and only ever past the blocks results were written to.
  // `found` counts the non-zero blocks.
  uint64_t next_nonzero(uint64_t b, uint64_t& found) const;
  // Copies block b into out (block floats), zero-padding a short last block.
  void read_block(uint64_t b, float* out) const;
  void write_block(uint64_t b, const float* in) const;
};

// Whether any of the len floats is non-zero (-0.0 counts as zero, NaN as non-zero).
bool any_nonzero(const float* p, size_t len);

// Messages live in float arrays (the blocks, not zero-initialised: only what is sent is written);
// look-aheads and targets are u64 words at the front, copied in and out with memcpy.
using Message = std::unique_ptr<float[]>;
inline Message make_message(size_t words) {
  return std::make_unique_for_overwrite<float[]>(words);
}

inline uint64_t get_u64(const Message& m, size_t i) {
  uint64_t v;
  std::memcpy(&v, reinterpret_cast<const std::byte*>(m.get()) + i * sizeof(uint64_t), sizeof(v));
  return v;
}

inline void put_u64(Message& m, size_t i, uint64_t v) {
  std::memcpy(reinterpret_cast<std::byte*>(m.get()) + i * sizeof(uint64_t), &v, sizeof(v));
}

// Decoders of the two messages, pure functions of the bytes and of state both ends share (the
// layout, the lane's targets, the sender's look-aheads as the receiver knows them). Each checks
// the size and every pointer a peer sent before anything uses them, and throws ProtocolError,
// whose text the caller fails the group with, naming the peer, column, lane and round.
struct WireParty {
  uint64_t tag = 0;  // of the call, for messages
  int from = 0;      // the rank that sent the bytes
  int me = 0;        // the rank decoding them
};

// A worker's request of `round` to the aggregator of `lane`, which holds the round's targets
// (kEnd: column finished; unused in round 0) and the worker's look-ahead per column, `ahead`.
// Round 0 carries a look-ahead for every column (first_request_bytes); round k > 0 one for each
// column whose target equals the worker's look-ahead, in column order, each kEnd or a later
// block of that column than the target, then those columns' blocks (request_bytes). `next`
// (columns entries) receives the worker's new look-aheads: `ahead` where it did not contribute.
void decode_request(const Layout& l, uint64_t lane, uint64_t round,
                    std::span<const uint64_t> target, std::span<const uint64_t> ahead,
                    std::span<const std::byte> msg, const WireParty& who, std::span<uint64_t> next);

// An aggregator's reply of `round` for `lane` to a worker that holds `target` (the targets the
// reply sums; kEnd everywhere before round 0's reply) and its own look-aheads `ahead`: the next
// targets, each kEnd or a block of its column after the current target and not past the worker's
// look-ahead (a target is a minimum), and kEnd for a finished column; then one summed block per
// column whose current target is not kEnd (reply_bytes). `next` receives the next targets.
void decode_reply(const Layout& l, uint64_t lane, uint64_t round, std::span<const uint64_t> target,
                  std::span<const uint64_t> ahead, std::span<const std::byte> msg,
                  const WireParty& who, std::span<uint64_t> next);

struct Counters {
  uint64_t blocks_nonzero = 0;  // of this rank's input, in the lanes this thread walks
  uint64_t blocks_union = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
};

// The worker side for the lanes of the other ranks' aggregators, and the aggregator side for
// this rank's lanes (with this rank's own contribution read straight from memory).
void run_worker(const Context& ctx, Counters& counters);
void run_aggregator(const Context& ctx, Counters& counters);

}  // namespace dtrain::sparse::detail
