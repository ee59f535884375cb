// A worker's connection to the shards (see dtrain/ps/client.h).
//
// The client works as follows. One DEALER socket per shard carries requests, each with a fresh
// request id; a ticket is a list of parts, one request to one shard each. Replies may arrive in
// any order and for any ticket: whichever wait() is polling takes every reply it finds, puts a
// pull's values straight into the caller's buffer (a part's copy plan: reply offset, caller
// offset, count) and marks the part answered. wait(t) returns once t's parts are all answered,
// or throws the first error reply, or a TimeoutError naming the silent shards after `timeout`.
// A ticket that failed is forgotten: a late reply for it finds no part and is dropped, so it
// never writes into a buffer its caller has released.
//
// Rows: push_rows sums repeated rows first (a row is one key set per push, as the dense push of
// the same gradient would be), then cuts every row at the shards' boundaries into segments
// (merging neighbouring rows into one segment); pull_rows asks for each distinct row once and
// copies it to every place the caller listed it.
#include "dtrain/ps/client.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <numeric>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "dtrain/common/error.h"
#include "wire.h"

namespace dtrain::ps {
namespace {

using SteadyClock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;
using wire::Op;
using wire::Segment;

struct Copy {
  uint64_t src = 0;  // floats into the reply's values
  uint64_t dst = 0;  // floats into the caller's buffer
  uint64_t n = 0;
};

struct Part {
  int shard = 0;
  uint64_t id = 0;
  Op op = Op::kHello;
  bool answered = false;
  wire::ReplyHead reply;
  float* out = nullptr;
  std::vector<Copy> copies;
  uint64_t values = 0;  // the reply must carry this many
};

struct Pending {
  std::vector<Part> parts;
  size_t left = 0;
  bool pull = false;  // sets pulled_clock when complete
  std::exception_ptr error;
};

// Per shard: the segments of a row request and (push) their values.
struct RowPlan {
  std::vector<Segment> segments;
  std::vector<float> values;
  std::vector<Copy> copies;
  uint64_t size = 0;  // floats in the segments
};

void add_segment(RowPlan& p, uint64_t begin, uint64_t size) {
  if (!p.segments.empty() && p.segments.back().begin + p.segments.back().size == begin) {
    p.segments.back().size += size;
  } else {
    p.segments.push_back({begin, size});
  }
  p.size += size;
}

zmq::socket_t dealer(zmq::context_t& ctx, const std::string& endpoint, Millis send_timeout,
                     uint64_t length) {
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::sndtimeo, static_cast<int>(send_timeout.count()));
  s.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>((1 << 20) + length * sizeof(float)));
  s.connect(endpoint);
  return s;
}

}  // namespace

struct Client::Impl {
  ClientOptions o;
  KeyRanges keys;
  zmq::context_t ctx{1};
  std::vector<zmq::socket_t> sockets;
  std::atomic<int64_t> clock{0};
  std::atomic<int64_t> pulled_clock{0};
  std::atomic<uint64_t> sent{0}, received{0};
  uint64_t next_id = 1;
  Ticket next_ticket = 1;
  std::unordered_map<Ticket, Pending> pending;
  std::unordered_map<uint64_t, std::pair<Ticket, size_t>> by_id;

  std::thread heartbeat;
  std::mutex hb_mu;
  std::condition_variable hb_cv;
  bool hb_stop = false;

  explicit Impl(ClientOptions opts)
      : o(std::move(opts)),
        keys(o.length, static_cast<int>(std::max<size_t>(1, o.endpoints.size()))) {
    DT_ENFORCE(!o.endpoints.empty(), "ps client: no shard endpoints");
    DT_ENFORCE(o.timeout.count() > 0, "ps client: timeout must be positive");
    for (size_t s = 0; s < o.endpoints.size(); ++s) {
      try {
        sockets.push_back(dealer(ctx, o.endpoints[s], o.timeout, o.length));
      } catch (const zmq::error_t& e) {
        DT_THROW(InvalidArgument, "ps client: cannot connect to shard ", s, " at '", o.endpoints[s],
                 "': ", e.what());
      }
    }
  }

  std::string shard_name(int s) const {
    return detail::concat("ps shard ", s, " at ", o.endpoints[static_cast<size_t>(s)]);
  }

  uint64_t send(int shard, wire::RequestHead h, std::span<const Segment> segments = {},
                std::span<const float> values = {}) {
    h.id = next_id++;
    h.worker = o.worker;
    const auto head = wire::encode_request_head(h, segments.size(), values.size());
    zmq::message_t msg(head.size() + segments.size_bytes() + values.size_bytes());
    auto* p = static_cast<std::byte*>(msg.data());
    std::memcpy(p, head.data(), head.size());
    if (!segments.empty()) std::memcpy(p + head.size(), segments.data(), segments.size_bytes());
    if (!values.empty()) {
      std::memcpy(p + head.size() + segments.size_bytes(), values.data(), values.size_bytes());
    }
    const size_t size = msg.size();
    if (!sockets[static_cast<size_t>(shard)].send(msg, zmq::send_flags::none)) {
      DT_THROW(TimeoutError, shard_name(shard), ": could not queue ", op_name(h.op), " within ",
               o.timeout.count(), " ms (the shard is not taking requests)");
    }
    sent += size;
    return h.id;
  }

  Ticket issue(std::vector<Part> parts, bool pull) {
    const Ticket t = next_ticket++;
    Pending p;
    p.left = parts.size();
    p.pull = pull;
    p.parts = std::move(parts);
    for (size_t i = 0; i < p.parts.size(); ++i) by_id[p.parts[i].id] = {t, i};
    pending.emplace(t, std::move(p));
    return t;
  }

  void forget(Ticket t) {
    auto it = pending.find(t);
    if (it == pending.end()) return;
    for (const auto& part : it->second.parts) by_id.erase(part.id);
    pending.erase(it);
  }

  void dispatch(int shard, const zmq::message_t& msg) {
    received += msg.size();
    wire::Reply r;
    try {
      r = wire::decode_reply({static_cast<const std::byte*>(msg.data()), msg.size()});
    } catch (const ProtocolError& e) {
      DT_THROW(ProtocolError, shard_name(shard), ": ", e.what());
    }
    auto at = by_id.find(r.head.id);
    if (at == by_id.end()) {
      if (r.head.status != wire::Status::kOk) {
        spdlog::warn("{}: error reply to no pending request: {}", shard_name(shard),
                     r.head.message);
      }
      return;  // a late reply to a ticket that timed out
    }
    auto [ticket, index] = at->second;
    Pending& p = pending.at(ticket);
    Part& part = p.parts[index];
    if (part.shard != shard || part.answered) return;
    by_id.erase(at);
    part.answered = true;
    --p.left;
    const char* op = op_name(part.op);
    if (r.head.status != wire::Status::kOk) {
      const std::string text =
          detail::concat(shard_name(shard), ": ", op, " failed: ", r.head.message);
      if (!p.error) {
        switch (r.head.status) {
          case wire::Status::kInvalidArgument:
            p.error = std::make_exception_ptr(InvalidArgument(text));
            break;
          case wire::Status::kProtocolError:
            p.error = std::make_exception_ptr(ProtocolError(text));
            break;
          default:
            p.error = std::make_exception_ptr(Error(text));
        }
      }
      return;
    }
    if (r.value_count != part.values) {
      if (!p.error) {
        p.error = std::make_exception_ptr(
            ProtocolError(detail::concat(shard_name(shard), ": ", op, " reply carries ",
                                         r.value_count, " values, expected ", part.values)));
      }
      return;
    }
    for (const auto& c : part.copies) {
      std::memcpy(part.out + c.dst, r.values.data() + c.src * sizeof(float), c.n * sizeof(float));
    }
    r.values = {};
    part.reply = std::move(r.head);
    if (p.left == 0 && p.pull && !p.error && !p.parts.empty()) {
      int64_t low = p.parts.front().reply.clock;
      for (const auto& q : p.parts) low = std::min(low, q.reply.clock);
      pulled_clock = low;
    }
  }

  // Waits for ticket t and returns its parts (the replies).
  Pending finish(Ticket t) {
    auto it = pending.find(t);
    DT_ENFORCE(it != pending.end(), "ps client: unknown or finished ticket ", t);
    const auto deadline = SteadyClock::now() + o.timeout;
    std::vector<zmq::pollitem_t> items;
    for (auto& s : sockets) items.push_back({s.handle(), 0, ZMQ_POLLIN, 0});
    while (true) {
      Pending& p = pending.at(t);
      if (p.error) {
        auto e = p.error;
        forget(t);
        std::rethrow_exception(e);
      }
      if (p.left == 0) {
        Pending done = std::move(p);
        forget(t);
        return done;
      }
      const auto now = SteadyClock::now();
      if (now >= deadline) {
        std::string silent;
        const Part* first = nullptr;
        for (const auto& part : p.parts) {
          if (part.answered) continue;
          if (!first) first = &part;
          silent += (silent.empty() ? "" : ", ") + std::to_string(part.shard);
        }
        const std::string text = detail::concat(
            shard_name(first->shard), ": no reply to ", op_name(first->op), " (request ", first->id,
            ", worker ", o.worker, ") within ", o.timeout.count(), " ms; silent shards: ", silent);
        forget(t);
        throw TimeoutError(text);
      }
      const auto left = std::chrono::duration_cast<Millis>(deadline - now) + Millis(1);
      for (auto& item : items) item.revents = 0;
      try {
        zmq::poll(items.data(), items.size(), left);
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) DT_THROW(IoError, "ps client: poll failed: ", e.what());
      }
      for (size_t s = 0; s < sockets.size(); ++s) {
        if (!(items[s].revents & ZMQ_POLLIN)) continue;
        zmq::message_t msg;
        while (sockets[s].recv(msg, zmq::recv_flags::dontwait)) {
          dispatch(static_cast<int>(s), msg);
        }
      }
    }
  }

  // One request to every shard; waits and returns the replies in shard order.
  std::vector<wire::ReplyHead> everyone(const wire::RequestHead& h) {
    std::vector<Part> parts;
    for (int s = 0; s < keys.shards(); ++s) {
      Part part;
      part.shard = s;
      part.op = h.op;
      part.id = send(s, h);
      parts.push_back(std::move(part));
    }
    Pending p = finish(issue(std::move(parts), false));
    std::vector<wire::ReplyHead> out;
    for (auto& part : p.parts) out.push_back(std::move(part.reply));
    return out;
  }

  // Requests of a dense range to the shards holding it; `read`: values come back into `out`.
  Ticket dense(Op op, const Range& r, std::span<const float> values, std::span<float> out,
               const std::string& vector) {
    std::vector<Part> parts;
    for (const auto& piece : keys.split(r)) {
      wire::RequestHead h;
      h.op = op;
      h.clock = clock;
      h.keys = piece.keys;
      h.a = vector;
      const uint64_t off = piece.keys.begin - r.begin;
      Part part;
      part.shard = piece.shard;
      part.op = op;
      if (!out.empty()) {
        part.out = out.data();
        part.values = piece.keys.size();
        part.copies.push_back({0, off, piece.keys.size()});
      }
      part.id = send(piece.shard, h, {},
                     values.empty() ? values : values.subspan(off, piece.keys.size()));
      parts.push_back(std::move(part));
    }
    return issue(std::move(parts), op == Op::kPull);
  }

  void check_table(const Table& table, std::span<const uint64_t> rows) const {
    DT_ENFORCE(table.width >= 1 &&
                   table.rows <= (o.length - std::min(o.length, table.offset)) / table.width,
               "ps client: table at ", table.offset, " of ", table.rows, " rows x ", table.width,
               " does not fit the vector of ", o.length);
    for (size_t j = 0; j < rows.size(); ++j) {
      DT_ENFORCE(rows[j] < table.rows, "ps client: row ", rows[j], " (at ", j,
                 ") is outside the table of ", table.rows, " rows");
    }
  }

  // The distinct rows in increasing order, and for each the positions it was listed at.
  static std::vector<std::pair<uint64_t, std::vector<size_t>>> distinct(
      std::span<const uint64_t> rows) {
    std::vector<size_t> order(rows.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return rows[a] < rows[b]; });
    std::vector<std::pair<uint64_t, std::vector<size_t>>> out;
    for (size_t j : order) {
      if (out.empty() || out.back().first != rows[j]) out.push_back({rows[j], {}});
      out.back().second.push_back(j);
    }
    return out;
  }
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Client::~Client() {
  Impl& m = *impl_;
  if (m.heartbeat.joinable()) {
    {
      std::lock_guard lock(m.hb_mu);
      m.hb_stop = true;
    }
    m.hb_cv.notify_all();
    m.heartbeat.join();
  }
}

const KeyRanges& Client::keys() const {
  return impl_->keys;
}
int Client::worker() const {
  return impl_->o.worker;
}

int64_t Client::hello() {
  Impl& m = *impl_;
  wire::RequestHead h;
  h.op = Op::kHello;
  h.clock = m.clock;
  const auto replies = m.everyone(h);
  int64_t start = 0;
  for (int s = 0; s < m.keys.shards(); ++s) {
    const auto& r = replies[static_cast<size_t>(s)];
    const Range& want = m.keys.shard(s);
    DT_ENFORCE(
        r.shard == s && r.shards == m.keys.shards() && r.length == m.o.length && r.range == want,
        m.shard_name(s), " is shard ", r.shard, " of ", r.shards, " holding [", r.range.begin, ", ",
        r.range.end, ") of ", r.length, "; this client expects shard ", s, " of ", m.keys.shards(),
        " holding [", want.begin, ", ", want.end, ") of ", m.o.length);
    start = std::max(start, r.clock);
  }
  m.clock = start;
  return start;
}

void Client::done() {
  wire::RequestHead h;
  h.op = Op::kDone;
  h.clock = impl_->clock;
  impl_->everyone(h);
}

int64_t Client::clock() const {
  return impl_->clock;
}
void Client::set_clock(int64_t clock) {
  impl_->clock = clock;
}
int64_t Client::pulled_clock() const {
  return impl_->pulled_clock;
}
void Client::set_pulled_clock(int64_t clock) {
  impl_->pulled_clock = clock;
}

Ticket Client::push(const Range& r, std::span<const float> values) {
  Impl& m = *impl_;
  DT_ENFORCE(values.size() == r.size(), "ps client: push of keys [", r.begin, ", ", r.end,
             ") with ", values.size(), " values");
  const auto pieces = m.keys.split(r);
  const int64_t clock = m.clock;
  std::vector<Part> parts;
  size_t next = 0;
  for (int s = 0; s < m.keys.shards(); ++s) {
    wire::RequestHead h;
    h.op = Op::kPush;
    h.clock = clock;
    h.pulled_clock = m.pulled_clock;
    std::span<const float> v;
    if (next < pieces.size() && pieces[next].shard == s) {
      h.keys = pieces[next].keys;
      v = values.subspan(h.keys.begin - r.begin, h.keys.size());
      ++next;
    } else {
      h.keys = {m.keys.shard(s).begin, m.keys.shard(s).begin};  // a clock tick only
    }
    Part part;
    part.shard = s;
    part.op = Op::kPush;
    part.id = m.send(s, h, {}, v);
    parts.push_back(std::move(part));
  }
  m.clock = clock + 1;
  return m.issue(std::move(parts), false);
}

Ticket Client::pull(const Range& r, std::span<float> out) {
  DT_ENFORCE(out.size() == r.size(), "ps client: pull of keys [", r.begin, ", ", r.end, ") into ",
             out.size(), " values");
  return impl_->dense(Op::kPull, r, {}, out, "");
}

Ticket Client::push_rows(const Table& table, std::span<const uint64_t> rows,
                         std::span<const float> values) {
  Impl& m = *impl_;
  m.check_table(table, rows);
  const uint64_t width = table.width;
  DT_ENFORCE(values.size() == rows.size() * width, "ps client: push of ", rows.size(),
             " rows of width ", width, " with ", values.size(), " values");
  std::vector<RowPlan> plans(static_cast<size_t>(m.keys.shards()));
  std::vector<float> sum(width);
  for (const auto& [row, at] : Impl::distinct(rows)) {
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (size_t j : at) {
      for (uint64_t k = 0; k < width; ++k) sum[k] += values[j * width + k];
    }
    const Range keys = table.row(row);
    for (const auto& piece : m.keys.split(keys)) {
      auto& p = plans[static_cast<size_t>(piece.shard)];
      add_segment(p, piece.keys.begin, piece.keys.size());
      const auto* from = sum.data() + (piece.keys.begin - keys.begin);
      p.values.insert(p.values.end(), from, from + piece.keys.size());
    }
  }
  const int64_t clock = m.clock;
  std::vector<Part> parts;
  for (int s = 0; s < m.keys.shards(); ++s) {
    const auto& p = plans[static_cast<size_t>(s)];
    wire::RequestHead h;
    h.op = Op::kPushRows;
    h.clock = clock;
    h.pulled_clock = m.pulled_clock;
    Part part;
    part.shard = s;
    part.op = h.op;
    part.id = m.send(s, h, p.segments, p.values);
    parts.push_back(std::move(part));
  }
  m.clock = clock + 1;
  return m.issue(std::move(parts), false);
}

Ticket Client::pull_rows(const Table& table, std::span<const uint64_t> rows, std::span<float> out) {
  Impl& m = *impl_;
  m.check_table(table, rows);
  const uint64_t width = table.width;
  DT_ENFORCE(out.size() == rows.size() * width, "ps client: pull of ", rows.size(),
             " rows of width ", width, " into ", out.size(), " values");
  std::vector<RowPlan> plans(static_cast<size_t>(m.keys.shards()));
  for (const auto& [row, at] : Impl::distinct(rows)) {
    const Range keys = table.row(row);
    for (const auto& piece : m.keys.split(keys)) {
      auto& p = plans[static_cast<size_t>(piece.shard)];
      const uint64_t src = p.size;
      add_segment(p, piece.keys.begin, piece.keys.size());
      for (size_t j : at) {
        p.copies.push_back({src, j * width + (piece.keys.begin - keys.begin), piece.keys.size()});
      }
    }
  }
  std::vector<Part> parts;
  for (int s = 0; s < m.keys.shards(); ++s) {
    auto& p = plans[static_cast<size_t>(s)];
    if (p.segments.empty()) continue;
    wire::RequestHead h;
    h.op = Op::kPullRows;
    h.clock = m.clock;
    Part part;
    part.shard = s;
    part.op = h.op;
    part.out = out.data();
    part.values = p.size;
    part.copies = std::move(p.copies);
    part.id = m.send(s, h, p.segments);
    parts.push_back(std::move(part));
  }
  return m.issue(std::move(parts), true);
}

// Per shard, the pieces of `ranges` (increasing, disjoint, inside the vector) as segments, each
// with where its values sit in the caller's buffer (the ranges' values one after another).
std::vector<RowPlan> plan_ranges(const KeyRanges& keys, uint64_t length,
                                 std::span<const Range> ranges, size_t values, const char* what) {
  std::vector<RowPlan> plans(static_cast<size_t>(keys.shards()));
  uint64_t at = 0, after = 0;
  for (const auto& r : ranges) {
    DT_ENFORCE(r.begin <= r.end && r.end <= length && r.begin >= after, "ps client: ", what,
               " of keys [", r.begin, ", ", r.end, "): the ranges must be increasing, disjoint ",
               "and inside the vector of ", length);
    after = r.end;
    for (const auto& piece : keys.split(r)) {
      auto& p = plans[static_cast<size_t>(piece.shard)];
      p.copies.push_back({p.size, at + (piece.keys.begin - r.begin), piece.keys.size()});
      add_segment(p, piece.keys.begin, piece.keys.size());
    }
    at += r.size();
  }
  DT_ENFORCE(values == at, "ps client: ", what, " of ", ranges.size(), " ranges of ", at,
             " keys with ", values, " values");
  return plans;
}

Ticket Client::push_ranges(std::span<const Range> ranges, std::span<const float> values) {
  Impl& m = *impl_;
  auto plans = plan_ranges(m.keys, m.o.length, ranges, values.size(), "push");
  const int64_t clock = m.clock;
  std::vector<Part> parts;
  for (int s = 0; s < m.keys.shards(); ++s) {
    auto& p = plans[static_cast<size_t>(s)];
    for (const auto& c : p.copies) {
      p.values.insert(p.values.end(), values.begin() + static_cast<ptrdiff_t>(c.dst),
                      values.begin() + static_cast<ptrdiff_t>(c.dst + c.n));
    }
    wire::RequestHead h;  // a shard none of the ranges touches gets the clock tick alone
    h.op = Op::kPushRows;
    h.clock = clock;
    h.pulled_clock = m.pulled_clock;
    Part part;
    part.shard = s;
    part.op = h.op;
    part.id = m.send(s, h, p.segments, p.values);
    parts.push_back(std::move(part));
  }
  m.clock = clock + 1;
  return m.issue(std::move(parts), false);
}

Ticket Client::pull_ranges(std::span<const Range> ranges, std::span<float> out) {
  Impl& m = *impl_;
  auto plans = plan_ranges(m.keys, m.o.length, ranges, out.size(), "pull");
  std::vector<Part> parts;
  for (int s = 0; s < m.keys.shards(); ++s) {
    auto& p = plans[static_cast<size_t>(s)];
    if (p.segments.empty()) continue;
    wire::RequestHead h;
    h.op = Op::kPullRows;
    h.clock = m.clock;
    Part part;
    part.shard = s;
    part.op = h.op;
    part.out = out.data();
    part.values = p.size;
    part.copies = std::move(p.copies);
    part.id = m.send(s, h, p.segments);
    parts.push_back(std::move(part));
  }
  return m.issue(std::move(parts), true);
}

Ticket Client::assign(const Range& r, std::span<const float> values, const std::string& vector) {
  DT_ENFORCE(values.size() == r.size(), "ps client: assign of keys [", r.begin, ", ", r.end,
             ") with ", values.size(), " values");
  return impl_->dense(Op::kAssign, r, values, {}, vector);
}

Ticket Client::accumulate(const Range& r, std::span<const float> values,
                          const std::string& vector) {
  DT_ENFORCE(values.size() == r.size(), "ps client: accumulate of keys [", r.begin, ", ", r.end,
             ") with ", values.size(), " values");
  return impl_->dense(Op::kAccumulate, r, values, {}, vector);
}

Ticket Client::read(const Range& r, std::span<float> out, const std::string& vector) {
  DT_ENFORCE(out.size() == r.size(), "ps client: read of keys [", r.begin, ", ", r.end, ") into ",
             out.size(), " values");
  return impl_->dense(Op::kRead, r, {}, out, vector);
}

void Client::wait(Ticket t) {
  impl_->finish(t);
}

double Client::dot(const std::string& a, const std::string& b) {
  wire::RequestHead h;
  h.op = Op::kDot;
  h.a = a;
  h.b = b;
  double sum = 0;
  for (const auto& r : impl_->everyone(h)) sum += r.scalar;
  return sum;
}

void Client::axpy(double alpha, const std::string& x, const std::string& y) {
  wire::RequestHead h;
  h.op = Op::kAxpy;
  h.alpha = alpha;
  h.a = x;
  h.b = y;
  impl_->everyone(h);
}

void Client::scale(double alpha, const std::string& x) {
  wire::RequestHead h;
  h.op = Op::kScale;
  h.alpha = alpha;
  h.a = x;
  impl_->everyone(h);
}

void Client::copy(const std::string& from, const std::string& to) {
  wire::RequestHead h;
  h.op = Op::kCopy;
  h.a = from;
  h.b = to;
  impl_->everyone(h);
}

std::vector<ServerStats> Client::stats() {
  wire::RequestHead h;
  h.op = Op::kStats;
  std::vector<ServerStats> out;
  int s = 0;
  for (const auto& r : impl_->everyone(h)) {
    try {
      out.push_back(wire::decode_stats(r.blob));
    } catch (const ProtocolError& e) {
      DT_THROW(ProtocolError, impl_->shard_name(s), ": ", e.what());
    }
    ++s;
  }
  return out;
}

void Client::shutdown() {
  wire::RequestHead h;
  h.op = Op::kShutdown;
  impl_->everyone(h);
}

void Client::heartbeat(std::chrono::milliseconds interval) {
  Impl& m = *impl_;
  if (m.heartbeat.joinable()) return;
  DT_ENFORCE(interval.count() > 0, "ps client: heartbeat interval must be positive");
  m.heartbeat = std::thread([&m, interval] {
    try {
      std::vector<zmq::socket_t> sockets;
      for (const auto& ep : m.o.endpoints) sockets.push_back(dealer(m.ctx, ep, Millis(0), 0));
      wire::RequestHead h;
      h.op = Op::kHeartbeat;
      h.worker = m.o.worker;
      std::unique_lock lock(m.hb_mu);
      while (!m.hb_stop) {
        h.clock = m.clock;
        const auto frame = wire::encode_request(h, {}, {});
        for (auto& s : sockets) {
          zmq::message_t msg(frame.data(), frame.size());
          // A full queue (a shard not reading) drops this beat; the next one will do.
          if (s.send(msg, zmq::send_flags::dontwait)) m.sent += frame.size();
        }
        m.hb_cv.wait_for(lock, interval, [&] { return m.hb_stop; });
      }
    } catch (const std::exception& e) {
      // Never throws out of the thread: without beats the shards presume this worker dead,
      // and its next request names whatever is wrong.
      spdlog::warn("ps client worker {}: heartbeat stopped: {}", m.o.worker, e.what());
    }
  });
}

uint64_t Client::bytes_sent() const {
  return impl_->sent;
}
uint64_t Client::bytes_received() const {
  return impl_->received;
}

}  // namespace dtrain::ps
