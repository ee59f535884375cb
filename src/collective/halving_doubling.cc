// Allreduce by recursive halving and doubling (Rabenseifner's algorithm).
//
// Works as follows. The p ranks of the largest power of two p <= N take part by index (see
// PowerOfTwo): when N is not a power of two, each of the N - p extra ranks first folds its whole
// buffer into a partner, which reduces it into its own, and at the end receives the partner's
// final result. The buffer is cut into p blocks (block b will be owned by index b).
//
// Reduce-scatter by recursive halving: in round i (distance d = p/2, p/4, ..., 1) index v pairs
// with v ^ d. Both hold the same range of blocks; the one whose bit d is clear keeps the lower
// half, the other the upper. Each sends the half it gives up and adds in the half it keeps from
// its partner's copy, segment by segment as they arrive, so every block is reduced in a round by
// exactly one rank. After log2(p) rounds index v owns block v, reduced over all N ranks along a
// fixed tree; kAvg divides it there, once. Allgather by recursive doubling: in round i (d = 1, 2,
// ..., p/2) v and v ^ d swap the ranges they hold, received in place, until every index holds
// every block. Each block's value was computed by its owner alone and then only copied, so every
// rank ends with the same bits.
//
// Every receive of the call is posted before the first send (halving rounds into their own
// stretch of scratch memory): a Gloo send waits until the peer has posted the matching receive,
// and a round that posted its receive only when it began would cost each send that extra hop.
#include "halving_doubling.h"

#include <algorithm>
#include <bit>
#include <vector>

#include "dtrain/common/error.h"
#include "handshake.h"
#include "ring.h"

namespace dtrain::collective::detail {

PowerOfTwo::PowerOfTwo(int rank, int n) {
  p = static_cast<int>(std::bit_floor(static_cast<unsigned>(n)));
  extra = n - p;
  if (rank < 2 * extra) {
    index = rank % 2 == 1 ? rank / 2 : -1;
  } else {
    index = rank - extra;
  }
}

namespace {

comm::WaitInfo wait_info(const ButterflyCall& c, const int* peer) {
  return {"allreduce", c.tag, std::span<const int>(peer, 1), c.deadline};
}

}  // namespace

void run_extra(const ButterflyCall& c) {
  comm::Group& g = *c.group;
  const int partner = g.rank() + 1;
  const size_t nbytes = c.count * element_size(c.dtype);
  // The result lands where the buffer is being sent from: it can only arrive after the partner
  // has received all of it.
  auto result = g.buffer(c.data, nbytes);
  result->recv(partner, salted_slot(c.tag, kFoldOutSub, c.salt), 0, nbytes);
  auto out = g.buffer(c.data, nbytes);
  out->send(partner, salted_slot(c.tag, 1, c.salt), 0, nbytes);
  out->wait_send(wait_info(c, &partner));
  result->wait_recv(wait_info(c, &partner));
}

std::unique_ptr<comm::Buffer> post_fold_in(const ButterflyCall& c, const PowerOfTwo& pow2) {
  comm::Group& g = *c.group;
  if (!pow2.has_extra_partner(g.rank())) return nullptr;
  const size_t nbytes = c.count * element_size(c.dtype);
  auto in = g.buffer(g.scratch(nbytes, 1), nbytes);
  in->recv(g.rank() - 1, salted_slot(c.tag, 1, c.salt), 0, nbytes);
  return in;
}

void finish_fold_in(const ButterflyCall& c, comm::Buffer* in) {
  if (in == nullptr) return;
  const int extra = c.group->rank() - 1;
  in->wait_recv(wait_info(c, &extra));
  c.reduce(c.data, in->data(), c.count);
}

void fold_out(const ButterflyCall& c, const PowerOfTwo& pow2) {
  comm::Group& g = *c.group;
  if (!pow2.has_extra_partner(g.rank())) return;
  const int extra = g.rank() - 1;
  const size_t nbytes = c.count * element_size(c.dtype);
  auto out = g.buffer(c.data, nbytes);
  out->send(extra, salted_slot(c.tag, kFoldOutSub, c.salt), 0, nbytes);
  out->wait_send(wait_info(c, &extra));
}

void halving_doubling(const ButterflyCall& c) {
  comm::Group& g = *c.group;
  const int n = g.size();
  if (n == 1 || c.count == 0) return;
  const PowerOfTwo pow2(g.rank(), n);
  if (pow2.index < 0) return run_extra(c);
  const int p = pow2.p;
  const int v = pow2.index;
  const int rounds = std::countr_zero(static_cast<unsigned>(p));
  const size_t elem = element_size(c.dtype);
  const RingLayout blocks = RingLayout::even(c.count, p);
  auto offset = [&](int b) { return b < p ? blocks.offset[b] : c.count; };  // elements
  auto elems = [&](int lo, int hi) { return offset(hi) - offset(lo); };

  // The plan: which blocks each round keeps and gives (halving), then receives and sends
  // (doubling), and where in scratch each halving round's incoming half lands.
  struct Round {
    int peer;
    int keep_lo, keep_hi;  // halving: kept and reduced; doubling: received
    int give_lo, give_hi;  // halving: given up; doubling: sent
    size_t scratch;        // halving: offset (elements) of the incoming half
  };
  std::vector<Round> halving, doubling;
  size_t scratch_elems = 0;
  int lo = 0, hi = p;
  for (int i = 0; i < rounds; ++i) {
    const int d = p >> (i + 1);
    const int mid = lo + (hi - lo) / 2;
    Round h{pow2.rank_of(v ^ d), mid, hi, lo, mid, scratch_elems};
    if ((v & d) == 0) h = {h.peer, lo, mid, mid, hi, scratch_elems};
    scratch_elems += elems(h.keep_lo, h.keep_hi);
    halving.push_back(h);
    lo = h.keep_lo;
    hi = h.keep_hi;
  }
  for (int i = 0; i < rounds; ++i) {
    const int d = 1 << i;
    const int their_lo = lo ^ d;  // ranges are aligned to d: they differ in bit d only
    doubling.push_back({pow2.rank_of(v ^ d), their_lo, their_lo + d, lo, hi, 0});
    lo = std::min(lo, their_lo);
    hi = lo + 2 * d;
  }

  // Sub-channels: halving round i segment j is 2 + i * per_round + j; doubling round i is
  // 2 + (rounds + i) * per_round.
  size_t seg = std::max<size_t>(1, kHalvingSegmentBytes / elem);
  // The same on every rank: the larger half of the first round.
  const size_t largest = std::max(elems(0, p / 2), elems(p / 2, p));
  const size_t budget = (comm::Group::kMaxSub - 8) / (2 * static_cast<size_t>(rounds));
  if ((largest + seg - 1) / seg > budget) seg = (largest + budget - 1) / budget;
  const uint32_t per_round = static_cast<uint32_t>((largest + seg - 1) / seg) + 1;
  auto slot = [&](int round, size_t j) {
    return salted_slot(c.tag, 2 + static_cast<uint32_t>(round) * per_round + j, c.salt);
  };
  auto segments = [&](size_t len) { return (len + seg - 1) / seg; };
  auto seg_len = [&](size_t len, size_t j) { return std::min(seg, len - j * seg); };

  std::byte* scratch = g.scratch(std::max<size_t>(scratch_elems, 1) * elem, 0);
  std::vector<std::vector<std::unique_ptr<comm::Buffer>>> halving_in(rounds);
  std::vector<std::unique_ptr<comm::Buffer>> doubling_in(rounds), sends;
  std::vector<int> send_peers;
  for (int i = 0; i < rounds; ++i) {
    const Round& h = halving[i];
    const size_t keep = elems(h.keep_lo, h.keep_hi);
    for (size_t j = 0; j < segments(keep); ++j) {
      const size_t len = seg_len(keep, j) * elem;
      auto b = g.buffer(scratch + (h.scratch + j * seg) * elem, len);
      b->recv(h.peer, slot(i, j), 0, len);
      halving_in[i].push_back(std::move(b));
    }
  }
  for (int i = 0; i < rounds; ++i) {
    const Round& d = doubling[i];
    const size_t len = elems(d.keep_lo, d.keep_hi) * elem;
    if (len == 0) continue;
    doubling_in[i] = g.buffer(c.data + offset(d.keep_lo) * elem, len);
    doubling_in[i]->recv(d.peer, slot(rounds + i, 0), 0, len);
  }
  auto fold_in = post_fold_in(c, pow2);
  finish_fold_in(c, fold_in.get());

  for (int i = 0; i < rounds; ++i) {
    const Round& h = halving[i];
    const size_t give = elems(h.give_lo, h.give_hi);
    for (size_t j = 0; j < segments(give); ++j) {
      const size_t len = seg_len(give, j) * elem;
      sends.push_back(g.buffer(c.data + (offset(h.give_lo) + j * seg) * elem, len));
      sends.back()->send(h.peer, slot(i, j), 0, len);
      send_peers.push_back(h.peer);
    }
    const size_t keep = elems(h.keep_lo, h.keep_hi);
    for (size_t j = 0; j < segments(keep); ++j) {
      halving_in[i][j]->wait_recv(wait_info(c, &h.peer));
      c.reduce(c.data + (offset(h.keep_lo) + j * seg) * elem,
               scratch + (h.scratch + j * seg) * elem, seg_len(keep, j));
    }
  }
  if (c.avg_divisor > 0) {
    scale_down(c.data + offset(v) * elem, elems(v, v + 1), c.dtype, c.avg_divisor);
  }
  for (int i = 0; i < rounds; ++i) {
    const Round& d = doubling[i];
    const size_t len = elems(d.give_lo, d.give_hi) * elem;
    if (len > 0) {
      sends.push_back(g.buffer(c.data + offset(d.give_lo) * elem, len));
      sends.back()->send(d.peer, slot(rounds + i, 0), 0, len);
      send_peers.push_back(d.peer);
    }
    if (doubling_in[i]) doubling_in[i]->wait_recv(wait_info(c, &d.peer));
  }
  // Sends are collected last. What they read is final, or given up while halving: such blocks
  // are only overwritten by a doubling receive from the same partner, whose final values cannot
  // exist before that partner has received all of our copy.
  for (size_t k = 0; k < sends.size(); ++k) sends[k]->wait_send(wait_info(c, &send_peers[k]));
  fold_out(c, pow2);
}

}  // namespace dtrain::collective::detail
