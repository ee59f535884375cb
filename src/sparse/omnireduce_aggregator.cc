// OmniReduce aggregator: sums the blocks of this rank's lanes, one round per lane at a time.
//
// Works as follows. Per lane the aggregator keeps every worker's look-ahead per column (when it is
// colocated, its own rank's read from memory; the others' from their requests) and the current
// targets, the per-column minimum. A worker contributes to a round exactly when its look-ahead
// equals some target, so the aggregator posts receives of the exact size for those workers only.
// Each target block is summed into a zeroed block in worker-rank order (so every worker gets the
// same bits), written into this rank's data and into the reply, which every other worker receives
// together with the next targets. Replies are double-buffered per lane: round k fills one buffer
// while the sends of round k-1 from the other may still be in flight. Lanes are served in (round,
// lane) order, as the workers wait for them (see omnireduce_worker.cc on why that cannot deadlock).
#include <algorithm>
#include <cstring>
#include <memory>

#include "dtrain/common/error.h"
#include "omnireduce_internal.h"

namespace dtrain::sparse::detail {
namespace {

struct Inbox {
  Message message;
  std::unique_ptr<comm::Buffer> buf;
  size_t contributed = 0;  // blocks in the request of this round
  size_t used = 0;         // of those, already summed
  bool expected = false;   // a receive is posted for this round
  std::vector<uint64_t> next;  // the look-aheads the request carries (decoded, checked)
};

struct AggregatorLane {
  uint64_t lane = 0;
  uint64_t round = 0;
  bool done = false;
  std::vector<uint64_t> target;  // per column
  std::vector<uint64_t> ahead;   // workers x columns
  std::vector<Inbox> inbox;      // per worker; unused for this rank
  Message out[2];
  std::unique_ptr<comm::Buffer> out_buf[2];
  int out_pending[2] = {0, 0};
};

class Aggregator {
 public:
  Aggregator(const Context& ctx, Counters& counters)
      : ctx_(ctx), l_(*ctx.layout), g_(*ctx.group), counters_(counters), me_(g_.rank()) {
    for (int w = 0; w < l_.workers; ++w) {
      if (w != me_) remote_.push_back(w);
    }
    is_worker_ = me_ < l_.workers;
    acc_.resize(l_.block);
    mine_.resize(l_.block);
  }

  void run() {
    const size_t words = (l_.max_message_bytes() + sizeof(float) - 1) / sizeof(float);
    for (uint64_t lane = 0; lane < l_.lanes; ++lane) {
      if (l_.host_of_lane(lane) != me_) continue;
      AggregatorLane& a = lanes_.emplace_back();
      a.lane = lane;
      a.target.assign(l_.columns, kEnd);
      a.ahead.assign(static_cast<size_t>(l_.workers) * l_.columns, kEnd);
      for (size_t c = 0; c < l_.columns && is_worker_; ++c) {
        ahead(a, me_, c) = ctx_.next_nonzero(l_.first_block(lane, c), counters_.blocks_nonzero);
      }
      a.inbox.resize(l_.workers);
      for (int w : remote_) {
        Inbox& in = a.inbox[w];
        in.message = make_message(words);
        in.buf = g_.buffer(in.message.get(), words * sizeof(float));
        in.buf->recv(w, request_slot(a), 0, l_.first_request_bytes());
        in.expected = true;
      }
      for (int b = 0; b < 2; ++b) {
        a.out[b] = make_message(words);
        a.out_buf[b] = g_.buffer(a.out[b].get(), words * sizeof(float));
      }
    }
    size_t remaining = lanes_.size();
    while (remaining > 0) {
      for (AggregatorLane& a : lanes_) {
        if (a.done) continue;
        serve_round(a);
        if (a.done) --remaining;
      }
    }
    for (AggregatorLane& a : lanes_) {
      for (int b = 0; b < 2; ++b) drain(a, b);
    }
  }

 private:
  uint64_t& ahead(AggregatorLane& a, int w, size_t c) { return a.ahead[w * l_.columns + c]; }
  uint64_t request_slot(const AggregatorLane& a) const {
    return comm::Group::slot(ctx_.tag, Layout::request_sub(a.lane));
  }

  // Checks worker w's request of this round before anything follows its pointers.
  void decode(AggregatorLane& a, int w) {
    Inbox& in = a.inbox[w];
    const size_t bytes = a.round == 0 ? l_.first_request_bytes() : l_.request_bytes(in.contributed);
    in.next.resize(l_.columns);
    try {
      decode_request(l_, a.lane, a.round, a.target,
                     std::span<const uint64_t>(&ahead(a, w, 0), l_.columns),
                     std::as_bytes(std::span(in.message.get(), bytes / sizeof(float))),
                     {ctx_.tag, w, me_}, in.next);
    } catch (const ProtocolError& e) {
      g_.fail(comm::Group::FailKind::kProtocol, w, e.what());
    }
  }

  void drain(AggregatorLane& a, int b) {
    for (; a.out_pending[b] > 0; --a.out_pending[b]) {
      a.out_buf[b]->wait_send({"omnireduce", ctx_.tag, remote_, ctx_.deadline});
    }
  }

  void serve_round(AggregatorLane& a) {
    for (int w : remote_) {
      Inbox& in = a.inbox[w];
      if (!in.expected) continue;
      int peer[1] = {w};
      in.buf->wait_recv({"omnireduce", ctx_.tag, peer, ctx_.deadline});
      in.expected = false;
      in.used = 0;
      counters_.bytes_received +=
          a.round == 0 ? l_.first_request_bytes() : l_.request_bytes(in.contributed);
      decode(a, w);
    }
    const int b = static_cast<int>(a.round % 2);
    drain(a, b);
    Message& out = a.out[b];
    float* sums = out.get() + 2 * l_.columns;
    size_t active = 0;
    if (a.round == 0) {
      for (int w : remote_) {
        for (size_t c = 0; c < l_.columns; ++c) ahead(a, w, c) = a.inbox[w].next[c];
      }
    } else {
      for (size_t c = 0; c < l_.columns; ++c) {
        const uint64_t t = a.target[c];
        if (t == kEnd) continue;
        sum_block(a, c, t);
        if (is_worker_) ctx_.write_block(t, acc_.data());
        std::memcpy(sums + active * l_.block, acc_.data(), l_.block * sizeof(float));
        ++active;
      }
    }
    counters_.blocks_union += active;
    // Next targets: the minimum look-ahead per column.
    size_t next_active = 0;
    for (size_t c = 0; c < l_.columns; ++c) {
      uint64_t t = kEnd;
      for (int w = 0; w < l_.workers; ++w) t = std::min(t, ahead(a, w, c));
      a.target[c] = t;
      put_u64(out, c, t);
      next_active += t != kEnd;
    }
    ++a.round;
    a.done = next_active == 0;
    if (!a.done) {
      // Receive from exactly the workers some next target names, sized by what they will send.
      for (int w : remote_) {
        Inbox& in = a.inbox[w];
        in.contributed = 0;
        for (size_t c = 0; c < l_.columns; ++c) {
          in.contributed += a.target[c] != kEnd && ahead(a, w, c) == a.target[c];
        }
        if (in.contributed == 0) continue;
        in.buf->recv(w, request_slot(a), 0, l_.request_bytes(in.contributed));
        in.expected = true;
      }
    }
    const size_t bytes = l_.reply_bytes(active);
    for (int w : remote_) {
      a.out_buf[b]->send(w, comm::Group::slot(ctx_.tag, Layout::reply_sub(a.lane)), 0, bytes);
      ++a.out_pending[b];
      counters_.bytes_sent += bytes;
    }
  }

  // acc_ = sum over the workers whose look-ahead is target t of column c, in rank order; each
  // contributor's look-ahead advances to the one it sent (this rank's: computed here).
  void sum_block(AggregatorLane& a, size_t c, uint64_t t) {
    std::fill(acc_.begin(), acc_.end(), 0.0f);
    for (int w = 0; w < l_.workers; ++w) {
      if (ahead(a, w, c) != t) continue;
      const float* block;
      if (w == me_) {
        ctx_.read_block(t, mine_.data());
        block = mine_.data();
        ahead(a, w, c) = ctx_.next_nonzero(t + l_.stride, counters_.blocks_nonzero);
      } else {
        Inbox& in = a.inbox[w];
        block = in.message.get() + 2 * in.contributed + in.used * l_.block;
        ++in.used;
        ahead(a, w, c) = in.next[c];  // checked by decode()
      }
      for (size_t i = 0; i < l_.block; ++i) acc_[i] += block[i];
    }
  }

  const Context& ctx_;
  const Layout& l_;
  comm::Group& g_;
  Counters& counters_;
  const int me_;
  bool is_worker_ = false;  // colocated: this rank also contributes its own blocks
  std::vector<int> remote_;
  std::vector<AggregatorLane> lanes_;
  std::vector<float> acc_;
  std::vector<float> mine_;
};

}  // namespace

void run_aggregator(const Context& ctx, Counters& counters) {
  Aggregator(ctx, counters).run();
}

}  // namespace dtrain::sparse::detail
