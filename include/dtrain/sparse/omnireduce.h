// OmniReduce: an in-place SUM allreduce of a float tensor where only non-zero blocks travel
// (Fei et al., SIGCOMM 2021; spec in shared/specs/omnireduce.md). Aggregators own the blocks of
// every A-th message row. They are colocated (threads inside the worker processes: aggregator a
// runs on worker a % N) or dedicated (`servers` ranks at the end of the group only aggregate:
// aggregator a runs on server a % servers).
//
// allgather_sparse is the AGsparse baseline: each rank gathers every rank's (index, value) list of
// non-zero elements and sums the lists in rank order. Both give bit-identical results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "dtrain/comm/group.h"

namespace dtrain::sparse {

struct OmniReduceOptions {
  explicit OmniReduceOptions(comm::Group& g) : group(&g) {}
  comm::Group* group;
  uint64_t tag = 0;         // 0: group.next_tag()
  comm::Millis timeout{0};  // 0: the group's default
  std::span<float> data;    // in-place SUM over all workers
  size_t block = 256;       // elements per block; a block travels only where it has a non-zero
  size_t blocks_per_message = 256;  // block fusion: blocks per message (one per column of a slot)
  int slots = 2;                    // slots (messages in flight) per (worker, aggregator)
  int aggregators = 0;  // aggregator roles A; 0: one per worker (colocated) or per server
  // Dedicated aggregators: the last `servers` ranks of the group only aggregate. They call
  // omnireduce() with empty `data` and the same settings; the tensor size comes from the workers.
  int servers = 0;
  // The call handshake (every rank checks every other's size and settings, a ProtocolError naming
  // both on a mismatch) costs one all-to-all exchange of small messages. A caller that repeats a
  // call it has verified before (same size and settings on every rank, e.g. the same bucket each
  // step) may skip it; if the ranks then disagree, they fail at the deadline instead.
  bool verify = true;
  // Dedicated aggregators called with verify = false: the workers' tensor size (with the
  // handshake they learn it from the workers and this is ignored).
  size_t server_count = 0;
};

struct OmniReduceStats {
  uint64_t blocks_nonzero_local = 0;  // blocks of this rank's input with a non-zero element
  uint64_t blocks_union = 0;    // blocks non-zero at one worker or more (same on all workers; on a
                                // dedicated aggregator, those of its own message rows)
  uint64_t bytes_sent = 0;      // protocol payload bytes this rank sent (not the handshake)
  uint64_t bytes_received = 0;  // ... and received
};

// Collective: every rank calls it with the same size and settings (checked; a disagreement is a
// ProtocolError on every rank naming the rank and both calls). Throws IoError/TimeoutError naming
// the peer when one dies or stalls.
OmniReduceStats omnireduce(const OmniReduceOptions& options);

// Same result through two allgathervs of the non-zero (index, value) lists. Uses group, timeout,
// data and block (for the block statistics); `tag` is ignored (its three allgathers each draw one
// from the group). The byte counts are the payload of the two ring allgathervs.
OmniReduceStats allgather_sparse(const OmniReduceOptions& options);

}  // namespace dtrain::sparse
