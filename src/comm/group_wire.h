// What a Group puts on the wire besides the payloads: the header of a framed message and the
// fixed-size control message (failure notice, liveness probe, probe answer), and their decoders.
// Both arrive from peers, so they are decoded, never trusted: group.cc and group_health.cc read
// them only through decode_frame_header() and decode_control() (fuzzed by tests/fuzz/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "dtrain/comm/group.h"

namespace dtrain::comm::internal {

constexpr uint32_t kFrameMagic = 0x4454524e;  // "DTRN"

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
constexpr int32_t kMaxWaitingOn = static_cast<int32_t>((kControlSize - 24) / 4);

// The header of a frame from rank `src`. Throws ProtocolError unless `bytes` is a whole header
// with our magic ("malformed frame header from rank src (magic M, length L)") announcing at most
// `max_length` bytes ("rank src announced a frame of L bytes, over the limit of M bytes ..."), so
// that a lying length is refused before anything is allocated for it.
FrameHeader decode_frame_header(std::span<const std::byte> bytes, int src,
                                uint64_t max_length = kDefaultMaxFrameBytes);

// A control message from a peer of a group of `group_size` ranks, made safe to act on: nullopt
// when it is not kControlSize bytes, of no known type, or a kPong whose count is outside
// [0, kMaxWaitingOn] or names a rank outside the group. Otherwise a copy whose failure message is
// NUL-terminated, whose failure kind is a known Group::FailKind (an unknown one reads as
// kProtocol) and whose culprit is a rank of the group or -1.
std::optional<ControlMsg> decode_control(std::span<const std::byte> bytes, int group_size);

}  // namespace dtrain::comm::internal
