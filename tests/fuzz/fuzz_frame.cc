// Fuzzes the Group's own wire messages (src/comm/group_wire.h): frame headers and control
// messages (failure notices, probes, probe answers) as a peer could send them.
// Input: u8 group size (1 + x % 64), u8 which (bit 0: the control message is given its exact size,
// else the raw rest), then the bytes: the first 16 are also read as a frame header.
#include <cstring>
#include <string>
#include <vector>

#include "comm/group_wire.h"
#include "dtrain/common/error.h"
#include "fuzz_input.h"

using namespace dtrain;
using namespace dtrain::comm::internal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const int group_size = 1 + in.take<uint8_t>() % 64;
  const bool exact = in.take<uint8_t>() & 1;
  const auto bytes = in.rest();

  try {
    const FrameHeader h =
        decode_frame_header(bytes.first(std::min(bytes.size(), sizeof(FrameHeader))), 1);
    fuzz::check(h.magic == kFrameMagic && h.length <= comm::kDefaultMaxFrameBytes);
  } catch (const Error&) {
  }

  std::vector<std::byte> control(bytes.begin(), bytes.end());
  if (exact) control.resize(kControlSize);
  const auto msg = decode_control(control, group_size);
  if (!msg) return 0;
  switch (msg->type) {
    case ControlMsg::kFailure: {
      // What group_health.cc does with a notice: a string of the message, the kind, the culprit.
      const std::string text = msg->message;
      fuzz::check(text.size() < sizeof(msg->message));
      fuzz::check(msg->kind >= 1 && msg->kind <= 4);
      fuzz::check(msg->culprit >= -1 && msg->culprit < group_size);
      break;
    }
    case ControlMsg::kPong: {
      // What Group::probe does with an answer.
      const std::vector<int> waits(msg->waiting_on, msg->waiting_on + msg->count);
      for (int r : waits) fuzz::check(r >= 0 && r < group_size);
      break;
    }
    case ControlMsg::kPing:
      break;
    default:
      fuzz::check(false);
  }
  return 0;
}
