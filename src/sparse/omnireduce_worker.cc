// OmniReduce worker: streams this rank's non-zero blocks to the other ranks' aggregators.
//
// Works as follows. For each lane served by another rank the worker keeps its look-ahead per
// column (the next block of the column that is non-zero here) and the lane's current targets
// (from the last reply). Round 0 sends the first look-aheads unconditionally. Each reply carries
// the sums of the current targets, written into place, and the next targets; the worker then
// sends the blocks whose target equals its look-ahead, each with its next look-ahead, or nothing
// when no column targets one of its blocks. A lane ends when every target is kEnd.
//
// Deadlock freedom: events are ordered by (round, lane). Workers wait for replies and aggregators
// for requests in that order, and every message of event (k, L) is sent while handling an
// earlier event (the reply of (k-1, L)), with its receive already posted, so the smallest
// unfinished event can always finish.
#include <cstring>
#include <memory>

#include "dtrain/common/error.h"
#include "omnireduce_internal.h"

namespace dtrain::sparse::detail {
namespace {

struct WorkerLane {
  uint64_t lane = 0;
  int aggregator = 0;
  uint64_t round = 0;
  bool done = false;
  std::vector<uint64_t> target;  // current targets per column (kEnd: column finished)
  std::vector<uint64_t> ahead;   // this worker's look-ahead per column
  size_t active = 0;             // targets that are not kEnd: sums in the next reply
  // Message memory as floats: u64 look-aheads/targets are copied in and out with memcpy.
  Message request;
  Message reply;
  std::unique_ptr<comm::Buffer> request_buf;
  std::unique_ptr<comm::Buffer> reply_buf;
  bool request_pending = false;
};

class Worker {
 public:
  Worker(const Context& ctx, Counters& counters)
      : ctx_(ctx), l_(*ctx.layout), g_(*ctx.group), counters_(counters) {}

  void run() {
    const int me = g_.rank();
    const size_t words = (l_.max_message_bytes() + sizeof(float) - 1) / sizeof(float);
    for (uint64_t lane = 0; lane < l_.lanes; ++lane) {
      if (l_.host_of_lane(lane) == me) continue;
      WorkerLane& w = lanes_.emplace_back();
      w.lane = lane;
      w.aggregator = l_.host_of_lane(lane);
      w.target.assign(l_.columns, kEnd);
      w.ahead.resize(l_.columns);
      w.request = make_message(words);
      w.reply = make_message(words);
      w.request_buf = g_.buffer(w.request.get(), words * sizeof(float));
      w.reply_buf = g_.buffer(w.reply.get(), words * sizeof(float));
    }
    // Round 0: the first look-aheads, unconditionally.
    for (WorkerLane& w : lanes_) {
      for (size_t c = 0; c < l_.columns; ++c) {
        w.ahead[c] = ctx_.next_nonzero(l_.first_block(w.lane, c), counters_.blocks_nonzero);
        put_u64(w.request, c, w.ahead[c]);
      }
      post_reply(w);
      send_request(w, l_.first_request_bytes());
    }
    size_t remaining = lanes_.size();
    while (remaining > 0) {
      for (WorkerLane& w : lanes_) {
        if (w.done) continue;
        on_reply(w);
        if (w.done) --remaining;
      }
    }
    for (WorkerLane& w : lanes_) {
      if (w.request_pending) wait_send(w);
    }
  }

 private:
  comm::WaitInfo info(const WorkerLane& w, int* peer) const {
    *peer = w.aggregator;
    return {"omnireduce", ctx_.tag, std::span<const int>(peer, 1), ctx_.deadline};
  }

  void post_reply(WorkerLane& w) {
    w.reply_buf->recv(w.aggregator, comm::Group::slot(ctx_.tag, Layout::reply_sub(w.lane)), 0,
                      l_.reply_bytes(w.active));
  }

  void send_request(WorkerLane& w, size_t bytes) {
    w.request_buf->send(w.aggregator, comm::Group::slot(ctx_.tag, Layout::request_sub(w.lane)), 0,
                        bytes);
    w.request_pending = true;
    counters_.bytes_sent += bytes;
  }

  void wait_send(WorkerLane& w) {
    int peer;
    w.request_buf->wait_send(info(w, &peer));
    w.request_pending = false;
  }

  void on_reply(WorkerLane& w) {
    int peer;
    w.reply_buf->wait_recv(info(w, &peer));
    counters_.bytes_received += l_.reply_bytes(w.active);
    // Check the next targets before touching anything: each is kEnd or a later block of its
    // column, and none lies past this worker's own look-ahead (a target is a minimum).
    next_.resize(l_.columns);
    try {
      decode_reply(
          l_, w.lane, w.round, w.target, w.ahead,
          std::as_bytes(std::span(w.reply.get(), l_.reply_bytes(w.active) / sizeof(float))),
          {ctx_.tag, w.aggregator, g_.rank()}, next_);
    } catch (const ProtocolError& e) {
      g_.fail(comm::Group::FailKind::kProtocol, w.aggregator, e.what());
    }
    const float* sums = w.reply.get() + 2 * l_.columns;
    for (size_t c = 0; c < l_.columns; ++c) {
      if (w.target[c] == kEnd) continue;
      ctx_.write_block(w.target[c], sums);
      sums += l_.block;
      ++counters_.blocks_union;
    }
    w.active = 0;
    for (size_t c = 0; c < l_.columns; ++c) {
      w.target[c] = next_[c];
      w.active += w.target[c] != kEnd;
    }
    ++w.round;
    if (w.active == 0) {
      w.done = true;
      return;
    }
    post_reply(w);
    contributing_.clear();
    for (size_t c = 0; c < l_.columns; ++c) {
      if (w.target[c] != kEnd && w.ahead[c] == w.target[c]) contributing_.push_back(c);
    }
    if (contributing_.empty()) return;
    if (w.request_pending) wait_send(w);
    const size_t contributed = contributing_.size();
    // The look-aheads first, then the blocks, both in column order.
    float* blocks = w.request.get() + 2 * contributed;
    for (size_t i = 0; i < contributed; ++i) {
      const size_t c = contributing_[i];
      ctx_.read_block(w.target[c], blocks + i * l_.block);
      w.ahead[c] = ctx_.next_nonzero(w.target[c] + l_.stride, counters_.blocks_nonzero);
      put_u64(w.request, i, w.ahead[c]);
    }
    send_request(w, l_.request_bytes(contributed));
  }

  const Context& ctx_;
  const Layout& l_;
  comm::Group& g_;
  Counters& counters_;
  std::vector<WorkerLane> lanes_;
  std::vector<size_t> contributing_;  // columns of the request being built
  std::vector<uint64_t> next_;        // the next targets of the reply being handled
};

}  // namespace

void run_worker(const Context& ctx, Counters& counters) {
  Worker(ctx, counters).run();
}

}  // namespace dtrain::sparse::detail
