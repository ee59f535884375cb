#include "ring.h"

#include <algorithm>
#include <memory>

#include "dtrain/common/error.h"
#include "handshake.h"

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
size_t ceil_div(size_t a, size_t b) {
  return (a + b - 1) / b;
}
int mod(int a, int n) {
  return ((a % n) + n) % n;
}
}  // namespace

size_t segment_elems_for(const RingLayout& layout, size_t elem_size, size_t segment_bytes,
                         int steps) {
  const size_t max_chunk = layout.max_count();
  size_t seg;
  if (segment_bytes != 0) {
    seg = std::max<size_t>(1, segment_bytes / elem_size);
  } else {
    // One segment per chunk would leave nothing to overlap: a rank would receive a whole chunk,
    // then reduce it, then send it, while its neighbours wait.
    const size_t pipelined = ceil_div(max_chunk * elem_size, kMinSegmentsPerChunk);
    const size_t bytes = std::clamp(pipelined, kMinSegmentBytes, kMaxAutoSegmentBytes);
    seg = std::max<size_t>(1, bytes / elem_size);
  }
  const size_t budget = (comm::Group::kMaxSub - 8) / static_cast<size_t>(std::max(1, steps));
  if (max_chunk > 0 && ceil_div(max_chunk, seg) > budget) seg = ceil_div(max_chunk, budget);
  return seg;
}

void run_ring(const RingPass& p) {
  comm::Group& group = *p.group;
  const int n = group.size();
  const int r = group.rank();
  const int steps = p.reduce_steps + p.gather_steps;
  if (n == 1 || steps == 0) return;
  const int right = (r + 1) % n;
  const int left = (r + n - 1) % n;
  const RingLayout& layout = *p.layout;
  const size_t seg = p.segment_elems;
  const size_t elem = p.elem_size;
  const uint32_t per_step = std::max<uint32_t>(1, ceil_div(layout.max_count(), seg));
  int left_peer[1] = {left};
  int right_peer[1] = {right};
  const comm::WaitInfo from_left{p.op, p.tag, left_peer, p.deadline};
  const comm::WaitInfo to_right{p.op, p.tag, right_peer, p.deadline};

  auto chunk_sent = [&](int s) { return mod(r - s + p.shift, n); };
  auto chunk_received = [&](int s) { return mod(r - s - 1 + p.shift, n); };
  auto segments = [&](int c) { return ceil_div(layout.count[c], seg); };
  auto seg_len = [&](int c, size_t j) { return std::min(seg, layout.count[c] - j * seg); };
  auto slot = [&](int s, size_t j) {
    return salted_slot(p.tag, p.sub_base + static_cast<uint32_t>(s) * per_step + j, p.salt);
  };

  // The receives form one ordered sequence of (step, segment) jobs: first the reducing ones, then
  // the gathering ones. Gathering jobs land in place and are all posted at once. Reducing job k
  // lands in window slot k % kWindow; consuming it frees the slot for job k + kWindow. The window
  // keeps the left neighbour several segments ahead while the temporary memory stays a few
  // segments, not a chunk.
  struct Job {
    int step;
    size_t seg;
  };
  std::vector<Job> jobs;
  std::vector<size_t> first_job(steps + 1, 0);
  for (int s = 0; s < steps; ++s) {
    first_job[s] = jobs.size();
    for (size_t j = 0; j < segments(chunk_received(s)); ++j) jobs.push_back({s, j});
  }
  first_job[steps] = jobs.size();
  const size_t reducing_jobs = first_job[p.reduce_steps];
  constexpr size_t kWindow = 8;
  std::byte* window = reducing_jobs > 0 ? group.scratch(kWindow * seg * elem, 0) : nullptr;
  std::vector<std::unique_ptr<comm::Buffer>> recvs(jobs.size());
  std::vector<std::vector<std::unique_ptr<comm::Buffer>>> sends(steps);

  auto post_recv = [&](size_t k) {
    const auto [s, j] = jobs[k];
    const int c = chunk_received(s);
    const size_t len = seg_len(c, j) * elem;
    std::byte* dst = k < reducing_jobs ? window + (k % kWindow) * seg * elem
                                       : p.data + (layout.offset[c] + j * seg) * elem;
    recvs[k] = group.buffer(dst, len);
    recvs[k]->recv(left, slot(s, j), 0, len);
  };
  auto post_send = [&](int s, size_t j) {
    const int c = chunk_sent(s);
    const size_t len = seg_len(c, j) * elem;
    auto b = group.buffer(p.data + (layout.offset[c] + j * seg) * elem, len);
    b->send(right, slot(s, j), 0, len);
    sends[s].push_back(std::move(b));
  };
  auto collect_sends = [&](int s) {
    for (auto& b : sends[s]) b->wait_send(to_right);
    sends[s].clear();
  };

  for (size_t k = 0; k < std::min(kWindow, reducing_jobs); ++k) post_recv(k);
  for (size_t k = reducing_jobs; k < jobs.size(); ++k) post_recv(k);
  for (size_t j = 0; j < segments(chunk_sent(0)); ++j) post_send(0, j);

  for (int s = 0; s < steps; ++s) {
    const int c = chunk_received(s);
    const bool reducing = s < p.reduce_steps;
    const bool finishes = reducing && s + 1 == p.reduce_steps && p.avg_divisor > 0;
    for (size_t k = first_job[s]; k < first_job[s + 1]; ++k) {
      const size_t j = jobs[k].seg;
      recvs[k]->wait_recv(from_left);
      recvs[k].reset();
      if (reducing) {
        std::byte* mine = p.data + (layout.offset[c] + j * seg) * elem;
        p.reduce(mine, window + (k % kWindow) * seg * elem, seg_len(c, j));
        if (finishes) scale_down(mine, seg_len(c, j), p.dtype, p.avg_divisor);
        if (k + kWindow < reducing_jobs) post_recv(k + kWindow);
      }
      if (s + 1 < steps) post_send(s + 1, j);
    }
    if (s > 0) collect_sends(s - 1);
  }
  collect_sends(steps - 1);
}

}  // namespace dtrain::collective::detail
