// Agreement check run at the start of a collective: each rank sends a small descriptor of the call
// (kind, element type, reduction, counts, root, algorithm, segment) to its right neighbour and
// compares the one from its left. Around the ring every rank is compared with another, so any
// disagreement is caught by at least one rank, which fails the group with a ProtocolError naming
// both ranks and both calls; the control notice then stops everyone else. Without it a count
// mismatch would be a hang, or worse, a Gloo abort (a message bigger than the posted receive).
//
// A caller that has already checked a layout may skip that round trip (AllreduceOptions::verify).
// Its calls then fold a hash of the descriptor into the high bits of every Gloo slot they use
// (call_salt): calls that disagree use different slots, so nothing of one ever lands in a buffer
// of the other; every rank waits out its deadline and fails with the group's timeout diagnosis,
// which names the ranks it did not hear from.
#pragma once

#include <cstdint>
#include <span>

#include "dtrain/collective/types.h"

namespace dtrain::collective::detail {

struct CallDescriptor {
  uint32_t kind = 0;  // which collective
  uint32_t dtype = 0;
  uint32_t op = 0;
  int32_t root = -1;
  uint64_t count = 0;
  uint64_t counts_hash = 0;  // allgatherv / reduce_scatter per-rank counts
  uint32_t algorithm = 0;    // allreduce: AllreduceAlgorithm actually run (never kAuto)
  uint32_t reserved = 0;
  uint64_t segment = 0;  // elements per pipelining segment, where the wire layout depends on it

  bool operator==(const CallDescriptor&) const = default;
};

enum Kind : uint32_t { kAllreduce = 1, kReduceScatter, kAllgather, kAllgatherv, kBroadcast };
const char* kind_name(uint32_t kind);

uint64_t hash_counts(std::span<const size_t> counts);

// Exchanges with the ring neighbours on sub-channel 0 of `tag`. No-op for a group of size 1.
void handshake(comm::Group& group, uint64_t tag, comm::Clock::time_point deadline,
               const CallDescriptor& mine);

// Bits an unverified call XORs into each of its slots: a 23-bit hash of the descriptor in bits
// 40..62, never zero. Bit 63 stays clear, so the group's reserved slots (all high bits set) are
// never hit. Two calls with different salts pair only if their tags differ by a multiple of 2^16,
// and only calls a few tags apart are ever in flight together.
uint64_t call_salt(const CallDescriptor& d);

// The slot of sub-channel `sub` of `tag` for a call with `salt` (0: a verified call).
inline uint64_t salted_slot(uint64_t tag, uint32_t sub, uint64_t salt) {
  return comm::Group::slot(tag, sub) ^ salt;
}

// Runs the handshake when `verify` is set and returns 0; otherwise returns call_salt(mine).
uint64_t agree(comm::Group& group, uint64_t tag, comm::Clock::time_point deadline,
               const CallDescriptor& mine, bool verify);

}  // namespace dtrain::collective::detail
