// Allreduce by recursive halving and doubling, and by recursive doubling (internal to
// collective/; the algorithms are described in halving_doubling.cc and recursive_doubling.cc).
#pragma once

#include <cstdint>
#include <memory>

#include "dtrain/collective/types.h"

namespace dtrain::collective::detail {

// One allreduce call, in place on `data`, agreed on every rank.
struct ButterflyCall {
  comm::Group* group;
  uint64_t tag;
  uint64_t salt;  // handshake.h; 0 for a verified call
  comm::Clock::time_point deadline;
  std::byte* data;
  size_t count;
  DataType dtype;
  ReduceFn reduce;
  int avg_divisor = 0;  // > 0: kAvg
};

// How a group of n ranks maps onto the largest power of two p <= n. The first 2 * extra ranks
// pair up (2i, 2i+1): the even one is an extra rank, folded into its odd partner, which takes part
// as index i; the remaining ranks take part as indices rank - extra.
struct PowerOfTwo {
  int p = 1;
  int extra = 0;
  int index = -1;  // this rank's index among the p, or -1 for an extra rank

  PowerOfTwo(int rank, int n);
  int rank_of(int index) const { return index < extra ? 2 * index + 1 : index + extra; }
  bool has_extra_partner(int rank) const { return index >= 0 && rank < 2 * extra; }
};

// Halving rounds arrive in segments of this size, each reduced as soon as it is there.
inline constexpr size_t kHalvingSegmentBytes = size_t{256} << 10;

void halving_doubling(const ButterflyCall& call);
void recursive_doubling(const ButterflyCall& call);

// The fold both share. An extra rank runs run_extra() alone: it posts the receive of the final
// result, sends its buffer to its partner and waits for both. The partner posts the receive of
// that buffer (into scratch area 1) with its other receives (post_fold_in), adds it in before its
// first round (finish_fold_in) and sends the result back at the end (fold_out). The fold uses
// sub-channels 1 and kFoldOutSub; the rounds use 2 and up.
inline constexpr uint32_t kFoldOutSub = comm::Group::kMaxSub;
void run_extra(const ButterflyCall& call);
std::unique_ptr<comm::Buffer> post_fold_in(const ButterflyCall& call, const PowerOfTwo& pow2);
void finish_fold_in(const ButterflyCall& call, comm::Buffer* in);
void fold_out(const ButterflyCall& call, const PowerOfTwo& pow2);

}  // namespace dtrain::collective::detail
