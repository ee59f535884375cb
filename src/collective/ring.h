// One pass of a ring over N chunks of a buffer (internal to collective/).
//
// Works as follows. The buffer is cut into N chunks (a layout of offsets and counts). In step s
// (0 <= s < N-1) rank r sends chunk (r - s + shift) to its right neighbour and receives chunk
// (r - s - 1 + shift) from its left. A reducing pass adds what it receives into its own copy of the
// chunk (reduce-scatter: with shift -1, rank r ends owning the fully reduced chunk r); a gathering
// pass receives in place (allgather: with shift 0, rank r starts by sending chunk r).
//
// Each chunk is cut into segments, and the ring is pipelined segment by segment: as soon as
// segment j of step s has arrived (and been reduced), segment j of step s+1, which is the same
// piece of memory, is sent on, while later segments of step s are still on the wire. Receives are
// posted ahead: a gathering pass posts all of them at once (each lands in its own place), a
// reducing pass keeps two temporary chunk-sized areas and posts step s+2 into the one step s has
// just freed. Every segment has its own sub-channel of the tag, so matching never depends on
// arrival order.
#pragma once

#include <cstdint>
#include <vector>

#include "dtrain/collective/types.h"

namespace dtrain::collective::detail {

struct RingLayout {
  std::vector<size_t> offset;  // elements
  std::vector<size_t> count;   // elements
  size_t max_count() const;
  // `total` elements in n chunks; the first total % n chunks hold one more element.
  static RingLayout even(size_t total, int n);
  static RingLayout from_counts(std::span<const size_t> counts);
};

struct RingPass {
  comm::Group* group;
  uint64_t tag;
  comm::Clock::time_point deadline;
  const char* op;
  std::byte* data;
  size_t elem_size;
  const RingLayout* layout;
  size_t segment_elems;
  ReduceFn reduce = nullptr;  // null: gathering pass
  int shift = 0;
  uint32_t sub_base = 1;
};

// Segment length (elements) for a layout: the requested bytes, raised if needed so that all
// segments of `passes` passes fit in the tag's sub-channels.
size_t segment_elems_for(const RingLayout& layout, size_t elem_size, size_t segment_bytes, int n,
                         int passes);
// Sub-channels one pass uses (the next pass starts after them).
uint32_t subs_per_pass(const RingLayout& layout, size_t segment_elems, int n);

void run_ring_pass(const RingPass& pass);

}  // namespace dtrain::collective::detail
