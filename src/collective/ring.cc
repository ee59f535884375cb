#include "ring.h"

#include <algorithm>
#include <memory>

#include "dtrain/common/error.h"

namespace dtrain::collective::detail {

size_t RingLayout::max_count() const {
  return count.empty() ? 0 : *std::max_element(count.begin(), count.end());
}

RingLayout RingLayout::even(size_t total, int n) {
  RingLayout l;
  size_t base = total / n;
  size_t extra = total % n;
  size_t off = 0;
  for (int i = 0; i < n; ++i) {
    size_t c = base + (static_cast<size_t>(i) < extra ? 1 : 0);
    l.offset.push_back(off);
    l.count.push_back(c);
    off += c;
  }
  return l;
}

RingLayout RingLayout::from_counts(std::span<const size_t> counts) {
  RingLayout l;
  size_t off = 0;
  for (size_t c : counts) {
    l.offset.push_back(off);
    l.count.push_back(c);
    off += c;
  }
  return l;
}

namespace {
size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }
int mod(int a, int n) { return ((a % n) + n) % n; }
}  // namespace

size_t segment_elems_for(const RingLayout& layout, size_t elem_size, size_t segment_bytes,
                         int n, int passes) {
  if (segment_bytes == 0) segment_bytes = kDefaultSegmentBytes;
  size_t seg = std::max<size_t>(1, segment_bytes / elem_size);
  size_t max_chunk = layout.max_count();
  size_t budget = (comm::Group::kMaxSub - 8) / (static_cast<size_t>(passes) * std::max(1, n - 1));
  if (max_chunk > 0 && ceil_div(max_chunk, seg) > budget) seg = ceil_div(max_chunk, budget);
  return seg;
}

uint32_t subs_per_pass(const RingLayout& layout, size_t segment_elems, int n) {
  size_t per_step = std::max<size_t>(1, ceil_div(layout.max_count(), segment_elems));
  return static_cast<uint32_t>(per_step * std::max(1, n - 1));
}

void run_ring_pass(const RingPass& p) {
  comm::Group& group = *p.group;
  const int n = group.size();
  const int r = group.rank();
  if (n == 1) return;
  const int right = (r + 1) % n;
  const int left = (r + n - 1) % n;
  const int steps = n - 1;
  const RingLayout& layout = *p.layout;
  const size_t seg = p.segment_elems;
  const size_t elem = p.elem_size;
  const uint32_t per_step = std::max<uint32_t>(1, ceil_div(layout.max_count(), seg));
  const bool reducing = p.reduce != nullptr;
  int left_peer[1] = {left};
  int right_peer[1] = {right};
  const comm::WaitInfo from_left{p.op, p.tag, left_peer, p.deadline};
  const comm::WaitInfo to_right{p.op, p.tag, right_peer, p.deadline};

  auto chunk_sent = [&](int s) { return mod(r - s + p.shift, n); };
  auto chunk_received = [&](int s) { return mod(r - s - 1 + p.shift, n); };
  auto segments = [&](int c) { return ceil_div(layout.count[c], seg); };
  auto seg_len = [&](int c, size_t j) { return std::min(seg, layout.count[c] - j * seg); };
  auto sub = [&](int s, size_t j) { return p.sub_base + static_cast<uint32_t>(s) * per_step + j; };

  std::vector<std::byte> temp[2];
  if (reducing) {
    temp[0].resize(layout.max_count() * elem);
    if (steps > 1) temp[1].resize(layout.max_count() * elem);
  }
  std::vector<std::vector<std::unique_ptr<comm::Buffer>>> recvs(steps);
  std::vector<std::vector<std::unique_ptr<comm::Buffer>>> sends(steps);

  auto post_recvs = [&](int s) {
    const int c = chunk_received(s);
    for (size_t j = 0; j < segments(c); ++j) {
      const size_t len = seg_len(c, j) * elem;
      std::byte* dst = reducing ? temp[s % 2].data() + j * seg * elem
                                : p.data + (layout.offset[c] + j * seg) * elem;
      auto b = group.buffer(dst, len);
      b->recv(left, comm::Group::slot(p.tag, sub(s, j)), 0, len);
      recvs[s].push_back(std::move(b));
    }
  };
  auto post_send = [&](int s, size_t j) {
    const int c = chunk_sent(s);
    const size_t len = seg_len(c, j) * elem;
    auto b = group.buffer(p.data + (layout.offset[c] + j * seg) * elem, len);
    b->send(right, comm::Group::slot(p.tag, sub(s, j)), 0, len);
    sends[s].push_back(std::move(b));
  };

  if (reducing) {
    post_recvs(0);
    if (steps > 1) post_recvs(1);
  } else {
    for (int s = 0; s < steps; ++s) post_recvs(s);
  }
  for (size_t j = 0; j < segments(chunk_sent(0)); ++j) post_send(0, j);

  for (int s = 0; s < steps; ++s) {
    const int c = chunk_received(s);
    for (size_t j = 0; j < segments(c); ++j) {
      recvs[s][j]->wait_recv(from_left);
      if (reducing) {
        p.reduce(p.data + (layout.offset[c] + j * seg) * elem,
                 temp[s % 2].data() + j * seg * elem, seg_len(c, j));
      }
      // Chunk received in step s is the chunk sent in step s+1: forward this segment now.
      if (s + 1 < steps) post_send(s + 1, j);
    }
    recvs[s].clear();
    if (reducing && s + 2 < steps) post_recvs(s + 2);
    for (auto& b : sends[s]) b->wait_send(to_right);
    sends[s].clear();
  }
}

}  // namespace dtrain::collective::detail
