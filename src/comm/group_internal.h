// Internals shared by group.cc (connect, framing) and group_health.cc (deadlines, failures).
#pragma once

#include <gloo/context.h>
#include <gloo/transport/unbound_buffer.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::comm::internal {

// Reserved Gloo slots (tags are small, so tag << 24 never reaches them).
constexpr uint64_t kControlSlot = ~uint64_t{0};
constexpr uint64_t kPongSlot = ~uint64_t{0} - 1;
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

// What travels on the control slot: a failure notice, a liveness probe, or its answer.
constexpr size_t kControlSize = 512;
struct ControlMsg {
  enum Type : int32_t { kFailure = 1, kPing = 2, kPong = 3 };
  int32_t type = 0;
  int32_t kind = 0;      // kFailure: Group::FailKind
  int32_t culprit = -1;  // kFailure: the rank blamed, or -1
  int32_t count = 0;     // kPong: entries of waiting_on used
  uint64_t nonce = 0;    // kPing/kPong
  union {
    char message[kControlSize - 24];              // kFailure
    int32_t waiting_on[(kControlSize - 24) / 4];  // kPong: ranks this rank is blocked on
  };
  ControlMsg() : message{} {}
};
static_assert(sizeof(ControlMsg) == kControlSize);

std::string rank_list(std::span<const int> ranks);
// The error a failure of `kind` raises on `rank`, carrying the culprit (GroupFailure).
std::exception_ptr make_error(Group::FailKind kind, const std::string& message, int rank,
                              int culprit, bool remote);

}  // namespace dtrain::comm::internal

namespace dtrain::comm {

// A blocking wait the monitor thread may abort (deadline passed, or the group failed).
struct Group::Waiter {
  gloo::transport::UnboundBuffer* buf;
  bool is_recv;
  Clock::time_point deadline;
  std::vector<int> peers;
  enum class Reason { kNone, kTimeout, kFailure } reason = Reason::kNone;

  void abort() const {
    if (is_recv) {
      buf->abortWaitRecv();
    } else {
      buf->abortWaitSend();
    }
  }
};

}  // namespace dtrain::comm
