// A ring over N chunks of a buffer (internal to collective/).
//
// Works as follows. The buffer is cut into N chunks (a layout of offsets and counts). In step s
// rank r sends chunk (r - s + shift) to its right neighbour and receives chunk (r - s - 1 + shift)
// from its left, so the chunk received in step s is the one sent in step s+1. The first
// reduce_steps steps add what arrives into the rank's own copy (reduce-scatter: shift -1, N-1
// steps, rank r ends owning reduced chunk r); the gather_steps after them receive in place
// (allgather: shift 0). An allreduce runs both as one ring of 2(N-1) steps with shift -1, the
// owner scaling chunk r for kAvg as it finishes it, so the pipeline never drains in between.
//
// Chunks are cut into segments and the ring is pipelined by segment: as soon as segment j of step
// s has arrived (and been reduced) it is sent on as segment j of step s+1. Gathering receives are
// all posted at once, in place (a chunk's final value cannot arrive before this rank's share of it
// has left); reducing ones land in a window of kWindow segment-sized scratch slots, each reposted
// once consumed. Every segment has its own sub-channel of the tag, so matching never depends on
// arrival order. Sends are collected one step late, so a slow right neighbour does not hold up
// the reduction of what the left one has already sent.
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
  ReduceFn reduce = nullptr;  // needed when reduce_steps > 0
  int reduce_steps = 0;
  int gather_steps = 0;
  int shift = 0;
  uint32_t sub_base = 1;
  uint64_t salt = 0;    // folded into every slot (handshake.h); 0 for a verified call
  int avg_divisor = 0;  // > 0: scale the chunk the last reducing step completes (kAvg)
  DataType dtype = DataType::kFloat32;  // for avg_divisor
};

// Segment length (elements) for a layout. segment_bytes 0 picks one by chunk size: at most
// kMaxAutoSegmentBytes, but small enough that a chunk has kMinSegmentsPerChunk segments to
// pipeline (never below kMinSegmentBytes). The length is raised if needed so that all segments
// of the steps fit in the tag's sub-channels.
//
// Measured with 4 ranks on 2 cores over loopback (dtrain bench allreduce --segment-bytes N
// against the default): every message costs wake-ups and system calls on both sides, so fewer,
// larger segments win as long as a chunk still has two of them to overlap; 512 KiB with 4 per
// chunk was 5-15% slower at 2 MiB and 8 MiB, 256 KiB fixed 10-25% slower. These are the bounds
// Gloo's ring uses too.
size_t segment_elems_for(const RingLayout& layout, size_t elem_size, size_t segment_bytes,
                         int steps);
inline constexpr size_t kMinSegmentsPerChunk = 2;
inline constexpr size_t kMinSegmentBytes = size_t{32} << 10;
inline constexpr size_t kMaxAutoSegmentBytes = size_t{1} << 20;

void run_ring(const RingPass& pass);

}  // namespace dtrain::collective::detail
