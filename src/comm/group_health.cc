// Deadlines, failure detection and diagnosis for a Group.
//
// Works as follows. Every blocking wait registers a Waiter (buffer, deadline, peers) with the
// monitor thread, which aborts the Gloo wait when its deadline passes; Gloo's own timeout is set
// further out because it would close every connection before we could explain anything.
//
// A timed-out rank does not simply blame the peer it was waiting on: in a ring, rank 0 may be
// waiting on rank 3, which waits on the stopped rank 2. It walks the wait-for graph with liveness
// probes on the control slot: a probed rank's control thread answers at once with the ranks its
// own waits are blocked on. The walk ends at a rank that does not answer (stopped, stalled or
// gone), at a rank that answers but waits on nothing (it never entered the operation), or on a
// cycle (ranks disagree on the order of operations). That rank is the culprit the error names.
//
// Whoever fails first (timeout, broken connection, protocol mismatch) poisons its group and sends
// a failure notice with the diagnosis to every peer; their control threads poison their groups and
// abort their waits, so the whole job fails with one consistent message within a probe or two of
// the first failure, instead of each rank waiting out its own deadline.
//
// A rank whose own work fails (a file it cannot write, a reducer's ProtocolError on the engine's
// thread) has nobody to diagnose: it announces itself, "rank r failed: <cause>", as the culprit of
// the same notice (announce_failure; run_rank does it for whatever ends a rank's work), so the
// others fail at once naming it and nothing speaks of a timeout. Errors carry the culprit
// (GroupFailure), so a program can tell "I failed" from "a peer failed".
#include <algorithm>
#include <cstring>
#include <optional>
#include <set>

#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "group_internal.h"

namespace dtrain::comm {

namespace internal {

std::string rank_list(std::span<const int> ranks) {
  std::string out;
  for (int r : ranks) out += (out.empty() ? "" : ", ") + std::to_string(r);
  return out;
}

std::exception_ptr make_error(Group::FailKind kind, const std::string& message, int rank,
                              int culprit, bool remote) {
  switch (kind) {
    case Group::FailKind::kTimeout:
      return std::make_exception_ptr(GroupError<TimeoutError>(message, rank, culprit, remote));
    case Group::FailKind::kProtocol:
      return std::make_exception_ptr(GroupError<ProtocolError>(message, rank, culprit, remote));
    case Group::FailKind::kInvalid:
      return std::make_exception_ptr(GroupError<InvalidArgument>(message, rank, culprit, remote));
    default:
      return std::make_exception_ptr(GroupError<IoError>(message, rank, culprit, remote));
  }
}

}  // namespace internal

using internal::ControlMsg;
using internal::kControlSize;
using internal::rank_list;

namespace {
// How long a probed rank has to answer, and how long a broken connection waits for a peer's
// notice that may explain it (the notice travels just ahead of the connection's close).
Millis probe_window(Millis timeout) {
  return std::clamp(timeout / 4, Millis(200), Millis(2000));
}
constexpr Millis kNoticeGrace{300};
}  // namespace

bool Group::poisoned() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_ != nullptr;
}

void Group::check_usable() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_) std::rethrow_exception(failure_);
}

void Group::fail(FailKind kind, int culprit, const std::string& message) {
  auto error = internal::make_error(kind, message, rank_, culprit, false);
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_) {
      failure_ = error;
      first = true;
      for (Waiter* w : waiters_) {
        w->reason = Waiter::Reason::kFailure;
        w->abort();
      }
    }
  }
  failure_cv_.notify_all();
  if (first) {
    spdlog::error("{}", message);
    notify_peers(kind, culprit, message);
  }
  std::rethrow_exception(error);
}

void Group::notify_peers(FailKind kind, int culprit, const std::string& message) {
  if (!context_) return;
  std::vector<int> sent;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    ControlMsg notice;
    notice.type = ControlMsg::kFailure;
    notice.kind = static_cast<int32_t>(kind);
    notice.culprit = culprit;
    std::strncpy(notice.message, message.c_str(), sizeof(notice.message) - 1);
    std::memcpy(notice_out_[r].data(), &notice, sizeof(notice));
    try {
      notice_bufs_[r]->impl_->send(r, internal::kControlSlot, 0, kControlSize);
      sent.push_back(r);
    } catch (const std::exception&) {
      // That peer's connection is already gone; it needs no notice.
    }
  }
  // Wait for the healthy peers first: a wait on a stalled culprit ends in Gloo's own timeout,
  // which closes every connection of this context.
  std::stable_partition(sent.begin(), sent.end(), [&](int r) { return r != culprit; });
  for (int r : sent) {
    try {
      notice_bufs_[r]->impl_->waitSend(nullptr, Millis(1000));
    } catch (const std::exception&) {
    }
  }
}

void Group::announce_failure(const std::string& cause, FailKind kind) {
  const std::string message = detail::concat("rank ", rank_, " failed: ", cause);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) return;
    failure_ = internal::make_error(kind, message, rank_, rank_, false);
    for (Waiter* w : waiters_) {
      w->reason = Waiter::Reason::kFailure;
      w->abort();
    }
  }
  failure_cv_.notify_all();
  notify_peers(kind, rank_, message);
}

void run_rank(Group& group, const std::function<void()>& work) {
  try {
    work();
  } catch (const ProtocolError& e) {
    group.announce_failure(e.what(), Group::FailKind::kProtocol);
    throw;
  } catch (const TimeoutError& e) {
    group.announce_failure(e.what(), Group::FailKind::kTimeout);
    throw;
  } catch (const InvalidArgument& e) {
    group.announce_failure(e.what(), Group::FailKind::kInvalid);
    throw;
  } catch (const std::exception& e) {
    group.announce_failure(e.what(), Group::FailKind::kIo);
    throw;
  } catch (...) {
    group.announce_failure("an exception that is not a std::exception", Group::FailKind::kIo);
    throw;
  }
}

void Group::on_remote_notice(int from, FailKind kind, int culprit, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) return;
    // A rank that announces its own failure names itself; a diagnosis says who found it.
    std::string text = culprit == from ? message
                                       : detail::concat(message, " (reported by rank ", from,
                                                        " to rank ", rank_, ")");
    failure_ = internal::make_error(kind, text, rank_, culprit, true);
    for (Waiter* w : waiters_) {
      w->reason = Waiter::Reason::kFailure;
      w->abort();
    }
  }
  failure_cv_.notify_all();
}

void Group::answer_probe(int from, uint64_t nonce) {
  ControlMsg pong;
  pong.type = ControlMsg::kPong;
  pong.nonce = nonce;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::set<int> blocked_on;
    for (const Waiter* w : waiters_) blocked_on.insert(w->peers.begin(), w->peers.end());
    for (int r : blocked_on) {
      if (pong.count == static_cast<int32_t>(std::size(pong.waiting_on))) break;
      pong.waiting_on[pong.count++] = r;
    }
  }
  auto bytes = std::make_unique<std::vector<std::byte>>(kControlSize);
  std::memcpy(bytes->data(), &pong, sizeof(pong));
  auto buf = std::unique_ptr<Buffer>(
      new Buffer(*this, context_->createUnboundBuffer(bytes->data(), kControlSize)));
  buf->impl_->send(from, internal::kPongSlot, 0, kControlSize);
  // The prober is waiting for it; nothing waits on the send here. Keep both alive until teardown.
  std::lock_guard<std::mutex> lock(mu_);
  graveyard_bytes_.push_back(std::move(bytes));
  graveyard_.push_back(std::move(buf));
}

void Group::control_loop() {
  std::vector<int> others;
  for (int r = 0; r < size_; ++r) {
    if (r != rank_) others.push_back(r);
  }
  try {
    while (true) {
      control_buf_->impl_->recv(others, internal::kControlSlot, 0, kControlSize);
      int src = -1;
      bool ok = control_buf_->impl_->waitRecv(&src, Millis(24LL * 3600 * 1000));
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      if (!ok) continue;
      // Peer bytes: decoded (kind, culprit and message made safe) before anything acts on them.
      const auto msg = internal::decode_control(control_in_, size_);
      if (!msg) continue;
      if (msg->type == ControlMsg::kPing) {
        answer_probe(src, msg->nonce);
        continue;
      }
      if (msg->type != ControlMsg::kFailure) continue;
      on_remote_notice(src, static_cast<FailKind>(msg->kind), msg->culprit, msg->message);
    }
  } catch (const std::exception&) {
    // The control channel broke (a peer went away); data waits still fail on their own.
  }
}

void Group::monitor_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    auto now = Clock::now();
    std::optional<Clock::time_point> next;
    for (Waiter* w : waiters_) {
      if (w->reason != Waiter::Reason::kNone) continue;
      if (w->deadline <= now) {
        w->reason = Waiter::Reason::kTimeout;
        w->abort();
      } else if (!next || w->deadline < *next) {
        next = w->deadline;
      }
    }
    monitor_wake_ = next.value_or(Clock::time_point::max());
    if (next) {
      monitor_cv_.wait_until(lock, *next);
    } else {
      monitor_cv_.wait(lock);
    }
  }
}

std::optional<std::vector<int>> Group::probe(int peer, Millis window) {
  const uint64_t nonce = (uint64_t(rank_) << 40) | ++probe_counter_;
  ControlMsg ping;
  ping.type = ControlMsg::kPing;
  ping.nonce = nonce;
  auto out = std::make_unique<std::vector<std::byte>>(kControlSize);
  std::memcpy(out->data(), &ping, sizeof(ping));
  auto in = std::make_unique<std::vector<std::byte>>(kControlSize);
  auto ping_buf = std::unique_ptr<Buffer>(
      new Buffer(*this, context_->createUnboundBuffer(out->data(), kControlSize)));
  auto pong_buf = std::unique_ptr<Buffer>(
      new Buffer(*this, context_->createUnboundBuffer(in->data(), kControlSize)));
  std::optional<std::vector<int>> answer;
  try {
    ping_buf->impl_->send(peer, internal::kControlSlot, 0, kControlSize);
    const auto deadline = Clock::now() + window;
    while (!answer) {
      pong_buf->impl_->recv(peer, internal::kPongSlot, 0, kControlSize);
      Waiter waiter{pong_buf->impl_.get(), true, deadline, {}};
      {
        std::lock_guard<std::mutex> lock(mu_);
        waiters_.push_back(&waiter);
        monitor_wake_ = std::min(monitor_wake_, deadline);
      }
      monitor_cv_.notify_all();
      bool ok = false;
      try {
        ok = pong_buf->impl_->waitRecv(nullptr, window + internal::kGlooSlack);
      } catch (const std::exception&) {
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        std::erase(waiters_, &waiter);
      }
      if (!ok || waiter.reason != Waiter::Reason::kNone) break;
      // A pong's count and ranks are checked by the decoder (a count past the array was read
      // past it before).
      const auto pong = internal::decode_control(*in, size_);
      if (pong && pong->type == ControlMsg::kPong && pong->nonce == nonce) {
        answer = std::vector<int>(pong->waiting_on, pong->waiting_on + pong->count);
      }
    }
  } catch (const std::exception&) {
  }
  // A peer that never answered still holds our ping; keep the memory until teardown.
  std::lock_guard<std::mutex> lock(mu_);
  graveyard_bytes_.push_back(std::move(out));
  graveyard_bytes_.push_back(std::move(in));
  graveyard_.push_back(std::move(ping_buf));
  graveyard_.push_back(std::move(pong_buf));
  return answer;
}

std::string Group::diagnose(std::span<const int> peers, int* culprit) {
  const Millis window = probe_window(options_.timeout);
  std::set<int> visited{rank_};
  std::vector<int> frontier(peers.begin(), peers.end());
  std::string trail;
  for (int hop = 0; hop < size_ && !frontier.empty(); ++hop) {
    std::vector<int> next;
    for (int p : frontier) {
      if (!visited.insert(p).second) continue;
      auto waits = probe(p, window);
      if (!waits) {
        *culprit = p;
        return detail::concat(trail, "rank ", p, " does not respond (stopped, stalled or gone)");
      }
      if (waits->empty()) {
        *culprit = p;
        return detail::concat(trail, "rank ", p,
                              " is alive but not waiting in any operation (it has not reached "
                              "this one)");
      }
      trail += detail::concat("rank ", p, " waits on rank(s) ", rank_list(*waits), "; ");
      next.insert(next.end(), waits->begin(), waits->end());
    }
    frontier = std::move(next);
  }
  *culprit = -1;
  return detail::concat(trail,
                        "the ranks wait on each other (operations issued in different "
                        "orders?)");
}

int Group::wait(Buffer& buf, bool is_recv, const WaitInfo& info) {
  Waiter waiter{buf.impl_.get(), is_recv, info.deadline,
                std::vector<int>(info.peers.begin(), info.peers.end())};
  bool wake_monitor = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) std::rethrow_exception(failure_);
    waiters_.push_back(&waiter);
    // Most waits of an operation share its deadline: wake the monitor only for an earlier one.
    wake_monitor = info.deadline < monitor_wake_;
    if (wake_monitor) monitor_wake_ = info.deadline;
  }
  if (wake_monitor) monitor_cv_.notify_all();
  // Stays registered until we return: while it diagnoses a timeout this rank still answers
  // probes with the ranks it is blocked on.
  struct Unregister {
    Group* group;
    Waiter* waiter;
    ~Unregister() {
      std::lock_guard<std::mutex> lock(group->mu_);
      std::erase(group->waiters_, waiter);
    }
  } unregister{this, &waiter};
  int peer = -1;
  bool ok = false;
  std::string io_error;
  try {
    auto remaining = std::chrono::duration_cast<Millis>(info.deadline - Clock::now());
    auto gloo_timeout = std::max(remaining, Millis(0)) + internal::kGlooSlack;
    ok = is_recv ? buf.impl_->waitRecv(&peer, gloo_timeout)
                 : buf.impl_->waitSend(&peer, gloo_timeout);
  } catch (const std::exception& e) {
    io_error = e.what();
  }
  Waiter::Reason reason;
  std::exception_ptr failure;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!io_error.empty() && !failure_) {
      // A peer that failed sends its notice just before its connections close: give it a moment
      // to arrive so the error names the real culprit, not the messenger.
      failure_cv_.wait_for(lock, kNoticeGrace, [&] { return failure_ != nullptr; });
    }
    reason = waiter.reason;
    failure = failure_;
  }
  if (failure) std::rethrow_exception(failure);
  std::string what = detail::concat(info.op, " (tag ", info.tag, ") on rank ", rank_);
  int culprit = info.peers.size() == 1 ? info.peers[0] : -1;
  if (reason == Waiter::Reason::kTimeout) {
    std::string diagnosis = diagnose(info.peers, &culprit);
    fail(FailKind::kTimeout, culprit,
         detail::concat(what, ": timed out after ", options_.timeout.count(), " ms waiting to ",
                        is_recv ? "receive from" : "send to", " rank(s) ", rank_list(info.peers),
                        "; ", diagnosis));
  }
  if (!io_error.empty()) {
    fail(FailKind::kIo, culprit,
         detail::concat(what, ": connection to rank(s) ", rank_list(info.peers),
                        " failed: ", io_error));
  }
  if (!ok) fail(FailKind::kIo, culprit, detail::concat(what, ": wait aborted"));
  return peer;
}

}  // namespace dtrain::comm
