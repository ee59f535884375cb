// Decoders of the Group's own wire messages (see group_wire.h).
#include "group_wire.h"

#include <cstring>

#include "dtrain/comm/group.h"
#include "dtrain/common/error.h"

namespace dtrain::comm::internal {

FrameHeader decode_frame_header(std::span<const std::byte> bytes, int src, uint64_t max_length) {
  DT_ENFORCE_AS(ProtocolError, bytes.size() == sizeof(FrameHeader), "frame header from rank ", src,
                " has ", bytes.size(), " bytes, expected ", sizeof(FrameHeader));
  FrameHeader header;
  std::memcpy(&header, bytes.data(), sizeof(header));
  if (header.magic != kFrameMagic) {
    throw ProtocolError(detail::concat("malformed frame header from rank ", src, " (magic ",
                                       header.magic, ", length ", header.length, ")"));
  }
  if (header.length > max_length) {
    throw ProtocolError(detail::concat("rank ", src, " announced a frame of ", header.length,
                                       " bytes, over the limit of ", max_length,
                                       " bytes (GroupOptions::max_frame_bytes); refused unread"));
  }
  return header;
}

std::optional<ControlMsg> decode_control(std::span<const std::byte> bytes, int group_size) {
  if (bytes.size() != sizeof(ControlMsg)) return std::nullopt;
  ControlMsg msg;
  std::memcpy(&msg, bytes.data(), sizeof(msg));
  switch (msg.type) {
    case ControlMsg::kPing:
      return msg;
    case ControlMsg::kPong:
      if (msg.count < 0 || msg.count > kMaxWaitingOn) return std::nullopt;
      for (int32_t i = 0; i < msg.count; ++i) {
        if (msg.waiting_on[i] < 0 || msg.waiting_on[i] >= group_size) return std::nullopt;
      }
      return msg;
    case ControlMsg::kFailure: {
      msg.message[sizeof(msg.message) - 1] = '\0';
      using Kind = Group::FailKind;
      const auto kind = static_cast<Kind>(msg.kind);
      if (kind != Kind::kIo && kind != Kind::kTimeout && kind != Kind::kProtocol &&
          kind != Kind::kInvalid) {
        msg.kind = static_cast<int32_t>(Kind::kProtocol);
      }
      if (msg.culprit < 0 || msg.culprit >= group_size) msg.culprit = -1;
      return msg;
    }
    default:
      return std::nullopt;
  }
}

}  // namespace dtrain::comm::internal
