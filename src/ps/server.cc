// One parameter-server shard (see dtrain/ps/server.h).
//
// The shard works as follows. run() polls one ROUTER socket; each tick it drains the requests
// that arrived (a bounded batch), then declares dead the workers not heard from for dead_after,
// then serves every queued pull the consistency model now allows, then checks whether it should
// end. A request is decoded (wire.h), checked against the shard's range and answered at once,
// except a pull that the consistency model holds: it waits in `queued_` with what it needs to be
// served (its identity and decoded request; a pull carries no values, so nothing points into the
// frame it came in). Clocks: a worker's clock on the shard is its pushes so far (a push carries
// its clock before the push); the slowest live worker, the puller counted at its own clock,
// decides whether a pull may be served, and is the "parameter clock" the reply reports.
//
// All state sits behind `mu_`, which run() holds while it works on a batch: stats() and values()
// from other threads take it briefly; stop() only sets an atomic that the loop checks every tick
// (the poll timeout is min(50 ms, dead_after/4), so liveness is also checked that often).
#include "dtrain/ps/server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <mutex>
#include <zmq.hpp>

#include "checkpoint.h"
#include "dtrain/common/error.h"
#include "wire.h"

namespace dtrain::ps {
namespace {

using SteadyClock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;
using wire::Op;
using wire::Status;

constexpr size_t kMaxVectors = 1024;  // named vectors a shard creates on request
constexpr int kBatch = 256;           // requests handled between two liveness checks
// The server socket keeps unsent replies (a shutdown's acknowledgement) this long at close.
constexpr int kLingerMs = 1000;

enum class State { kLive, kDone, kDead };

const char* state_name(State s) {
  switch (s) {
    case State::kLive:
      return "live";
    case State::kDone:
      return "done";
    case State::kDead:
      return "dead";
  }
  return "?";
}

struct Worker {
  int64_t clock = 0;
  int64_t pushed = 0;  // clock ticks pushed: one per clock, however many requests carry it
  State state = State::kLive;
  SteadyClock::time_point heard;
  bool seen = false;  // spoke to this run of the shard (not only restored from a checkpoint)
};

struct Queued {
  zmq::message_t identity;
  wire::Request request;
};

}  // namespace

struct Server::Impl {
  ServerOptions o;
  KeyRanges keys;
  Range range;
  zmq::context_t ctx{1};
  zmq::socket_t router;
  std::string endpoint;
  std::atomic<bool> stop{false};
  Millis tick;

  mutable std::mutex mu;
  internal::ShardState st;  // vectors ("w" and named), rule state, update count
  std::map<int, Worker> workers;
  uint64_t pulls = 0, bytes_received = 0, bytes_sent = 0;
  std::vector<uint64_t> histogram = std::vector<uint64_t>(kStalenessBuckets, 0);
  int64_t max_staleness = 0;
  std::deque<Queued> queued;
  SteadyClock::time_point last_activity;
  bool shutdown = false;
  bool checkpointed_at_shutdown = false;

  explicit Impl(ServerOptions opts)
      : o(std::move(opts)), keys(o.length, o.shards), router(ctx, zmq::socket_type::router) {
    DT_ENFORCE(o.index >= 0 && o.index < o.shards, "parameter server: shard index ", o.index,
               " of ", o.shards, " shards");
    DT_ENFORCE(o.dead_after.count() > 0, "parameter server: dead_after must be positive");
    range = keys.shard(o.index);
    tick = std::max(Millis(1), std::min(Millis(50), o.dead_after / 4));
  }

  std::string prefix() const { return "ps shard " + std::to_string(o.index); }

  std::vector<float>& vector(const std::string& name) {
    auto it = st.vectors.find(name);
    if (it != st.vectors.end()) return it->second;
    DT_ENFORCE(st.vectors.size() < kMaxVectors, prefix(), ": too many named vectors (", kMaxVectors,
               "); not creating '", name, "'");
    return st.vectors.emplace(name, std::vector<float>(range.size(), 0.0f)).first->second;
  }

  // --- clocks and liveness -------------------------------------------------------------------

  // The slowest live worker's clock, the puller (if a worker) counted at `clock` or at the
  // clock of its own pushes applied here, if that is behind (its push may still be on the way
  // on another socket: parameters without it are not at `clock`).
  int64_t slowest(int puller, int64_t clock) const {
    int64_t low = clock;
    if (puller >= 0) {
      auto me = workers.find(puller);
      if (me != workers.end()) low = std::min(low, me->second.clock);
    }
    bool any = puller >= 0;
    for (const auto& [id, w] : workers) {
      if (id == puller || w.state != State::kLive) continue;
      low = any ? std::min(low, w.clock) : w.clock;
      any = true;
    }
    return low;
  }

  // A request from `worker` arrived: it is alive (a done worker stays done until its hello).
  void hear(int worker, Op op, SteadyClock::time_point now) {
    if (worker < 0) {  // an observer: never counted as a worker
      last_activity = now;
      return;
    }
    auto [it, fresh] = workers.try_emplace(worker);
    Worker& w = it->second;
    if (fresh) w.state = State::kLive;
    if (w.state == State::kDead && op != Op::kHello) {
      // Back without a hello (e.g. SIGCONT after a stop): at the slowest live clock, so that it
      // does not hold back the workers that went on without it.
      const int64_t was = w.clock;
      w.clock = std::max(w.clock, slowest(/*puller=*/-1, w.clock));  // the others' slowest
      spdlog::info("{}: worker {} is back (clock {}, was {})", prefix(), worker, w.clock, was);
      w.state = State::kLive;
    }
    w.heard = now;
    w.seen = true;
    if (!(op == Op::kHeartbeat && w.state == State::kDone)) last_activity = now;
  }

  void check_liveness(SteadyClock::time_point now) {
    for (auto& [id, w] : workers) {
      if (w.state != State::kLive || now - w.heard <= o.dead_after) continue;
      const auto ms = std::chrono::duration_cast<Millis>(now - w.heard).count();
      spdlog::warn("{}: worker {} presumed dead: nothing heard for {} ms", prefix(), id, ms);
      w.state = State::kDead;
    }
  }

  bool job_over(SteadyClock::time_point now) const {
    if (o.expected_workers <= 0) return false;
    for (int id = 0; id < o.expected_workers; ++id) {
      auto it = workers.find(id);
      if (it == workers.end() || !it->second.seen) return false;
    }
    for (const auto& [id, w] : workers) {
      if (w.state == State::kLive) return false;
    }
    return now - last_activity >= o.dead_after;
  }

  // --- replies ---------------------------------------------------------------------------------

  void send(zmq::message_t& identity, zmq::message_t&& frame) {
    bytes_sent += frame.size();
    zmq::message_t to;
    to.copy(identity);
    // ROUTER drops what it cannot deliver (a gone peer, a full queue): never blocks the shard.
    if (!router.send(to, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return;
    (void)router.send(frame, zmq::send_flags::dontwait);
  }

  wire::ReplyHead head_for(const wire::RequestHead& q) const {
    wire::ReplyHead h;
    h.op = q.op;
    h.id = q.id;
    h.shard = o.index;
    h.shards = o.shards;
    return h;
  }

  void reply(zmq::message_t& identity, const wire::ReplyHead& h,
             std::span<const float> values = {}) {
    zmq::message_t frame(wire::reply_size(h, values.size()));
    wire::encode_reply({static_cast<std::byte*>(frame.data()), frame.size()}, h, values);
    send(identity, std::move(frame));
  }

  void reply_error(zmq::message_t& identity, Op op, uint64_t id, Status status,
                   const std::string& message) {
    wire::ReplyHead h;
    h.op = op;
    h.id = id;
    h.status = status;
    h.shard = o.index;
    h.shards = o.shards;
    h.message = message;
    reply(identity, h);
  }

  // --- requests --------------------------------------------------------------------------------

  void check_keys(const wire::RequestHead& q, const Range& k) const {
    DT_ENFORCE(k.begin >= range.begin && k.end <= range.end, prefix(), ": ", op_name(q.op),
               " of keys [", k.begin, ", ", k.end, ") outside the shard's range [", range.begin,
               ", ", range.end, ")");
  }

  // Every segment inside the range, and no more keys in all than the range holds (a client
  // sends each row once; repeats beyond that would make a reply of unbounded size).
  void check_segments(const wire::Request& q) const {
    uint64_t total = 0;
    for (const auto& s : q.segments) {
      DT_ENFORCE(s.size <= range.size() && s.begin <= range.end - s.size, prefix(), ": ",
                 op_name(q.head.op), " of keys [", s.begin, ", +", s.size,
                 ") outside the shard's range [", range.begin, ", ", range.end, ")");
      check_keys(q.head, {s.begin, s.begin + s.size});
      total += s.size;
      DT_ENFORCE(total <= range.size(), prefix(), ": ", op_name(q.head.op), " of ", total,
                 "+ keys in ", q.segments.size(), " segments, more than the shard's ",
                 range.size(), " keys (repeated rows?)");
    }
  }

  void record_update(const wire::RequestHead& q) {
    const int64_t staleness = std::max<int64_t>(0, q.clock - q.pulled_clock);
    ++histogram[static_cast<size_t>(std::min<int64_t>(staleness, kStalenessBuckets - 1))];
    max_staleness = std::max(max_staleness, staleness);
  }

  void push(const wire::Request& q) {
    const auto& h = q.head;
    auto& w = vector("w");
    if (h.op == Op::kPush) {
      check_keys(h, h.keys);
    } else {
      check_segments(q);
    }
    for (size_t i = 0; i < q.values.size(); ++i) {
      // One diverged worker must not poison the parameters (and Adagrad's sums) of every other.
      DT_ENFORCE(std::isfinite(q.values[i]), prefix(), ": push from worker ", h.worker,
                 " holds a non-finite value (", q.values[i], ", value ", i, " of ",
                 q.values.size(), "); not applied");
    }
    if (!q.values.empty()) {
      const uint64_t count = ++st.updates;
      const UpdateRule& rule = o.rule;
      if (h.op == Op::kPush) {
        const size_t at = h.keys.begin - range.begin;
        const size_t n = q.values.size();
        if (rule.state_per_key() == 0) {
          rule.apply(std::span<float>(w).subspan(at, n), q.values, {}, count);
        } else if (rule.state_per_key() == 1 || n == w.size()) {
          rule.apply(std::span<float>(w).subspan(at, n), q.values,
                     std::span<float>(st.rule_state).subspan(at, n * rule.state_per_key()), count);
        } else {
          // Adam's two planes lie a shard apart: a part of the range goes key by key.
          std::vector<uint64_t> idx(n);
          for (size_t i = 0; i < n; ++i) idx[i] = h.keys.begin + i;
          rule.apply_sparse(w, idx, range.begin, q.values, st.rule_state, count);
        }
      } else {
        std::vector<uint64_t> idx;
        idx.reserve(q.values.size());
        for (const auto& s : q.segments) {
          for (uint64_t k = 0; k < s.size; ++k) idx.push_back(s.begin + k);
        }
        rule.apply_sparse(w, idx, range.begin, q.values, st.rule_state, count);
      }
      record_update(h);
    }
    if (h.worker >= 0) {
      Worker& pusher = workers[h.worker];
      if (h.clock >= pusher.clock) ++pusher.pushed;  // the first request of this clock
      pusher.clock = h.clock + 1;
    }
    if (!q.values.empty() && o.checkpoint_every > 0 && !o.checkpoint_path.empty() &&
        st.updates % o.checkpoint_every == 0) {
      // The push is applied whatever happens here: a failed periodic checkpoint is reported,
      // not answered to the pusher as a failed push (the next one, or the last, may succeed).
      try {
        checkpoint();
      } catch (const Error& e) {
        spdlog::error("{}: periodic checkpoint failed: {}", prefix(), e.what());
      }
    }
  }

  bool may_serve(const wire::RequestHead& q) const {
    return q.worker < 0 || o.consistency.may_serve(q.clock, slowest(q.worker, q.clock));
  }

  void serve_pull(zmq::message_t& identity, const wire::Request& q) {
    const auto& h = q.head;
    wire::ReplyHead r = head_for(h);
    r.clock = slowest(h.worker, h.clock);
    const auto& src = h.op == Op::kRead ? vector(h.a) : vector("w");
    uint64_t n = 0;
    if (h.op == Op::kPullRows) {
      for (const auto& s : q.segments) n += s.size;
    } else {
      n = h.keys.size();
    }
    const auto head = wire::encode_reply_head(r, n);
    zmq::message_t frame(head.size() + n * sizeof(float));
    auto* out = static_cast<std::byte*>(frame.data());
    std::memcpy(out, head.data(), head.size());
    out += head.size();
    auto copy = [&](uint64_t begin, uint64_t size) {
      if (size == 0) return;
      std::memcpy(out, src.data() + (begin - range.begin), size * sizeof(float));
      out += size * sizeof(float);
    };
    if (h.op == Op::kPullRows) {
      for (const auto& s : q.segments) copy(s.begin, s.size);
    } else {
      copy(h.keys.begin, h.keys.size());
    }
    if (h.op != Op::kRead) ++pulls;
    send(identity, std::move(frame));
  }

  void serve_queued() {
    for (auto it = queued.begin(); it != queued.end();) {
      if (may_serve(it->request.head)) {
        serve_pull(it->identity, it->request);
        it = queued.erase(it);
      } else {
        ++it;
      }
    }
  }

  void hello(zmq::message_t& identity, const wire::RequestHead& q) {
    wire::ReplyHead r = head_for(q);
    r.range = range;
    r.length = o.length;
    int64_t start = 0;
    bool others = false;
    for (const auto& [id, w] : workers) {
      if (id == q.worker || w.state != State::kLive) continue;
      start = others ? std::min(start, w.clock) : w.clock;
      others = true;
    }
    if (q.worker >= 0) {
      Worker& me = workers[q.worker];
      if (!others) start = me.clock;  // alone: its own last clock (0 for a fresh job)
      if (me.state != State::kLive) {
        spdlog::info("{}: worker {} says hello (clock {})", prefix(), q.worker, start);
      }
      me.clock = start;
      me.state = State::kLive;
    }
    r.clock = start;
    reply(identity, r);
  }

  void vector_op(zmq::message_t& identity, const wire::Request& q) {
    const auto& h = q.head;
    wire::ReplyHead r = head_for(h);
    switch (h.op) {
      case Op::kAssign:
      case Op::kAccumulate: {
        check_keys(h, h.keys);
        auto& v = vector(h.a);
        float* at = v.data() + (h.keys.begin - range.begin);
        if (h.op == Op::kAssign) {
          std::copy(q.values.begin(), q.values.end(), at);
        } else {
          for (size_t i = 0; i < q.values.size(); ++i) at[i] += q.values[i];
        }
        break;
      }
      case Op::kDot: {
        const auto& a = vector(h.a);
        const auto& b = vector(h.b);
        double sum = 0;
        for (size_t i = 0; i < a.size(); ++i) sum += double(a[i]) * double(b[i]);
        r.scalar = sum;
        break;
      }
      case Op::kAxpy: {
        const auto& x = vector(h.a);
        auto& y = vector(h.b);
        for (size_t i = 0; i < y.size(); ++i) y[i] = float(double(y[i]) + h.alpha * x[i]);
        break;
      }
      case Op::kScale:
        for (auto& v : vector(h.a)) v = float(h.alpha * v);
        break;
      case Op::kCopy: {
        const auto from = vector(h.a);  // a copy: `to` may be created (and rehash) below
        vector(h.b) = from;
        break;
      }
      default:
        break;
    }
    reply(identity, r);
  }

  ServerStats snapshot() const {
    ServerStats s;
    s.updates = st.updates;
    s.pulls = pulls;
    s.bytes_received = bytes_received;
    s.bytes_sent = bytes_sent;
    s.staleness_histogram = histogram;
    s.max_staleness = max_staleness;
    for (const auto& [id, w] : workers) {
      s.clocks[id] = w.clock;
      s.states[id] = state_name(w.state);
      s.pushed[id] = w.pushed;
    }
    return s;
  }

  void checkpoint() {
    if (o.checkpoint_path.empty()) return;
    for (const auto& [id, w] : workers) {
      st.clocks[id] = w.clock;
      st.pushed[id] = w.pushed;
    }
    internal::write_checkpoint(o, range, st);
  }

  void handle(zmq::message_t& identity, const zmq::message_t& frame, size_t extra_parts,
              SteadyClock::time_point now) {
    const std::span<const std::byte> bytes(static_cast<const std::byte*>(frame.data()),
                                           frame.size());
    wire::Request q;
    try {
      DT_ENFORCE_AS(ProtocolError, extra_parts == 0, "ps request: ", extra_parts + 1,
                    " message parts, expected 1");
      q = wire::decode_request(bytes);
    } catch (const ProtocolError& e) {
      spdlog::warn("{}: malformed request: {}", prefix(), e.what());
      const uint8_t op = bytes.size() > 5 ? static_cast<uint8_t>(bytes[5]) : 0;
      const Op reply_op = op >= 1 && op <= wire::kMaxOp ? static_cast<Op>(op) : Op::kHeartbeat;
      reply_error(identity, reply_op, wire::peek_id(bytes), Status::kProtocolError, e.what());
      return;
    }
    const auto& h = q.head;
    hear(h.worker, h.op, now);
    try {
      switch (h.op) {
        case Op::kHeartbeat:
          return;  // one-way
        case Op::kHello:
          hello(identity, h);
          return;
        case Op::kDone:
          if (h.worker >= 0) workers[h.worker].state = State::kDone;
          reply(identity, head_for(h));
          return;
        case Op::kPush:
        case Op::kPushRows:
          push(q);
          reply(identity, head_for(h));
          return;
        case Op::kPull:
        case Op::kPullRows:
          if (h.op == Op::kPull) {
            check_keys(h, h.keys);
          } else {
            check_segments(q);
          }
          if (may_serve(h)) {
            serve_pull(identity, q);
          } else {
            Queued w;
            w.identity.copy(identity);
            w.request = std::move(q);
            queued.push_back(std::move(w));
          }
          return;
        case Op::kRead:
          check_keys(h, h.keys);
          serve_pull(identity, q);
          return;
        case Op::kAssign:
        case Op::kAccumulate:
        case Op::kDot:
        case Op::kAxpy:
        case Op::kScale:
        case Op::kCopy:
          vector_op(identity, q);
          return;
        case Op::kStats: {
          wire::ReplyHead r = head_for(h);
          r.blob = wire::encode_stats(snapshot());
          reply(identity, r);
          return;
        }
        case Op::kShutdown:
          spdlog::info("{}: shutdown requested by worker {}", prefix(), h.worker);
          shutdown = true;
          checkpoint();
          checkpointed_at_shutdown = true;
          reply(identity, head_for(h));
          return;
      }
    } catch (const InvalidArgument& e) {
      reply_error(identity, h.op, h.id, Status::kInvalidArgument, e.what());
    } catch (const ProtocolError& e) {
      reply_error(identity, h.op, h.id, Status::kProtocolError, e.what());
    } catch (const std::exception& e) {
      reply_error(identity, h.op, h.id, Status::kError, e.what());
      if (h.op == Op::kShutdown) throw;
    }
  }

  // Receives one request (identity, then its parts); false when none is waiting.
  bool receive_one(SteadyClock::time_point now) {
    zmq::message_t identity;
    if (!router.recv(identity, zmq::recv_flags::dontwait)) return false;
    if (!identity.more()) return true;  // cannot happen on a ROUTER; nothing to answer
    zmq::message_t frame;
    (void)router.recv(frame, zmq::recv_flags::none);  // the parts of a message arrive together
    bytes_received += frame.size();
    size_t extra = 0;
    bool more = frame.more();
    while (more) {
      zmq::message_t part;
      (void)router.recv(part, zmq::recv_flags::none);
      bytes_received += part.size();
      more = part.more();
      ++extra;
    }
    handle(identity, frame, extra, now);
    return true;
  }
};

Server::Server(ServerOptions options, bool resume)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl& m = *impl_;
  if (resume) {
    m.st = internal::read_checkpoint(m.o, m.range);
    const auto now = SteadyClock::now();
    for (const auto& [id, clock] : m.st.clocks) {
      Worker& w = m.workers[id];
      w.clock = clock;
      w.pushed = m.st.pushed.count(id) ? m.st.pushed.at(id) : 0;
      w.state = State::kDead;  // not heard from since the restart
      w.heard = now;
    }
  } else {
    m.st.vectors["w"].assign(m.range.size(), 0.0f);
    m.st.rule_state.assign(m.range.size() * static_cast<size_t>(m.o.rule.state_per_key()),
                           static_cast<float>(m.o.rule.kind == UpdateRule::Kind::kAdagrad
                                                  ? m.o.rule.initial_accumulator
                                                  : 0.0));
  }
  const std::string address =
      "tcp://" + m.o.host + ":" + (m.o.port == 0 ? std::string("*") : std::to_string(m.o.port));
  try {
    m.router.set(zmq::sockopt::linger, kLingerMs);
    // Bounds what a peer can make the shard allocate: the largest valid request for this range
    // (row segments and values for every key) plus room for the head.
    m.router.set(zmq::sockopt::maxmsgsize,
                 static_cast<int64_t>((1 << 20) + m.range.size() * (sizeof(float) + 20)));
    m.router.bind(address);
    m.endpoint = m.router.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    DT_THROW(IoError, "parameter server shard ", m.o.index, ": cannot bind ", address, ": ",
             e.what());
  }
}

Server::~Server() = default;

std::string Server::endpoint() const {
  return impl_->endpoint;
}
const Range& Server::range() const {
  return impl_->range;
}

void Server::run() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.last_activity = SteadyClock::now();
  }
  std::exception_ptr failure;
  while (!m.stop.load()) {
    zmq::pollitem_t item{m.router.handle(), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, m.tick);
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) DT_THROW(IoError, m.prefix(), ": poll failed: ", e.what());
    }
    std::lock_guard lock(m.mu);
    const auto now = SteadyClock::now();
    try {
      for (int n = 0; n < kBatch && !m.shutdown && m.receive_one(now); ++n) {
      }
    } catch (...) {
      failure = std::current_exception();  // the shutdown checkpoint failed
      break;
    }
    m.check_liveness(now);
    m.serve_queued();
    if (m.shutdown) break;
    if (m.job_over(now)) {
      spdlog::info("{}: every worker is done or dead; ending", m.prefix());
      break;
    }
  }
  std::lock_guard lock(m.mu);
  m.queued.clear();
  if (!failure && !m.checkpointed_at_shutdown) m.checkpoint();
  m.router.close();  // requests from now on go unanswered: clients time out naming the shard
  if (failure) std::rethrow_exception(failure);
}

void Server::stop() {
  impl_->stop.store(true);
}

ServerStats Server::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->snapshot();
}

std::vector<float> Server::values() const {
  std::lock_guard lock(impl_->mu);
  return impl_->st.vectors.at("w");
}

}  // namespace dtrain::ps
