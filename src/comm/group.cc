#include "dtrain/comm/group.h"

#include <gloo/rendezvous/context.h>
#include <gloo/transport/ibverbs/device.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"

namespace dtrain::comm {
namespace {

constexpr uint64_t kControlSlot = ~uint64_t{0};
constexpr size_t kNoticeSize = 512;
constexpr uint32_t kFrameMagic = 0x4454524e;  // "DTRN"
// Gloo's own wait timeout sits well past ours: our monitor aborts first, so Gloo never tears the
// context down on a timeout before we have told the peers why.
constexpr Millis kGlooSlack{30000};
// Largest frame we accept: a bigger length is taken as a corrupt header, not an allocation.
constexpr uint64_t kMaxFrameBytes = uint64_t{1} << 40;

struct FrameHeader {
  uint32_t magic;
  uint32_t flags;
  uint64_t length;
};
static_assert(sizeof(FrameHeader) == 16);

struct Notice {
  int32_t kind;
  int32_t culprit;
  char message[kNoticeSize - 8];
};
static_assert(sizeof(Notice) == kNoticeSize);

std::string rank_list(std::span<const int> ranks) {
  std::string out;
  for (int r : ranks) out += (out.empty() ? "" : ", ") + std::to_string(r);
  return out;
}

std::exception_ptr make_error(Group::FailKind kind, const std::string& message) {
  switch (kind) {
    case Group::FailKind::kTimeout:
      return std::make_exception_ptr(TimeoutError(message));
    case Group::FailKind::kProtocol:
      return std::make_exception_ptr(ProtocolError(message));
    default:
      return std::make_exception_ptr(IoError(message));
  }
}

// Records the keys a rank writes during rendezvous so it can remove them once everyone has read.
class RecordingStore : public Store {
 public:
  explicit RecordingStore(Store& base) : base_(base) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    base_.set(key, data);
    keys.push_back(key);
  }
  std::vector<char> get(const std::string& key) override { return base_.get(key); }
  bool check(const std::vector<std::string>& k) override { return base_.check(k); }
  void remove(const std::vector<std::string>& k) override { base_.remove(k); }
  void wait(const std::vector<std::string>& k, const std::chrono::milliseconds& t) override {
    base_.wait(k, t);
  }
  std::vector<std::string> keys;

 private:
  Store& base_;
};

}  // namespace

struct Group::Waiter {
  gloo::transport::UnboundBuffer* buf;
  bool is_recv;
  Clock::time_point deadline;
  enum class Reason { kNone, kTimeout, kFailure } reason = Reason::kNone;

  void abort() const {
    if (is_recv) {
      buf->abortWaitRecv();
    } else {
      buf->abortWaitSend();
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Buffer

Buffer::Buffer(Group& group, std::unique_ptr<gloo::transport::UnboundBuffer> impl)
    : group_(group), impl_(std::move(impl)) {}
Buffer::~Buffer() = default;
void* Buffer::data() const { return impl_->ptr; }
size_t Buffer::size() const { return impl_->size; }

void Buffer::send(int dst, uint64_t slot, size_t offset, size_t nbytes) {
  try {
    impl_->send(dst, slot, offset, nbytes);
  } catch (const std::exception& e) {
    group_.fail(Group::FailKind::kIo, dst,
                detail::concat("send to rank ", dst, " failed on rank ", group_.rank(), ": ",
                               e.what()));
  }
}

void Buffer::recv(int src, uint64_t slot, size_t offset, size_t nbytes) {
  try {
    impl_->recv(src, slot, offset, nbytes);
  } catch (const std::exception& e) {
    group_.fail(Group::FailKind::kIo, src,
                detail::concat("receive from rank ", src, " failed on rank ", group_.rank(), ": ",
                               e.what()));
  }
}

void Buffer::recv_any(const std::vector<int>& srcs, uint64_t slot, size_t offset, size_t nbytes) {
  try {
    impl_->recv(srcs, slot, offset, nbytes);
  } catch (const std::exception& e) {
    group_.fail(Group::FailKind::kIo, -1,
                detail::concat("receive from any of ranks ", rank_list(srcs), " failed on rank ",
                               group_.rank(), ": ", e.what()));
  }
}

int Buffer::wait_send(const WaitInfo& info) { return group_.wait(*this, false, info); }
int Buffer::wait_recv(const WaitInfo& info) { return group_.wait(*this, true, info); }

// ---------------------------------------------------------------------------------------------
// Group: connect, teardown

Group::Group(GroupOptions options) : options_(std::move(options)) {}

std::shared_ptr<Group> Group::connect(const GroupOptions& options) {
  auto env = detect_launch_env();
  int rank = options.rank.value_or(env ? env->rank : 0);
  int size = options.size.value_or(env ? env->size : 1);
  std::string source = options.rank ? "--rank" : (env ? env->source : "default");
  DT_ENFORCE(size >= 1, "world size must be >= 1, got ", size, " (from ", source, ")");
  DT_ENFORCE(rank >= 0 && rank < size, "rank ", rank, " is outside 0..", size - 1, " (from ",
             source, ")");
  DT_ENFORCE(options.timeout.count() > 0, "--timeout must be positive, got ",
             options.timeout.count(), " ms");
  DT_ENFORCE(options.transport == "tcp" || options.transport == "ibverbs", "--transport '",
             options.transport, "' is not one of tcp, ibverbs");
  if (size > 1) {
    DT_ENFORCE(!options.rendezvous.empty(), "--rendezvous is required with world size ", size,
               " (file:///shared/dir or redis://host:port)");
  }
  std::shared_ptr<Group> group(new Group(options));
  group->rank_ = rank;
  group->size_ = size;
  if (group->options_.run_id.empty()) group->options_.run_id = detect_run_id();
  group->rendezvous();
  return group;
}

Group::~Group() { teardown(); }

void Group::rendezvous() {
  if (size_ == 1) return;
  auto url = RendezvousUrl::parse(options_.rendezvous);
  if (!store_) store_ = open_store(url);
  std::string prefix = detail::concat(options_.run_id, "/g", generation_);
  PrefixedStore prefixed(prefix, *store_);
  RecordingStore store(prefixed);
  std::string where = detail::concat("rendezvous at ", url.str(), " (run '", options_.run_id,
                                     "', generation ", generation_, ")");

  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  std::string me = detail::concat(host, " pid ", ::getpid());
  store.set(detail::concat("join/", rank_), std::vector<char>(me.begin(), me.end()));

  // Wait for every rank to announce itself, so a rank that never comes is named.
  auto deadline = Clock::now() + options_.timeout;
  std::vector<int> missing;
  for (int r = 0; r < size_; ++r) missing.push_back(r);
  auto pause = Millis(1);
  while (true) {
    std::erase_if(missing, [&](int r) { return store.check({detail::concat("join/", r)}); });
    if (missing.empty()) break;
    if (Clock::now() >= deadline) {
      throw TimeoutError(detail::concat(where, ": rank(s) ", rank_list(missing),
                                        " did not join within ", options_.timeout.count(),
                                        " ms (world size ", size_, ")"));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, Millis(50));
  }

  try {
    if (!device_) {
      if (options_.transport == "ibverbs") {
        gloo::transport::ibverbs::attr attr;
        attr.name = options_.ib_device;
        attr.port = 1;
        attr.index = 0;
        device_ = gloo::transport::ibverbs::CreateDevice(attr);
      } else {
        gloo::transport::tcp::attr attr;
        if (!options_.host.empty()) {
          attr.hostname = options_.host;
        } else if (!options_.iface.empty()) {
          attr.iface = options_.iface;
        } else {
          attr.hostname = host;
        }
        device_ = gloo::transport::tcp::CreateDevice(attr);
      }
    }
  } catch (const std::exception& e) {
    throw IoError(detail::concat("cannot create the ", options_.transport, " device (host '",
                                 options_.host, "', iface '", options_.iface, "'): ", e.what()));
  }

  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank_, size_);
  ctx->setTimeout(options_.timeout + kGlooSlack);
  try {
    ctx->connectFullMesh(store, device_);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw IoError(detail::concat(where, ": connecting rank ", rank_, " to its peers failed: ",
                                 e.what()));
  }
  context_ = ctx;

  control_in_.assign(kNoticeSize, std::byte{0});
  control_buf_ = buffer(control_in_.data(), control_in_.size());
  notice_out_.assign(size_, std::vector<std::byte>(kNoticeSize));
  notice_bufs_.clear();
  for (int r = 0; r < size_; ++r) {
    notice_bufs_.push_back(buffer(notice_out_[r].data(), kNoticeSize));
  }
  stopping_ = false;
  monitor_ = std::thread([this] { monitor_loop(); });
  control_ = std::thread([this] { control_loop(); });

  // Everyone has read every address once all have connected; then each rank removes its keys,
  // so a re-used directory or Redis database holds nothing stale. Tag 0 is reserved for this.
  if (rank_ == 0) {
    for (int r = 1; r < size_; ++r) recv(r, 0);
    for (int r = 1; r < size_; ++r) send(r, 0, {});
  } else {
    send(0, 0, {});
    recv(0, 0);
  }
  store.remove(store.keys);
  spdlog::debug("{}: connected {} ranks over {}", where, size_, options_.transport);
}

void Group::teardown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  if (control_.joinable()) {
    control_buf_->impl_->abortWaitRecv();
    control_.join();
  }
  if (context_) context_->closeConnections();
  control_buf_.reset();
  notice_bufs_.clear();
  context_.reset();
}

void Group::reconnect() { reconnect(rank_, size_); }

void Group::reconnect(int new_rank, int new_size) {
  DT_ENFORCE(new_size >= 1, "reconnect: world size must be >= 1, got ", new_size);
  DT_ENFORCE(new_rank >= 0 && new_rank < new_size, "reconnect: rank ", new_rank,
             " is outside 0..", new_size - 1);
  teardown();
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = nullptr;
    waiters_.clear();
  }
  ++generation_;
  rank_ = new_rank;
  size_ = new_size;
  next_tag_ = 1;
  rendezvous();
}

std::unique_ptr<Buffer> Group::buffer(void* ptr, size_t nbytes) {
  check_usable();
  DT_ENFORCE(context_ != nullptr, "a group of size 1 has no peers to transfer with");
  return std::unique_ptr<Buffer>(new Buffer(*this, context_->createUnboundBuffer(ptr, nbytes)));
}

// ---------------------------------------------------------------------------------------------
// Failure handling

bool Group::poisoned() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_ != nullptr;
}

void Group::check_usable() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_) std::rethrow_exception(failure_);
}

void Group::fail(FailKind kind, int culprit, const std::string& message) {
  auto error = make_error(kind, message);
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
    Notice notice{};
    notice.kind = static_cast<int32_t>(kind);
    notice.culprit = culprit;
    std::strncpy(notice.message, message.c_str(), sizeof(notice.message) - 1);
    std::memcpy(notice_out_[r].data(), &notice, sizeof(notice));
    try {
      notice_bufs_[r]->impl_->send(r, kControlSlot, 0, kNoticeSize);
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

void Group::on_remote_notice(int from, FailKind kind, int culprit, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_) return;
  std::string text = detail::concat(message, " (reported by rank ", from, " to rank ", rank_,
                                    culprit >= 0 ? "" : "", ")");
  failure_ = make_error(kind, text);
  for (Waiter* w : waiters_) {
    w->reason = Waiter::Reason::kFailure;
    w->abort();
  }
}

void Group::control_loop() {
  std::vector<int> others;
  for (int r = 0; r < size_; ++r) {
    if (r != rank_) others.push_back(r);
  }
  try {
    while (true) {
      control_buf_->impl_->recv(others, kControlSlot, 0, kNoticeSize);
      int src = -1;
      bool ok = control_buf_->impl_->waitRecv(&src, Millis(24LL * 3600 * 1000));
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      if (!ok) continue;
      Notice notice{};
      std::memcpy(&notice, control_in_.data(), sizeof(notice));
      notice.message[sizeof(notice.message) - 1] = '\0';
      auto kind = static_cast<FailKind>(notice.kind);
      if (kind != FailKind::kIo && kind != FailKind::kTimeout && kind != FailKind::kProtocol) {
        kind = FailKind::kProtocol;
      }
      on_remote_notice(src, kind, notice.culprit, notice.message);
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
    if (next) {
      monitor_cv_.wait_until(lock, *next);
    } else {
      monitor_cv_.wait(lock);
    }
  }
}

int Group::wait(Buffer& buf, bool is_recv, const WaitInfo& info) {
  Waiter waiter{buf.impl_.get(), is_recv, info.deadline};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) std::rethrow_exception(failure_);
    waiters_.push_back(&waiter);
  }
  monitor_cv_.notify_all();
  int peer = -1;
  bool ok = false;
  std::string io_error;
  try {
    auto remaining = std::chrono::duration_cast<Millis>(info.deadline - Clock::now());
    auto gloo_timeout = std::max(remaining, Millis(0)) + kGlooSlack;
    ok = is_recv ? buf.impl_->waitRecv(&peer, gloo_timeout)
                 : buf.impl_->waitSend(&peer, gloo_timeout);
  } catch (const std::exception& e) {
    io_error = e.what();
  }
  Waiter::Reason reason;
  std::exception_ptr failure;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase(waiters_, &waiter);
    reason = waiter.reason;
    failure = failure_;
  }
  std::string what = detail::concat(info.op, " (tag ", info.tag, ") on rank ", rank_);
  int culprit = info.peers.size() == 1 ? info.peers[0] : -1;
  if (reason == Waiter::Reason::kFailure && failure) std::rethrow_exception(failure);
  if (reason == Waiter::Reason::kTimeout) {
    fail(FailKind::kTimeout, culprit,
         detail::concat(what, ": timed out after ", options_.timeout.count(),
                        " ms waiting to ", is_recv ? "receive from" : "send to", " rank(s) ",
                        rank_list(info.peers), " (not heard from)"));
  }
  if (!io_error.empty()) {
    if (failure) std::rethrow_exception(failure);
    fail(FailKind::kIo, culprit,
         detail::concat(what, ": connection to rank(s) ", rank_list(info.peers),
                        " failed: ", io_error));
  }
  if (!ok) {
    if (failure) std::rethrow_exception(failure);
    fail(FailKind::kIo, culprit, detail::concat(what, ": wait aborted"));
  }
  return peer;
}

// ---------------------------------------------------------------------------------------------
// Framed point-to-point

void Group::send(int dst, uint64_t tag, std::span<const std::byte> bytes, Millis timeout) {
  DT_ENFORCE(dst >= 0 && dst < size_ && dst != rank_, "send: destination rank ", dst,
             " is not a peer of rank ", rank_, " in a group of size ", size_);
  FrameHeader header{kFrameMagic, 0, bytes.size()};
  auto hb = buffer(&header, sizeof(header));
  std::unique_ptr<Buffer> pb;
  int peers[1] = {dst};
  WaitInfo info{"send", tag, peers, deadline(timeout)};
  hb->send(dst, slot(tag, 0), 0, sizeof(header));
  if (!bytes.empty()) {
    pb = buffer(const_cast<std::byte*>(bytes.data()), bytes.size());
    pb->send(dst, slot(tag, 1), 0, bytes.size());
  }
  hb->wait_send(info);
  if (pb) pb->wait_send(info);
}

Message Group::recv_framed(const std::vector<int>& srcs, uint64_t tag, Millis timeout,
                           const char* op, std::span<std::byte> into, bool fixed) {
  DT_ENFORCE(!srcs.empty(), op, ": no source ranks given");
  for (int s : srcs) {
    DT_ENFORCE(s >= 0 && s < size_ && s != rank_, op, ": source rank ", s,
               " is not a peer of rank ", rank_, " in a group of size ", size_);
  }
  FrameHeader header{};
  auto hb = buffer(&header, sizeof(header));
  WaitInfo info{op, tag, srcs, deadline(timeout)};
  if (srcs.size() == 1) {
    hb->recv(srcs[0], slot(tag, 0), 0, sizeof(header));
  } else {
    hb->recv_any(srcs, slot(tag, 0), 0, sizeof(header));
  }
  Message msg;
  msg.src = hb->wait_recv(info);
  if (header.magic != kFrameMagic || header.length > kMaxFrameBytes) {
    fail(FailKind::kProtocol, msg.src,
         detail::concat(op, " (tag ", tag, ") on rank ", rank_, ": malformed frame header from rank ",
                        msg.src, " (magic ", header.magic, ", length ", header.length, ")"));
  }
  int from[1] = {msg.src};
  info.peers = from;
  bool mismatch = fixed && header.length != into.size();
  std::span<std::byte> target = into;
  if (!fixed || mismatch) {
    msg.bytes.resize(header.length);
    target = msg.bytes;
  }
  if (header.length > 0) {
    auto pb = buffer(target.data(), target.size());
    pb->recv(msg.src, slot(tag, 1), 0, header.length);
    pb->wait_recv(info);
  }
  if (mismatch) {
    throw ProtocolError(detail::concat(op, " (tag ", tag, ") on rank ", rank_, ": rank ", msg.src,
                                       " sent ", header.length, " bytes, expected ", into.size()));
  }
  return msg;
}

Message Group::recv(int src, uint64_t tag, Millis timeout) {
  return recv_framed({src}, tag, timeout, "recv", {}, false);
}

Message Group::recv(const AnyOf& srcs, uint64_t tag, Millis timeout) {
  return recv_framed(srcs.ranks, tag, timeout, "recv", {}, false);
}

void Group::recv_into(int src, uint64_t tag, std::span<std::byte> out, Millis timeout) {
  recv_framed({src}, tag, timeout, "recv", out, true);
}

}  // namespace dtrain::comm
