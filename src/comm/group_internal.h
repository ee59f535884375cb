// Internals shared by group.cc (connect, framing) and group_health.cc (deadlines, failures).
#pragma once

#include <gloo/context.h>
#include <gloo/transport/unbound_buffer.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dtrain/comm/group.h"
#include "group_wire.h"

namespace dtrain::comm::internal {

// Reserved Gloo slots (tags are small, so tag << 24 never reaches them).
constexpr uint64_t kControlSlot = ~uint64_t{0};
constexpr uint64_t kPongSlot = ~uint64_t{0} - 1;
// Gloo's own wait timeout sits well past ours: our monitor aborts first, so Gloo never tears the
// context down on a timeout before we have told the peers why.
constexpr Millis kGlooSlack{30000};

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
