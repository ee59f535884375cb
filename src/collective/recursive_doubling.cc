// Allreduce by recursive doubling, for buffers so small that the number of messages, not their
// size, sets the time.
//
// Works as follows. The p ranks of the largest power of two p <= N take part by index; extra ranks
// fold their buffer into a partner first and receive the result at the end (PowerOfTwo in
// halving_doubling.h). In round i (distance d = 1, 2, ..., p/2) index v swaps its whole buffer
// with index v ^ d and both combine the two. After log2(p) rounds every index holds the reduction
// over all N ranks: log2(p) messages on the critical path instead of 2 log2(p) (halving-doubling)
// or 2 (N-1) (ring), each carrying the whole buffer, which only pays while the buffer is small.
// Every round's receive has its own stretch of scratch memory and is posted before the first
// send, so no send waits for its peer to post.
//
// Both ranks of a pair compute the same value, so they must compute it in the same order: each
// combines as op(lower index's value, higher index's value). Sums of IEEE numbers commute anyway,
// but a min or max of +0 and -0, or of NaNs with different payloads, would not. Every rank thus
// follows the same tree and ends with the same bits; kAvg divides that identical sum by N on every
// rank, which again gives identical bits.
#include <bit>
#include <cstring>
#include <vector>

#include "halving_doubling.h"
#include "handshake.h"

namespace dtrain::collective::detail {

void recursive_doubling(const ButterflyCall& c) {
  comm::Group& g = *c.group;
  const int n = g.size();
  if (n == 1 || c.count == 0) return;
  const PowerOfTwo pow2(g.rank(), n);
  if (pow2.index < 0) return run_extra(c);
  const int v = pow2.index;
  const int rounds = std::countr_zero(static_cast<unsigned>(pow2.p));
  const size_t nbytes = c.count * element_size(c.dtype);
  std::byte* scratch = g.scratch(std::max(rounds, 1) * nbytes, 0);
  std::vector<std::unique_ptr<comm::Buffer>> in(rounds), out(rounds);
  std::vector<int> peer(rounds);
  for (int i = 0; i < rounds; ++i) {
    peer[i] = pow2.rank_of(v ^ (1 << i));
    in[i] = g.buffer(scratch + i * nbytes, nbytes);
    in[i]->recv(peer[i], salted_slot(c.tag, 2 + i, c.salt), 0, nbytes);
  }
  auto fold_in = post_fold_in(c, pow2);
  finish_fold_in(c, fold_in.get());
  for (int i = 0; i < rounds; ++i) {
    const comm::WaitInfo info{"allreduce", c.tag, std::span<const int>(&peer[i], 1), c.deadline};
    std::byte* theirs = scratch + i * nbytes;
    out[i] = g.buffer(c.data, nbytes);
    out[i]->send(peer[i], salted_slot(c.tag, 2 + i, c.salt), 0, nbytes);
    in[i]->wait_recv(info);
    // The send reads `data`, which the combination below overwrites.
    out[i]->wait_send(info);
    if (v < (v ^ (1 << i))) {
      c.reduce(c.data, theirs, c.count);
    } else {
      c.reduce(theirs, c.data, c.count);
      std::memcpy(c.data, theirs, nbytes);
    }
  }
  if (c.avg_divisor > 0) scale_down(c.data, c.count, c.dtype, c.avg_divisor);
  fold_out(c, pow2);
}

}  // namespace dtrain::collective::detail
