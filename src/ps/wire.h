// The parameter server's frames: one ZeroMQ message per request (worker -> shard) and one per
// reply (shard -> worker), written with the tree's one serializer (common/bytes.h).
//
// A frame works as follows. A fixed-shape head carries every field any operation needs (unused
// ones zero), so one decoder checks every kind the same way; the head is padded with zeros to a
// multiple of 8 bytes so the arrays after it start aligned in the received buffer (a multi-MB
// push is then applied where it lies, not copied). After the head come the arrays its counts
// announce:
//   request  u32 magic "DPSQ", u8 version, u8 op, u16 0, u64 id, i32 worker, i64 clock,
//            i64 pulled_clock, u64 begin, u64 end, f64 alpha, string a, string b,
//            u64 segments, u64 values, padding; then segments x (u64 begin, u64 size) and
//            values x f32
//   reply    u32 magic "DPSR", u8 version, u8 op, u8 status, u8 0, u64 id, i64 clock,
//            f64 scalar, u64 begin, u64 end, u64 length, i32 shard, i32 shards, string message,
//            u64 + bytes blob (stats), u64 values, padding; then values x f32
// The id sits at byte 8 of both, so a frame too damaged to decode still gets an error reply its
// sender can match. Decoding is bounds-checked: every count is checked against the bytes left
// before anything is allocated, and every failure is a ProtocolError naming the field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dtrain/ps/keys.h"
#include "dtrain/ps/server.h"

namespace dtrain::ps::wire {

inline constexpr uint32_t kRequestMagic = 0x51535044;  // "DPSQ" in little-endian bytes
inline constexpr uint32_t kReplyMagic = 0x52535044;    // "DPSR"
inline constexpr uint8_t kVersion = 1;
inline constexpr size_t kMaxName = 256;      // a named vector's name
inline constexpr size_t kMaxMessage = 4096;  // an error reply's text (longer ones are cut)

enum class Op : uint8_t {
  kHello = 1,
  kDone = 2,
  kHeartbeat = 3,
  kPush = 4,
  kPull = 5,
  kPushRows = 6,
  kPullRows = 7,
  kAssign = 8,
  kAccumulate = 9,
  kRead = 10,
  kDot = 11,
  kAxpy = 12,
  kScale = 13,
  kCopy = 14,
  kStats = 15,
  kShutdown = 16,
};
inline constexpr uint8_t kMaxOp = 16;
const char* op_name(Op op);

// What a reply says about its request.
enum class Status : uint8_t { kOk = 0, kProtocolError = 1, kInvalidArgument = 2, kError = 3 };

// Keys [begin, begin + size) of a row request.
struct Segment {
  uint64_t begin = 0;
  uint64_t size = 0;
};

// Bounds a request's clocks and worker id are checked against (observers have negative ids).
constexpr int64_t kMaxClock = int64_t{1} << 62;
constexpr int32_t kMinWorker = -(1 << 20);

struct RequestHead {
  Op op = Op::kHeartbeat;
  uint64_t id = 0;
  int32_t worker = 0;
  int64_t clock = 0;         // the worker's clock (push: before the push)
  int64_t pulled_clock = 0;  // push: the parameter clock its gradient was computed on
  Range keys;                // dense operations: absolute keys inside the shard's range
  double alpha = 0;          // axpy, scale
  std::string a, b;          // vector names: assign/accumulate/read/scale: a; dot/axpy/copy: a, b
};

struct Request {
  RequestHead head;
  std::vector<Segment> segments;  // push_rows, pull_rows
  // The values: a view into the frame when aligned there, else into values_copy.
  std::span<const float> values;
  std::vector<float> values_copy;

  Request() = default;
  Request(Request&&) = default;
  Request& operator=(Request&&) = default;
  Request(const Request&) = delete;  // `values` may point into values_copy
};

// The head alone (padding included), for a sender that writes the arrays after it itself.
std::vector<std::byte> encode_request_head(const RequestHead& head, uint64_t segments,
                                           uint64_t values);
// The whole frame's size, and the frame written into `out` (of exactly that size).
size_t request_size(const RequestHead& head, size_t segments, size_t values);
void encode_request(std::span<std::byte> out, const RequestHead& head,
                    std::span<const Segment> segments, std::span<const float> values);
std::vector<std::byte> encode_request(const RequestHead& head, std::span<const Segment> segments,
                                      std::span<const float> values);
// Checks everything the shard relies on that does not depend on its range: magic, version, op,
// counts against the frame, the values an op carries, names, finite alpha. ProtocolError else.
Request decode_request(std::span<const std::byte> frame);
// The id at byte 8 of a frame (0 if it is shorter), to address an error reply.
uint64_t peek_id(std::span<const std::byte> frame);

struct ReplyHead {
  Op op = Op::kHeartbeat;
  Status status = Status::kOk;
  uint64_t id = 0;
  int64_t clock = 0;    // hello: the clock to start from; pulls: the parameter clock
  double scalar = 0;    // dot: this shard's partial sum
  Range range;          // hello: the shard's keys
  uint64_t length = 0;  // hello: the whole vector's length
  int32_t shard = 0, shards = 0;
  std::string message;          // status != kOk: what went wrong
  std::vector<std::byte> blob;  // stats: encode_stats()
};

struct Reply {
  ReplyHead head;
  std::span<const std::byte> values;  // value_count floats, native order, maybe unaligned
  uint64_t value_count = 0;
};

std::vector<std::byte> encode_reply_head(const ReplyHead& head, uint64_t values);
size_t reply_size(const ReplyHead& head, size_t values);
void encode_reply(std::span<std::byte> out, const ReplyHead& head, std::span<const float> values);
std::vector<std::byte> encode_reply(const ReplyHead& head, std::span<const float> values);
Reply decode_reply(std::span<const std::byte> frame);

std::vector<std::byte> encode_stats(const ServerStats& stats);
ServerStats decode_stats(std::span<const std::byte> blob);

}  // namespace dtrain::ps::wire
