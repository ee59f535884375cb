// Agreement check run at the start of a collective: each rank sends a small descriptor of the call
// (kind, element type, reduction, counts, root) to its right neighbour and compares the one from
// its left. Around the ring every rank is compared with another, so any disagreement is caught by
// at least one rank, which fails the group with a ProtocolError naming both ranks and both calls;
// the control notice then stops everyone else. Without it a count mismatch would be a hang.
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

  bool operator==(const CallDescriptor&) const = default;
};

enum Kind : uint32_t { kAllreduce = 1, kReduceScatter, kAllgather, kAllgatherv, kBroadcast };
const char* kind_name(uint32_t kind);

uint64_t hash_counts(std::span<const size_t> counts);

// Exchanges with the ring neighbours on sub-channel 0 of `tag`. No-op for a group of size 1.
void handshake(comm::Group& group, uint64_t tag, comm::Clock::time_point deadline,
               const CallDescriptor& mine);

}  // namespace dtrain::collective::detail
