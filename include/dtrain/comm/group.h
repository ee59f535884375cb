// Group: a connected set of ranks over Gloo, the unit every collective and protocol runs on.
//
// Point-to-point messages are framed: a fixed 16-byte header carrying the payload length travels
// first on the tag's header slot, then the payload on its data slot, received into a buffer of
// exactly the announced size. A receiver therefore never posts a buffer smaller than what arrives
// (Gloo aborts the process when that happens) and sizes need not be known in advance.
//
// Every wait has a deadline. A monitor thread aborts waits that pass it (Gloo's own timeout would
// tear the context down before we could tell the others why). A rank that fails, from a timeout,
// a broken connection or a protocol mismatch, sends a short notice naming the culprit rank to every
// peer on a reserved control slot, so that ranks not talking to the culprit fail at once with the
// same diagnosis instead of waiting out their own deadline. A rank whose own work fails (a full
// disk, a reducer's error) announces "rank r failed: <cause>" the same way (announce_failure, or
// run_rank around the rank's work). After a failure the Group refuses further use until
// reconnect() re-rendezvouses under a new generation.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"

namespace gloo {
class Context;
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo

namespace dtrain::comm {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// Largest framed message a Group accepts by default (GroupOptions::max_frame_bytes). Far above
// what dtrain sends in one frame (a rank's reducer state, about one model gradient; collectives
// move bulk data in raw transfers), far below what a lying or corrupt header could otherwise make
// a receiver allocate.
constexpr uint64_t kDefaultMaxFrameBytes = uint64_t{4} << 30;

// Ranks connect over TCP. (Gloo's ibverbs transport refuses the unbound buffers every Group
// operation uses, so it is not offered.)
struct GroupOptions {
  std::string rendezvous;   // file:///dir or redis://host:port; may be empty when size is 1
  // A store of the caller's own (e.g. the Python module's adapter to torch.distributed's store),
  // used instead of opening `rendezvous`; sub-groups from split() meet in it too.
  std::shared_ptr<Store> store;
  std::optional<int> rank;  // overrides the launcher environment
  std::optional<int> size;  // overrides the launcher environment
  std::string run_id;       // empty: detect_run_id()
  std::string job;          // per-job nonce from the launcher; empty: detect_job_nonce()
  std::string host;         // address to bind and advertise (e.g. 127.0.0.1)
  std::string iface;        // interface to bind (e.g. eth0); used when host is empty
  Millis timeout{60000};    // default deadline of every wait, and of the whole rendezvous
  // A frame whose header announces more is a ProtocolError naming the peer (nothing is
  // allocated for it); send() refuses a larger payload with InvalidArgument.
  uint64_t max_frame_bytes = kDefaultMaxFrameBytes;
  // The build this process claims at rendezvous; empty: this build (build_info()). Tests set
  // another to act as a different build.
  std::string build;
};

// `options` with what it leaves empty taken from the environment: the rendezvous from
// DTRAIN_RENDEZVOUS, and when neither host nor iface is given, DTRAIN_HOST and DTRAIN_IFACE. (Rank,
// size and run id are read by Group::connect itself; see rendezvous.h.)
GroupOptions with_environment(GroupOptions options);

// Carried by the errors of a Group that failed, and of a rendezvous that did not complete, besides
// their kind (IoError, TimeoutError, ProtocolError, InvalidArgument): who is to blame. A program
// tells "this rank failed" from "a peer failed" with dynamic_cast (the CLI's exit codes do).
class GroupFailure {
 public:
  GroupFailure(int rank, int culprit, bool remote)
      : rank_(rank), culprit_(culprit), remote_(remote) {}
  virtual ~GroupFailure() = default;
  int rank() const { return rank_; }        // the rank that raised the error
  int culprit() const { return culprit_; }  // the rank blamed, or -1 when no single rank is
  bool remote() const { return remote_; }   // learnt from another rank's notice
  // Another rank is to blame (a peer died, stalled, failed on its own or refused this one).
  bool peer_failed() const { return culprit_ >= 0 ? culprit_ != rank_ : remote_; }

 private:
  int rank_;
  int culprit_;
  bool remote_;
};

template <typename Kind>
class GroupError : public Kind, public GroupFailure {
 public:
  GroupError(const std::string& message, int rank, int culprit, bool remote)
      : Kind(message), GroupFailure(rank, culprit, remote) {}
};

struct AnyOf {
  std::vector<int> ranks;
};

struct Message {
  int src = -1;
  std::vector<std::byte> bytes;
};

class Group;

// Where a blocking wait comes from: op name and tag for messages, the ranks it waits on, and when
// it gives up.
struct WaitInfo {
  const char* op = "";
  uint64_t tag = 0;
  std::span<const int> peers;
  Clock::time_point deadline;
};

// Memory registered with the transport for sends and receives (a Gloo unbound buffer). At most one
// outstanding send and one outstanding receive completion is awaited at a time per buffer.
class Buffer {
 public:
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void send(int dst, uint64_t slot, size_t offset, size_t nbytes);
  void recv(int src, uint64_t slot, size_t offset, size_t nbytes);
  void recv_any(const std::vector<int>& srcs, uint64_t slot, size_t offset, size_t nbytes);
  // Wait for one completion; return the peer. Throw TimeoutError/IoError/ProtocolError naming
  // the op, tag and ranks, after poisoning the group and notifying the other ranks.
  int wait_send(const WaitInfo& info);
  int wait_recv(const WaitInfo& info);

  void* data() const;
  size_t size() const;

 private:
  friend class Group;
  Buffer(Group& group, std::unique_ptr<gloo::transport::UnboundBuffer> impl);
  Group& group_;
  std::unique_ptr<gloo::transport::UnboundBuffer> impl_;
};

class Group : public std::enable_shared_from_this<Group> {
 public:
  // Rendezvous and connect every pair, all within options.timeout. Throws InvalidArgument (bad
  // options; a rank of another job, build or world size met at the rendezvous), IoError (store or
  // transport unreachable), TimeoutError naming ranks that never joined and what the rendezvous
  // held instead. What an earlier job left in the store is recognised and never mistaken for a
  // peer (see rendezvous.h).
  static std::shared_ptr<Group> connect(const GroupOptions& options);
  // Closes only once every rank has finished its receives (a healthy group), so a group whose
  // rank failed without announcing it (no run_rank) still makes its peers wait for their deadline.
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  Millis timeout() const { return options_.timeout; }
  uint64_t generation() const { return generation_; }
  const GroupOptions& options() const { return options_; }

  // Tags are handed out by a per-group counter; every rank issues operations in the same order,
  // so every rank draws the same tag for the same operation.
  uint64_t next_tag() { return next_tag_++; }
  // Gloo slot of a tag's sub-channel. Sub-channels 0 and 1 carry framed messages.
  static uint64_t slot(uint64_t tag, uint32_t sub) { return (tag << 24) | sub; }
  static constexpr uint32_t kMaxSub = (1u << 24) - 1;
  // Deadline of an operation started now (timeout 0 means the group's default).
  Clock::time_point deadline(Millis timeout = Millis(0)) const {
    return Clock::now() + (timeout.count() > 0 ? timeout : options_.timeout);
  }

  // Framed point-to-point. `send` returns when the payload has been handed to the receiver.
  // Payloads are limited to options().max_frame_bytes.
  void send(int dst, uint64_t tag, std::span<const std::byte> bytes, Millis timeout = Millis(0));
  Message recv(int src, uint64_t tag, Millis timeout = Millis(0));
  Message recv(const AnyOf& srcs, uint64_t tag, Millis timeout = Millis(0));
  // Receive into a buffer of known size. A message of another size is drained and reported as a
  // ProtocolError naming the peer and both sizes; the group stays usable.
  void recv_into(int src, uint64_t tag, std::span<std::byte> out, Millis timeout = Millis(0));

  // Register memory for raw (unframed) transfers, used by collectives once sizes are agreed.
  std::unique_ptr<Buffer> buffer(void* ptr, size_t nbytes);

  // Scratch memory owned by the group and reused across calls (grow-only, not zeroed), so a large
  // collective does not pay for fresh pages every time. `which` picks one of kScratchAreas.
  // Like all collective state, for use by one thread at a time.
  static constexpr int kScratchAreas = 4;
  std::byte* scratch(size_t nbytes, int which = 0);

  // Fail on purpose: poison the group, notify peers, throw. `culprit` is a rank or -1.
  // The kind of error the failure raises: IoError, TimeoutError, ProtocolError, InvalidArgument.
  enum class FailKind : int32_t { kIo = 1, kTimeout = 2, kProtocol = 3, kInvalid = 4 };
  [[noreturn]] void fail(FailKind kind, int culprit, const std::string& message);

  // This rank cannot go on because of an error of its own (a file it cannot write, a reducer's
  // ProtocolError): poisons the group and tells every peer "rank r failed: <cause>" (as an error
  // of `kind`), returning once the notices are on their way, so that every peer fails at once
  // naming this rank and the cause instead of waiting out a deadline. Does nothing if the group
  // has already failed (that failure was announced when it happened).
  void announce_failure(const std::string& cause, FailKind kind = FailKind::kIo);

  // True once an operation failed; every further operation throws until reconnect().
  bool poisoned() const;
  // Throws the stored failure if poisoned.
  void check_usable() const;

  // Re-rendezvous under generation+1 with the same rank/size, or with a new rank and size (e.g.
  // the survivors of a failure, renumbered 0..n-1). Every member of the new group must call it.
  void reconnect();
  void reconnect(int new_rank, int new_size);

  // Splits this group into sub-groups, as MPI_Comm_split does. Every rank of this group calls it
  // (a collective: the ranks first exchange their colors and keys). Ranks passing the same color
  // >= 0 form one new Group, ranked by (key, rank in this group); a rank passing a negative color
  // joins none and gets null. A sub-group is a Group of its own: its own connections, tags,
  // deadlines and failure notices (a failure in one sub-group does not poison this group or the
  // others). Its ranks meet through this group's rendezvous store under
  // "<run id>/split<generation>.<n>/c<color>", n counting this group's splits, so no split ever
  // meets another's keys. Throws what connect() throws (a member that never arrives: TimeoutError
  // naming it).
  std::shared_ptr<Group> split(int color, int key);
  // For a group made by split(): the rank in the parent group of each member, indexed by rank in
  // this group. Empty for a group made by connect().
  const std::vector<int>& parent_ranks() const { return parent_ranks_; }

  // The underlying Gloo context (for the Gloo baseline adapter); null when size is 1.
  const std::shared_ptr<gloo::Context>& gloo_context() const { return context_; }

 private:
  friend class Buffer;
  struct Waiter;
  explicit Group(GroupOptions options);
  void rendezvous();
  void teardown();
  void tag0_barrier(Millis limit);  // all ranks meet (rendezvous end, before closing)
  int wait(Buffer& buf, bool is_recv, const WaitInfo& info);
  void monitor_loop();
  void control_loop();
  void notify_peers(FailKind kind, int culprit, const std::string& message);
  void on_remote_notice(int from, FailKind kind, int culprit, const std::string& message);
  void answer_probe(int from, uint64_t nonce);
  // The ranks `peer` is blocked on, or nothing if it does not answer within `window`.
  std::optional<std::vector<int>> probe(int peer, Millis window);
  // Walks the wait-for graph from `peers`; returns the explanation and sets *culprit.
  std::string diagnose(std::span<const int> peers, int* culprit);
  Message recv_framed(const std::vector<int>& srcs, uint64_t tag, Millis timeout, const char* op,
                      std::span<std::byte> into, bool fixed);

  GroupOptions options_;
  int rank_ = 0;
  int size_ = 1;
  uint64_t generation_ = 0;
  uint64_t next_tag_ = 1;
  uint64_t splits_ = 0;
  std::vector<int> parent_ranks_;
  std::shared_ptr<Store> store_;
  std::unique_ptr<std::byte[]> scratch_[kScratchAreas];
  size_t scratch_size_[kScratchAreas] = {};
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;

  // Failure state and the waits the monitor may abort.
  mutable std::mutex mu_;
  std::condition_variable monitor_cv_;
  std::condition_variable failure_cv_;
  Clock::time_point monitor_wake_ = Clock::time_point::max();  // when the monitor next looks
  uint64_t probe_counter_ = 0;
  // Buffers of probes and answers that may still be in flight; freed at teardown.
  std::vector<std::unique_ptr<Buffer>> graveyard_;
  std::vector<std::unique_ptr<std::vector<std::byte>>> graveyard_bytes_;
  std::vector<Waiter*> waiters_;
  std::exception_ptr failure_;
  bool stopping_ = false;
  std::thread monitor_;
  std::thread control_;
  std::vector<std::byte> control_in_;
  std::unique_ptr<Buffer> control_buf_;
  std::vector<std::vector<std::byte>> notice_out_;
  std::vector<std::unique_ptr<Buffer>> notice_bufs_;
};

// Runs one rank's share of a job on `group`. An exception that ends it is first announced to every
// peer with its message as the cause (announce_failure; a ProtocolError, TimeoutError or
// InvalidArgument keeps its kind, anything else reaches the peers as an IoError), then rethrown.
// The top of every command that runs a rank's work goes through here. When every rank fails alike
// (a flag check that all of them make), a slower rank may get the first one's announcement instead
// of its own error: same kind, same cause, "rank r failed: " in front.
void run_rank(Group& group, const std::function<void()>& work);

}  // namespace dtrain::comm
