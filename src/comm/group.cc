#include "dtrain/comm/group.h"

#include <gloo/rendezvous/context.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "dtrain/common/error.h"
#include "dtrain/common/logging.h"
#include "group_internal.h"
#include "session.h"

#if defined(__SANITIZE_THREAD__)
#define DTRAIN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DTRAIN_TSAN 1
#endif
#endif
#ifdef DTRAIN_TSAN
// ThreadSanitizer's annotation: forget the accesses recorded for [mem, mem + size).
extern "C" void AnnotateNewMemory(const char* file, int line, const volatile void* mem,
                                  size_t size);
#endif

namespace dtrain::comm {

using internal::ControlMsg;
using internal::kControlSize;
using internal::rank_list;

namespace {

// The store Gloo exchanges addresses through: records the keys this rank writes so it can remove
// them once everyone has read them, and lets every wait run to the rendezvous deadline (Gloo would
// give it the context timeout, which is cut short for its connects; see rendezvous()).
class MeshStore : public Store {
 public:
  MeshStore(Store& base, Clock::time_point deadline) : base_(base), deadline_(deadline) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    base_.set(key, data);
    keys.push_back(key);
  }
  std::vector<char> get(const std::string& key) override {
    wait({key}, Millis(0));
    return base_.get(key);
  }
  std::optional<std::vector<char>> try_get(const std::string& key) override {
    return base_.try_get(key);
  }
  bool check(const std::vector<std::string>& k) override { return base_.check(k); }
  void remove(const std::vector<std::string>& k) override { base_.remove(k); }
  void wait(const std::vector<std::string>& k, const std::chrono::milliseconds&) override {
    auto left = std::chrono::duration_cast<Millis>(deadline_ - Clock::now());
    base_.wait(k, std::max(left, Millis(0)));
  }
  std::vector<std::string> keys;

 private:
  Store& base_;
  Clock::time_point deadline_;
};

// Gloo (Debian's 2022 snapshot) lets a connecting pair wait this many times the context timeout
// for its peer; the context timeout during connect is the time left divided by it.
constexpr int kGlooConnectFactor = 5;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Buffer

Buffer::Buffer(Group& group, std::unique_ptr<gloo::transport::UnboundBuffer> impl)
    : group_(group), impl_(std::move(impl)) {}
Buffer::~Buffer() {
  if (!impl_) return;
  void* memory = impl_->ptr;
  const size_t size = impl_->size;
  // Gloo's destructor returns once its I/O thread holds no reference to the buffer, so nothing
  // of an aborted operation can still land in the memory (gloo/common/memory.h).
  impl_.reset();
#ifdef DTRAIN_TSAN
  // That wait is an atomic inside (uninstrumented) libgloo, which TSan cannot see: it would
  // report the caller's free or reuse of memory an aborted receive had written as a race with
  // Gloo's I/O thread. The wait orders those writes before this point; say so.
  if (size > 0) AnnotateNewMemory(__FILE__, __LINE__, memory, size);
#else
  (void)memory;
  (void)size;
#endif
}
void* Buffer::data() const {
  return impl_->ptr;
}
size_t Buffer::size() const {
  return impl_->size;
}

void Buffer::send(int dst, uint64_t slot, size_t offset, size_t nbytes) {
  try {
    impl_->send(dst, slot, offset, nbytes);
  } catch (const std::exception& e) {
    group_.fail(Group::FailKind::kIo, dst,
                detail::concat("connection to rank(s) ", dst, " failed on rank ", group_.rank(),
                               " (posting a send): ", e.what()));
  }
}

void Buffer::recv(int src, uint64_t slot, size_t offset, size_t nbytes) {
  try {
    impl_->recv(src, slot, offset, nbytes);
  } catch (const std::exception& e) {
    group_.fail(Group::FailKind::kIo, src,
                detail::concat("connection to rank(s) ", src, " failed on rank ", group_.rank(),
                               " (posting a receive): ", e.what()));
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

int Buffer::wait_send(const WaitInfo& info) {
  return group_.wait(*this, false, info);
}
int Buffer::wait_recv(const WaitInfo& info) {
  return group_.wait(*this, true, info);
}

// ---------------------------------------------------------------------------------------------
// Group: connect, teardown

Group::Group(GroupOptions options) : options_(std::move(options)) {}

std::shared_ptr<Group> Group::connect(const GroupOptions& options) {
  // Gloo writes to sockets with writev, which raises SIGPIPE when a peer has died; the default
  // action would kill this process before the error could be reported. Ignore it (once, and
  // only if nobody installed a handler), as every Gloo user must.
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    ::signal(SIGPIPE, SIG_IGN);
  }
  // Both given: the environment is not read (a stray launcher variable cannot fail the call).
  auto env = options.rank && options.size ? std::nullopt : detect_launch_env();
  int rank = options.rank.value_or(env ? env->rank : 0);
  int size = options.size.value_or(env ? env->size : 1);
  std::string source = options.rank ? "--rank" : (env ? env->source : "default");
  DT_ENFORCE(size >= 1, "world size must be >= 1, got ", size, " (from ", source, ")");
  DT_ENFORCE(rank >= 0 && rank < size, "rank ", rank, " is outside 0..", size - 1, " (from ",
             source, ")");
  DT_ENFORCE(options.timeout.count() > 0, "--timeout must be positive, got ",
             options.timeout.count(), " ms");
  if (size > 1) {
    DT_ENFORCE(!options.rendezvous.empty() || options.store != nullptr,
               "--rendezvous is required with world size ", size,
               " (file:///shared/dir or redis://host:port)");
  }
  std::shared_ptr<Group> group(new Group(options));
  group->rank_ = rank;
  group->size_ = size;
  if (group->options_.run_id.empty()) group->options_.run_id = detect_run_id();
  if (group->options_.job.empty()) group->options_.job = detect_job_nonce();
  if (group->options_.build.empty()) group->options_.build = build_info().text;
  group->rendezvous();
  return group;
}

GroupOptions with_environment(GroupOptions options) {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr ? std::string(v) : std::string();
  };
  if (options.rendezvous.empty() && options.store == nullptr) {
    options.rendezvous = env("DTRAIN_RENDEZVOUS");
  }
  if (options.host.empty() && options.iface.empty()) {
    options.host = env("DTRAIN_HOST");
    options.iface = env("DTRAIN_IFACE");
  }
  return options;
}

Group::~Group() {
  teardown();
}

void Group::rendezvous() {
  if (size_ == 1) return;
  // Everything below, Gloo's connections included, ends by this deadline.
  const auto deadline = Clock::now() + options_.timeout;
  std::string at = "the given store";
  if (options_.store == nullptr) {
    auto url = RendezvousUrl::parse(options_.rendezvous);
    if (!store_) store_ = open_store(url);
    at = url.str();
  } else {
    store_ = options_.store;
  }
  std::string where = detail::concat("rendezvous at ", at, " (run '", options_.run_id,
                                     "', generation ", generation_, ")");
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);

  internal::MeetOptions meet;
  meet.where = where;
  meet.space = detail::concat(options_.run_id, "/g", generation_);
  meet.rank = rank_;
  meet.size = size_;
  meet.build = options_.build;
  meet.job = options_.job;
  meet.host = host;
  meet.timeout = options_.timeout;
  meet.deadline = deadline;
  const internal::Meeting meeting = internal::meet(*store_, meet);

  try {
    if (!device_) {
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
  } catch (const std::exception& e) {
    throw IoError(detail::concat("cannot create the TCP device (host '", options_.host,
                                 "', iface '", options_.iface, "'): ", e.what()));
  }

  // Only the ranks rank 0 admitted a moment ago take part, so every address is a live one.
  PrefixedStore prefixed(meeting.prefix + "/mesh", *store_);
  MeshStore store(prefixed, deadline);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank_, size_);
  const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
  ctx->setTimeout(std::max(left / kGlooConnectFactor, Millis(1)));
  const std::string failed = detail::concat(where, ": rank ", rank_,
                                            " could not connect to its peers within the --timeout "
                                            "of ",
                                            options_.timeout.count(), " ms: ");
  const std::string why =
      " (all ranks had joined a moment before: one of them stopped, or cannot be reached at the "
      "address it advertised; see --host/--iface)";
  try {
    if (left.count() <= 0) throw TimeoutError("no time was left after the ranks met");
    ctx->connectFullMesh(store, device_);
  } catch (const TimeoutError& e) {
    throw GroupError<TimeoutError>(failed + e.what() + why, rank_, -1, false);
  } catch (const std::exception& e) {
    throw GroupError<IoError>(failed + e.what() + why, rank_, -1, false);
  }
  // From here on our own deadlines rule; Gloo's sits further out (see kGlooSlack).
  ctx->setTimeout(options_.timeout + internal::kGlooSlack);
  context_ = ctx;

  control_in_.assign(kControlSize, std::byte{0});
  control_buf_ = buffer(control_in_.data(), control_in_.size());
  notice_out_.assign(size_, std::vector<std::byte>(kControlSize));
  notice_bufs_.clear();
  for (int r = 0; r < size_; ++r) {
    notice_bufs_.push_back(buffer(notice_out_[r].data(), kControlSize));
  }
  stopping_ = false;
  monitor_ = std::thread([this] { monitor_loop(); });
  control_ = std::thread([this] { control_loop(); });

  // Everyone has read every address once all have connected; then each rank removes its join
  // record and addresses. (Connected ranks answer at once: the floor only spares a rendezvous
  // that used up its time connecting from failing in its last step.)
  const auto rest = std::chrono::duration_cast<Millis>(deadline - Clock::now());
  tag0_barrier(std::max(rest, std::min(options_.timeout, Millis(2000))));
  store.remove(store.keys);
  store_->remove({internal::join_key(meeting, rank_)});
  spdlog::debug("{}: connected {} ranks", where, size_);
}

void Group::tag0_barrier(Millis limit) {
  // Gather "done" on rank 0, then release. Tag 0 is reserved for rendezvous and closing.
  if (rank_ == 0) {
    for (int r = 1; r < size_; ++r) recv(r, 0, limit);
    for (int r = 1; r < size_; ++r) send(r, 0, {}, limit);
  } else {
    send(0, 0, {}, limit);
    recv(0, 0, limit);
  }
}

void Group::teardown() {
  if (context_ && !poisoned()) {
    // Gloo reports a send complete once its bytes are handed to the kernel; closing the
    // connection right after may still lose them (seen as a peer waiting forever for the last
    // message of a collective). So a healthy group closes only once every rank has finished
    // every receive.
    try {
      tag0_barrier(std::min(options_.timeout, Millis(10000)));
    } catch (const std::exception& e) {
      spdlog::warn("rank {}: closing the group without agreement of all ranks: {}", rank_,
                   e.what());
    }
  }
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    graveyard_.clear();
    graveyard_bytes_.clear();
  }
  context_.reset();
}

void Group::reconnect() {
  reconnect(rank_, size_);
}

void Group::reconnect(int new_rank, int new_size) {
  DT_ENFORCE(new_size >= 1, "reconnect: world size must be >= 1, got ", new_size);
  DT_ENFORCE(new_rank >= 0 && new_rank < new_size, "reconnect: rank ", new_rank, " is outside 0..",
             new_size - 1);
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

std::shared_ptr<Group> Group::split(int color, int key) {
  check_usable();
  const uint64_t tag = next_tag();
  const uint64_t seq = splits_++;
  // (color, key) of every rank: gathered on rank 0, then sent back to all.
  std::vector<int64_t> table(2 * static_cast<size_t>(size_));
  table[2 * rank_] = color;
  table[2 * rank_ + 1] = key;
  if (rank_ == 0) {
    for (int r = 1; r < size_; ++r) {
      recv_into(r, tag, std::as_writable_bytes(std::span(table).subspan(2 * r, 2)));
    }
    for (int r = 1; r < size_; ++r) send(r, tag, std::as_bytes(std::span(table)));
  } else {
    send(0, tag, std::as_bytes(std::span(table).subspan(2 * rank_, 2)));
    recv_into(0, tag, std::as_writable_bytes(std::span(table)));
  }
  if (color < 0) return nullptr;
  std::vector<int> members;
  for (int r = 0; r < size_; ++r) {
    if (table[2 * r] == color) members.push_back(r);
  }
  std::stable_sort(members.begin(), members.end(),
                   [&](int a, int b) { return table[2 * a + 1] < table[2 * b + 1]; });
  const auto me = std::find(members.begin(), members.end(), rank_);
  GroupOptions sub = options_;
  sub.rank = static_cast<int>(me - members.begin());
  sub.size = static_cast<int>(members.size());
  sub.run_id = detail::concat(options_.run_id, "/split", generation_, ".", seq, "/c", color);
  auto group = connect(sub);
  group->parent_ranks_ = std::move(members);
  return group;
}

std::byte* Group::scratch(size_t nbytes, int which) {
  DT_ENFORCE(which >= 0 && which < kScratchAreas, "scratch area ", which, " does not exist");
  if (scratch_size_[which] < nbytes) {
    scratch_[which].reset(new std::byte[nbytes]);
    scratch_size_[which] = nbytes;
  }
  return scratch_[which].get();
}

std::unique_ptr<Buffer> Group::buffer(void* ptr, size_t nbytes) {
  check_usable();
  DT_ENFORCE(context_ != nullptr, "a group of size 1 has no peers to transfer with");
  return std::unique_ptr<Buffer>(new Buffer(*this, context_->createUnboundBuffer(ptr, nbytes)));
}

// ---------------------------------------------------------------------------------------------
// Framed point-to-point

void Group::send(int dst, uint64_t tag, std::span<const std::byte> bytes, Millis timeout) {
  DT_ENFORCE(dst >= 0 && dst < size_ && dst != rank_, "send: destination rank ", dst,
             " is not a peer of rank ", rank_, " in a group of size ", size_);
  DT_ENFORCE(bytes.size() <= options_.max_frame_bytes, "send: ", bytes.size(), " bytes to rank ",
             dst, " exceed the frame limit of ", options_.max_frame_bytes,
             " bytes (GroupOptions::max_frame_bytes)");
  internal::FrameHeader header{internal::kFrameMagic, 0, bytes.size()};
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
  internal::FrameHeader header{};
  auto hb = buffer(&header, sizeof(header));
  WaitInfo info{op, tag, srcs, deadline(timeout)};
  if (srcs.size() == 1) {
    hb->recv(srcs[0], slot(tag, 0), 0, sizeof(header));
  } else {
    hb->recv_any(srcs, slot(tag, 0), 0, sizeof(header));
  }
  Message msg;
  msg.src = hb->wait_recv(info);
  try {
    header = internal::decode_frame_header(std::as_bytes(std::span(&header, 1)), msg.src,
                                           options_.max_frame_bytes);
  } catch (const ProtocolError& e) {
    fail(FailKind::kProtocol, msg.src,
         detail::concat(op, " (tag ", tag, ") on rank ", rank_, ": ", e.what()));
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
