// Encoding and bounds-checked decoding of the parameter server's frames (see wire.h).
#include "wire.h"

#include <cmath>
#include <cstring>

#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"

namespace dtrain::ps::wire {
namespace {

constexpr size_t kMaxStateName = 16;

void pad8(ByteWriter& w) {
  while (w.size() % 8 != 0) w.put(uint8_t{0});
}

void skip_pad8(ByteReader& r, const char* what) {
  const size_t pad = (8 - r.position() % 8) % 8;
  for (auto b : r.get_bytes(pad, "padding")) {
    DT_ENFORCE_AS(ProtocolError, b == std::byte{0}, what, ": padding byte is not zero");
  }
}

// Runs a decoder, turning the serializer's InvalidArgument (truncation, trailing bytes) into the
// ProtocolError remote input deserves.
template <typename Fn>
auto protocol(Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const ProtocolError&) {
    throw;
  } catch (const InvalidArgument& e) {
    throw ProtocolError(e.what());
  }
}

std::string name(ByteReader& r, const char* field, const char* what) {
  std::string s = r.get_string(field);
  DT_ENFORCE_AS(ProtocolError, s.size() <= kMaxName, what, ": ", field, " is ", s.size(),
                " bytes long (at most ", kMaxName, ")");
  return s;
}

}  // namespace

std::vector<std::byte> encode_request_head(const RequestHead& h, uint64_t segments,
                                           uint64_t values) {
  ByteWriter w;
  w.put(kRequestMagic).put(kVersion).put(static_cast<uint8_t>(h.op)).put(uint16_t{0});
  w.put(h.id).put(h.worker).put(h.clock).put(h.pulled_clock).put(h.keys.begin).put(h.keys.end);
  w.put(h.alpha).put_string(h.a).put_string(h.b).put(segments).put(values);
  pad8(w);
  return w.take();
}

std::vector<std::byte> encode_reply_head(const ReplyHead& h, uint64_t values) {
  ByteWriter w;
  w.put(kReplyMagic)
      .put(kVersion)
      .put(static_cast<uint8_t>(h.op))
      .put(static_cast<uint8_t>(h.status))
      .put(uint8_t{0});
  w.put(h.id).put(h.clock).put(h.scalar).put(h.range.begin).put(h.range.end).put(h.length);
  w.put(h.shard).put(h.shards);
  w.put_string(std::string_view(h.message).substr(0, kMaxMessage));
  w.put(static_cast<uint64_t>(h.blob.size())).put_array(std::span<const std::byte>(h.blob));
  w.put(values);
  pad8(w);
  return w.take();
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kHello:
      return "hello";
    case Op::kDone:
      return "done";
    case Op::kHeartbeat:
      return "heartbeat";
    case Op::kPush:
      return "push";
    case Op::kPull:
      return "pull";
    case Op::kPushRows:
      return "push_rows";
    case Op::kPullRows:
      return "pull_rows";
    case Op::kAssign:
      return "assign";
    case Op::kAccumulate:
      return "accumulate";
    case Op::kRead:
      return "read";
    case Op::kDot:
      return "dot";
    case Op::kAxpy:
      return "axpy";
    case Op::kScale:
      return "scale";
    case Op::kCopy:
      return "copy";
    case Op::kStats:
      return "stats";
    case Op::kShutdown:
      return "shutdown";
  }
  return "unknown";
}

size_t request_size(const RequestHead& head, size_t segments, size_t values) {
  return encode_request_head(head, segments, values).size() + segments * sizeof(Segment) +
         values * sizeof(float);
}

void encode_request(std::span<std::byte> out, const RequestHead& head,
                    std::span<const Segment> segments, std::span<const float> values) {
  const auto h = encode_request_head(head, segments.size(), values.size());
  DT_ENFORCE(out.size() == h.size() + segments.size_bytes() + values.size_bytes(),
             "ps request: buffer of ", out.size(), " bytes for a frame of ",
             h.size() + segments.size_bytes() + values.size_bytes());
  std::byte* p = out.data();
  std::memcpy(p, h.data(), h.size());
  p += h.size();
  if (!segments.empty()) std::memcpy(p, segments.data(), segments.size_bytes());
  p += segments.size_bytes();
  if (!values.empty()) std::memcpy(p, values.data(), values.size_bytes());
}

std::vector<std::byte> encode_request(const RequestHead& head, std::span<const Segment> segments,
                                      std::span<const float> values) {
  std::vector<std::byte> out(request_size(head, segments.size(), values.size()));
  encode_request(out, head, segments, values);
  return out;
}

uint64_t peek_id(std::span<const std::byte> frame) {
  if (frame.size() < 16) return 0;
  uint64_t id;
  std::memcpy(&id, frame.data() + 8, sizeof(id));
  return id;
}

Request decode_request(std::span<const std::byte> frame) {
  return protocol([&] {
    const char* what = "ps request";
    ByteReader r(frame, what);
    r.expect(kRequestMagic, "magic");
    const auto version = r.get<uint8_t>("version");
    DT_ENFORCE_AS(ProtocolError, version == kVersion, what, ": version is ", int(version),
                  ", expected ", int(kVersion));
    const auto op = r.get<uint8_t>("op");
    DT_ENFORCE_AS(ProtocolError, op >= 1 && op <= kMaxOp, what, ": op is ", int(op), " (known: 1..",
                  int(kMaxOp), ")");
    r.expect(uint16_t{0}, "reserved");
    Request q;
    RequestHead& h = q.head;
    h.op = static_cast<Op>(op);
    h.id = r.get<uint64_t>("id");
    h.worker = r.get<int32_t>("worker");
    h.clock = r.get<int64_t>("clock");
    h.pulled_clock = r.get<int64_t>("pulled_clock");
    h.keys.begin = r.get<uint64_t>("begin");
    h.keys.end = r.get<uint64_t>("end");
    h.alpha = r.get<double>("alpha");
    h.a = name(r, "vector name a", what);
    h.b = name(r, "vector name b", what);
    const auto nseg = r.get<uint64_t>("segments");
    const auto nval = r.get<uint64_t>("values");
    skip_pad8(r, what);
    const char* on = op_name(h.op);
    // Clocks count pushes: far from overflowing when the shard subtracts and adds them.
    DT_ENFORCE_AS(ProtocolError,
                  h.clock >= 0 && h.clock < kMaxClock && h.pulled_clock >= 0 &&
                      h.pulled_clock < kMaxClock,
                  what, " (", on, "): clock ", h.clock, " / pulled clock ", h.pulled_clock,
                  " outside [0, 2^62)");
    DT_ENFORCE_AS(ProtocolError, h.worker >= kMinWorker, what, " (", on, "): worker id ",
                  h.worker, " is below ", kMinWorker);
    DT_ENFORCE_AS(ProtocolError, h.keys.begin <= h.keys.end, what, " (", on, "): keys [",
                  h.keys.begin, ", ", h.keys.end, ") are not a range");
    DT_ENFORCE_AS(ProtocolError, nseg <= r.left() / sizeof(Segment), what, " (", on,
                  "): segments claims ", nseg, ", only ", r.left(), " bytes are left");
    q.segments = r.get_array<Segment>(nseg, "segments");
    DT_ENFORCE_AS(ProtocolError, nval <= r.left() / sizeof(float), what, " (", on,
                  "): values claims ", nval, ", only ", r.left(), " bytes are left");
    const auto bytes = r.get_bytes(nval * sizeof(float), "values");
    r.finish();
    if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(float) == 0) {
      q.values = {reinterpret_cast<const float*>(bytes.data()), static_cast<size_t>(nval)};
    } else {
      q.values_copy.resize(nval);
      if (nval > 0) std::memcpy(q.values_copy.data(), bytes.data(), bytes.size());
      q.values = q.values_copy;
    }

    const bool rows = h.op == Op::kPushRows || h.op == Op::kPullRows;
    DT_ENFORCE_AS(ProtocolError, rows || nseg == 0, what, " (", on, "): carries ", nseg,
                  " segments");
    uint64_t in_segments = 0;
    for (const auto& s : q.segments) {
      DT_ENFORCE_AS(ProtocolError, s.begin + s.size >= s.begin, what, " (", on, "): segment [",
                    s.begin, ", +", s.size, ") overflows");
      in_segments += s.size;  // <= nseg * 2^64 cannot wrap in practice: checked below
      DT_ENFORCE_AS(ProtocolError, in_segments >= s.size, what, " (", on,
                    "): segment sizes overflow");
    }
    uint64_t want_values = 0;
    switch (h.op) {
      case Op::kPush:
      case Op::kAssign:
      case Op::kAccumulate:
        want_values = h.keys.size();
        break;
      case Op::kPushRows:
        want_values = in_segments;
        break;
      default:
        break;
    }
    DT_ENFORCE_AS(ProtocolError, nval == want_values, what, " (", on, "): carries ", nval,
                  " values, expected ", want_values);
    const bool needs_a = h.op == Op::kAssign || h.op == Op::kAccumulate || h.op == Op::kRead ||
                         h.op == Op::kDot || h.op == Op::kAxpy || h.op == Op::kScale ||
                         h.op == Op::kCopy;
    const bool needs_b = h.op == Op::kDot || h.op == Op::kAxpy || h.op == Op::kCopy;
    DT_ENFORCE_AS(ProtocolError, !needs_a || !h.a.empty(), what, " (", on,
                  "): vector name a is empty");
    DT_ENFORCE_AS(ProtocolError, !needs_b || !h.b.empty(), what, " (", on,
                  "): vector name b is empty");
    DT_ENFORCE_AS(ProtocolError, std::isfinite(h.alpha), what, " (", on, "): alpha is not finite");
    return q;
  });
}

size_t reply_size(const ReplyHead& head, size_t values) {
  return encode_reply_head(head, values).size() + values * sizeof(float);
}

void encode_reply(std::span<std::byte> out, const ReplyHead& head, std::span<const float> values) {
  const auto h = encode_reply_head(head, values.size());
  DT_ENFORCE(out.size() == h.size() + values.size_bytes(), "ps reply: buffer of ", out.size(),
             " bytes for a frame of ", h.size() + values.size_bytes());
  std::memcpy(out.data(), h.data(), h.size());
  if (!values.empty()) std::memcpy(out.data() + h.size(), values.data(), values.size_bytes());
}

std::vector<std::byte> encode_reply(const ReplyHead& head, std::span<const float> values) {
  std::vector<std::byte> out(reply_size(head, values.size()));
  encode_reply(out, head, values);
  return out;
}

Reply decode_reply(std::span<const std::byte> frame) {
  return protocol([&] {
    const char* what = "ps reply";
    ByteReader r(frame, what);
    r.expect(kReplyMagic, "magic");
    const auto version = r.get<uint8_t>("version");
    DT_ENFORCE_AS(ProtocolError, version == kVersion, what, ": version is ", int(version),
                  ", expected ", int(kVersion));
    const auto op = r.get<uint8_t>("op");
    DT_ENFORCE_AS(ProtocolError, op >= 1 && op <= kMaxOp, what, ": op is ", int(op));
    const auto status = r.get<uint8_t>("status");
    DT_ENFORCE_AS(ProtocolError, status <= 3, what, ": status is ", int(status));
    DT_ENFORCE_AS(ProtocolError, r.get<uint8_t>("reserved") == 0, what, ": reserved byte is not 0");
    Reply p;
    ReplyHead& h = p.head;
    h.op = static_cast<Op>(op);
    h.status = static_cast<Status>(status);
    h.id = r.get<uint64_t>("id");
    h.clock = r.get<int64_t>("clock");
    h.scalar = r.get<double>("scalar");
    h.range.begin = r.get<uint64_t>("begin");
    h.range.end = r.get<uint64_t>("end");
    h.length = r.get<uint64_t>("length");
    h.shard = r.get<int32_t>("shard");
    h.shards = r.get<int32_t>("shards");
    h.message = r.get_string("message");
    DT_ENFORCE_AS(ProtocolError, h.message.size() <= kMaxMessage, what, ": message is ",
                  h.message.size(), " bytes long");
    const auto blob = r.get_bytes(r.get<uint64_t>("blob length"), "blob");
    h.blob.assign(blob.begin(), blob.end());
    p.value_count = r.get<uint64_t>("values");
    skip_pad8(r, what);
    DT_ENFORCE_AS(ProtocolError, p.value_count <= r.left() / sizeof(float), what,
                  ": values claims ", p.value_count, ", only ", r.left(), " bytes are left");
    p.values = r.get_bytes(p.value_count * sizeof(float), "values");
    r.finish();
    return p;
  });
}

std::vector<std::byte> encode_stats(const ServerStats& s) {
  ByteWriter w;
  w.put(s.updates).put(s.pulls).put(s.bytes_received).put(s.bytes_sent);
  w.put_vector(s.staleness_histogram).put(s.max_staleness);
  w.put(static_cast<uint64_t>(s.clocks.size()));
  for (const auto& [worker, clock] : s.clocks) w.put(int32_t(worker)).put(clock);
  w.put(static_cast<uint64_t>(s.states.size()));
  for (const auto& [worker, state] : s.states) {
    w.put(int32_t(worker)).put_string(std::string_view(state).substr(0, kMaxStateName));
  }
  w.put(static_cast<uint64_t>(s.pushed.size()));
  for (const auto& [worker, pushed] : s.pushed) w.put(int32_t(worker)).put(pushed);
  return w.take();
}

ServerStats decode_stats(std::span<const std::byte> blob) {
  return protocol([&] {
    const char* what = "ps stats";
    ByteReader r(blob, what);
    ServerStats s;
    s.updates = r.get<uint64_t>("updates");
    s.pulls = r.get<uint64_t>("pulls");
    s.bytes_received = r.get<uint64_t>("bytes_received");
    s.bytes_sent = r.get<uint64_t>("bytes_sent");
    s.staleness_histogram = r.get_vector<uint64_t>("staleness_histogram");
    s.max_staleness = r.get<int64_t>("max_staleness");
    const auto nclocks = r.get<uint64_t>("clocks");
    DT_ENFORCE_AS(ProtocolError, nclocks <= r.left() / 12, what, ": clocks claims ", nclocks,
                  " entries, only ", r.left(), " bytes are left");
    for (uint64_t i = 0; i < nclocks; ++i) {
      const auto worker = r.get<int32_t>("clock worker");
      s.clocks[worker] = r.get<int64_t>("clock");
    }
    const auto nstates = r.get<uint64_t>("states");
    DT_ENFORCE_AS(ProtocolError, nstates <= r.left() / 12, what, ": states claims ", nstates,
                  " entries, only ", r.left(), " bytes are left");
    for (uint64_t i = 0; i < nstates; ++i) {
      const auto worker = r.get<int32_t>("state worker");
      auto state = r.get_string("state");
      DT_ENFORCE_AS(ProtocolError, state.size() <= kMaxStateName, what, ": state of worker ",
                    worker, " is ", state.size(), " bytes long");
      s.states[worker] = std::move(state);
    }
    const auto npushed = r.get<uint64_t>("pushed");
    DT_ENFORCE_AS(ProtocolError, npushed <= r.left() / 12, what, ": pushed claims ", npushed,
                  " entries, only ", r.left(), " bytes are left");
    for (uint64_t i = 0; i < npushed; ++i) {
      const auto worker = r.get<int32_t>("pushed worker");
      s.pushed[worker] = r.get<int64_t>("pushed");
    }
    r.finish();
    return s;
  });
}

}  // namespace dtrain::ps::wire
