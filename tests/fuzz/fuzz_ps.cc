// Fuzzes the parameter server's frames (src/ps/wire.h) as a worker or a shard could send them:
// requests (what a shard decodes), replies and the stats blob (what a client decodes). A frame
// that decodes must encode back to the same bytes (the format has one spelling of each frame).
// Input: u8 which (bit 0: also decode the bytes as a stats blob), then the frame's bytes.
#include <cstring>

#include "dtrain/common/error.h"
#include "fuzz_input.h"
#include "ps/wire.h"

using namespace dtrain;
using namespace dtrain::ps;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const bool stats = in.take<uint8_t>() & 1;
  const auto frame = in.rest();

  try {
    const wire::Request q = wire::decode_request(frame);
    fuzz::check(q.head.keys.begin <= q.head.keys.end);
    fuzz::check(q.values.size() * sizeof(float) <= frame.size());
    fuzz::check(q.segments.size() * sizeof(wire::Segment) <= frame.size());
    if (q.head.op == wire::Op::kPush) fuzz::check(q.values.size() == q.head.keys.size());
    const auto again = wire::encode_request(q.head, q.segments, q.values);
    fuzz::check(again.size() == frame.size() &&
                std::memcmp(again.data(), frame.data(), frame.size()) == 0);
  } catch (const ProtocolError&) {
  }

  try {
    const wire::Reply r = wire::decode_reply(frame);
    fuzz::check(r.values.size() == r.value_count * sizeof(float));
    fuzz::check(r.head.message.size() <= wire::kMaxMessage);
    std::vector<float> values(r.value_count);
    if (!values.empty()) std::memcpy(values.data(), r.values.data(), r.values.size());
    const auto again = wire::encode_reply(r.head, values);
    fuzz::check(again.size() == frame.size() &&
                std::memcmp(again.data(), frame.data(), frame.size()) == 0);
  } catch (const ProtocolError&) {
  }

  if (stats) {
    try {
      const ServerStats s = wire::decode_stats(frame);
      fuzz::check(s.staleness_histogram.size() * sizeof(uint64_t) <= frame.size());
      fuzz::check(s.clocks.size() * 12 <= frame.size() && s.states.size() * 12 <= frame.size() &&
                  s.pushed.size() * 12 <= frame.size());
    } catch (const ProtocolError&) {
    }
  }
  return 0;
}
