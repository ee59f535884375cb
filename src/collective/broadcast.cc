// Broadcast (pipelined chain) and barrier (dissemination).
//
// Broadcast works as follows. Ranks form a chain in ring order starting at the root: position
// p = (rank - root) mod N. The data is cut into segments; the root sends every segment to
// position 1; every other rank posts all its receives up front (each segment lands in place) and
// forwards segment j to its successor as soon as it has arrived, so all links of the chain carry
// data at once and the time is close to one transfer of the whole buffer plus N segment times.
// The call descriptor (count, type, root) is checked around the ring first: a rank that names
// another root or count fails with a ProtocolError instead of waiting forever.
//
// Barrier: in round k (k = 0..ceil(log2 N)-1) rank r sends a one-byte token to r + 2^k and waits
// for the token from r - 2^k. After the last round every rank has transitively heard from all.
#include "dtrain/collective/broadcast.h"

#include <memory>

#include "dtrain/common/error.h"
#include "handshake.h"

namespace dtrain::collective {

void broadcast(const BroadcastOptions& o) {
  DT_ENFORCE(o.group != nullptr, "broadcast: no group");
  comm::Group& g = *o.group;
  const int n = g.size();
  DT_ENFORCE(o.root >= 0 && o.root < n, "broadcast: root ", o.root, " is outside 0..", n - 1);
  DT_ENFORCE(o.data.data != nullptr || o.data.count == 0, "broadcast: data is null");
  const uint64_t tag = o.tag ? o.tag : g.next_tag();
  const auto deadline = g.deadline(o.timeout);
  detail::handshake(
      g, tag, deadline,
      {detail::kBroadcast, static_cast<uint32_t>(o.data.dtype), 0, o.root, o.data.count, 0});
  if (n == 1 || o.data.count == 0) return;

  const size_t total = o.data.nbytes();
  size_t seg = o.segment_bytes ? o.segment_bytes : kDefaultSegmentBytes;
  seg = std::max(seg, (total + comm::Group::kMaxSub - 8) / (comm::Group::kMaxSub - 8));
  const size_t nseg = (total + seg - 1) / seg;
  const int pos = (g.rank() - o.root + n) % n;
  const int prev = (g.rank() + n - 1) % n;
  const int next = (g.rank() + 1) % n;
  int prev_peer[1] = {prev};
  int next_peer[1] = {next};
  const comm::WaitInfo from_prev{"broadcast", tag, prev_peer, deadline};
  const comm::WaitInfo to_next{"broadcast", tag, next_peer, deadline};
  auto sub = [](size_t j) { return static_cast<uint32_t>(1 + j); };
  auto len = [&](size_t j) { return std::min(seg, total - j * seg); };

  std::vector<std::unique_ptr<comm::Buffer>> bufs;
  for (size_t j = 0; j < nseg; ++j) bufs.push_back(g.buffer(o.data.bytes() + j * seg, len(j)));
  if (pos > 0) {
    for (size_t j = 0; j < nseg; ++j)
      bufs[j]->recv(prev, comm::Group::slot(tag, sub(j)), 0, len(j));
  }
  const bool forwards = pos < n - 1;
  for (size_t j = 0; j < nseg; ++j) {
    if (pos > 0) bufs[j]->wait_recv(from_prev);
    if (forwards) bufs[j]->send(next, comm::Group::slot(tag, sub(j)), 0, len(j));
  }
  if (forwards) {
    for (size_t j = 0; j < nseg; ++j) bufs[j]->wait_send(to_next);
  }
}

void barrier(const BarrierOptions& o) {
  DT_ENFORCE(o.group != nullptr, "barrier: no group");
  comm::Group& g = *o.group;
  const int n = g.size();
  const uint64_t tag = o.tag ? o.tag : g.next_tag();
  const auto deadline = g.deadline(o.timeout);
  if (n == 1) {
    g.check_usable();
    return;
  }
  const int r = g.rank();
  uint32_t round = 0;
  for (int dist = 1; dist < n; dist *= 2, ++round) {
    const int to = (r + dist) % n;
    const int from = (r - dist % n + n) % n;
    std::byte out{1};
    std::byte in{0};
    auto sb = g.buffer(&out, 1);
    auto rb = g.buffer(&in, 1);
    int to_peer[1] = {to};
    int from_peer[1] = {from};
    rb->recv(from, comm::Group::slot(tag, 1 + round), 0, 1);
    sb->send(to, comm::Group::slot(tag, 1 + round), 0, 1);
    rb->wait_recv({"barrier", tag, from_peer, deadline});
    sb->wait_send({"barrier", tag, to_peer, deadline});
  }
}

}  // namespace dtrain::collective
