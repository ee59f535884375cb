// Regression tests for what fuzzing the decoders of peer and file bytes found (tests/fuzz/), and
// the decoders factored out for it: each input here crashed, read out of bounds, hit undefined
// behaviour or allocated without bound before its fix.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "comm/group_wire.h"
#include "comm/session.h"
#include "dtrain/comm/group.h"
#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/data/idx.h"
#include "dtrain/reduce/exdyna.h"
#include "dtrain/reduce/exdyna_wire.h"
#include "report.h"
#include "sparse/omnireduce_internal.h"

namespace dtrain {
namespace {

using comm::internal::ControlMsg;

std::span<const std::byte> bytes_of(const ControlMsg& m) {
  return std::as_bytes(std::span(&m, 1));
}

// --- comm/: control messages and frame headers -------------------------------------------------

TEST(ControlDecoder, PongCountOutsideTheArrayIsRefused) {
  // Group::probe built a vector from waiting_on[0 .. count) with count straight off the wire: a
  // peer's count of 1000 read 4 KB past a 512-byte message.
  ControlMsg pong;
  pong.type = ControlMsg::kPong;
  for (int32_t count :
       {comm::internal::kMaxWaitingOn + 1, 1000, -1, std::numeric_limits<int32_t>::min()}) {
    pong.count = count;
    EXPECT_FALSE(comm::internal::decode_control(bytes_of(pong), 4)) << count;
  }
  pong.count = 2;
  pong.waiting_on[0] = 1;
  pong.waiting_on[1] = 3;
  auto ok = comm::internal::decode_control(bytes_of(pong), 4);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->count, 2);
  pong.waiting_on[1] = 4;  // not a rank of a group of 4: probing it would index past the pairs
  EXPECT_FALSE(comm::internal::decode_control(bytes_of(pong), 4));
}

TEST(ControlDecoder, FailureNoticeIsMadeSafe) {
  ControlMsg notice;
  notice.type = ControlMsg::kFailure;
  notice.kind = 99;
  notice.culprit = 7;
  std::memset(notice.message, 'x', sizeof(notice.message));  // no terminating NUL
  auto m = comm::internal::decode_control(bytes_of(notice), 4);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, static_cast<int32_t>(comm::Group::FailKind::kProtocol));
  EXPECT_EQ(m->culprit, -1);
  EXPECT_EQ(std::strlen(m->message), sizeof(m->message) - 1);
  notice.type = 12345;
  EXPECT_FALSE(comm::internal::decode_control(bytes_of(notice), 4));
  EXPECT_FALSE(comm::internal::decode_control(bytes_of(notice).first(100), 4));
}

TEST(FrameDecoder, ChecksMagicLengthAndSize) {
  using comm::internal::FrameHeader;
  FrameHeader h{comm::internal::kFrameMagic, 0, 100};
  EXPECT_EQ(comm::internal::decode_frame_header(std::as_bytes(std::span(&h, 1)), 2).length, 100u);
  h.length = comm::kDefaultMaxFrameBytes + 1;
  EXPECT_THROW(comm::internal::decode_frame_header(std::as_bytes(std::span(&h, 1)), 2),
               ProtocolError);
  // A length over the group's limit is named with the peer and both sizes.
  h.length = 101;
  try {
    comm::internal::decode_frame_header(std::as_bytes(std::span(&h, 1)), 2, 100);
    FAIL();
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2 announced a frame of 101 bytes, over the limit "
                                         "of 100 bytes"),
              std::string::npos)
        << e.what();
  }
  h = {0x12345678, 0, 1};
  try {
    comm::internal::decode_frame_header(std::as_bytes(std::span(&h, 1)), 2);
    FAIL();
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("malformed frame header from rank 2"), std::string::npos);
  }
  EXPECT_THROW(comm::internal::decode_frame_header(std::as_bytes(std::span(&h, 1)).first(8), 2),
               ProtocolError);
}

// --- comm/: rendezvous store records -----------------------------------------------------------

TEST(RendezvousRecords, NumbersOutsideIntAreRefusedNotWrapped) {
  // rank=4294967296 became rank 0 through static_cast<int>.
  auto record = comm::internal::parse_record("rank=4294967296\nsize=2\ntoken=t\n");
  EXPECT_FALSE(comm::internal::member_of(record));
  record = comm::internal::parse_record("rank=1\nsize=8589934594\ntoken=t\n");
  EXPECT_FALSE(comm::internal::member_of(record));
  record = comm::internal::parse_record("rank=1\nsize=2\ntoken=t\n");
  ASSERT_TRUE(comm::internal::member_of(record));
  EXPECT_EQ(comm::internal::member_of(record)->rank, 1);
  EXPECT_EQ(comm::internal::roster_culprit(comm::internal::parse_record("culprit=4294967297"), 4),
            -1);
  EXPECT_EQ(comm::internal::roster_culprit(comm::internal::parse_record("culprit=3"), 4), 3);
}

TEST(RendezvousRecords, SessionAgesSaturate) {
  // now - created_ms and age - timeout_ms overflowed (undefined; UBSan) for extreme values.
  for (const char* text : {"created_ms=-9223372036854775808\ntimeout_ms=9223372036854775807\n",
                           "created_ms=9223372036854775807\ntimeout_ms=-9223372036854775808\n"}) {
    const std::string s =
        comm::internal::describe_session(comm::internal::parse_record(text), "it");
    EXPECT_NE(s.find("opened it"), std::string::npos) << s;
  }
}

// --- reduce/: ExDyna ----------------------------------------------------------------------------

std::shared_ptr<comm::Group> solo() {
  comm::GroupOptions o;
  o.rank = 0;
  o.size = 1;
  o.run_id = "test_decoders";
  return comm::Group::connect(o);
}

TEST(ExDynaState, BucketSizeBeyondTheFileIsRefusedBeforeAllocating) {
  // A 72-byte state claiming a bucket of 2^40 floats in 2^32 - 1 blocks of 32 sized the
  // partition tables (2 x 16 GiB) before the residual's absence was noticed.
  ByteWriter w;
  w.put<uint32_t>(0x45584459).put<uint32_t>(3).put<uint32_t>(1).put<uint64_t>(1);
  w.put<uint64_t>(uint64_t{1} << 40).put<uint64_t>(32).put<uint32_t>(0).put<uint64_t>(0);
  w.put<uint64_t>(0).put<uint64_t>(0xffffffffull);
  auto group = solo();
  reduce::ExDynaReducer reducer(*group, reduce::ExDynaOptions{});
  const auto start = std::chrono::steady_clock::now();
  try {
    reducer.load_state(w.take());
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("claims 1099511627776 elements"), std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(ExDynaWire, CountsAndUnionAreChecked) {
  const std::vector<int64_t> counts = {3, 0, 5, 11};
  EXPECT_NO_THROW(reduce::exdyna::check_level_counts(counts, 2, 11));
  EXPECT_THROW(reduce::exdyna::check_level_counts(counts, 2, 10), ProtocolError);
  EXPECT_THROW(reduce::exdyna::check_level_counts(std::vector<int64_t>{-1, 0}, 1, 10),
               ProtocolError);
  const reduce::exdyna::Partitions parts(1000, 16, 2);
  const auto own0 = parts.runs(0).front().first, own1 = parts.runs(1).front().first;
  const std::vector<uint32_t> all = {static_cast<uint32_t>(own0), static_cast<uint32_t>(own1)};
  EXPECT_NO_THROW(reduce::exdyna::check_union<uint32_t>(all, std::vector<int64_t>{1, 1}, parts, 0));
  EXPECT_THROW(reduce::exdyna::check_union<uint32_t>(all, std::vector<int64_t>{1, 1}, parts, 1),
               ProtocolError);
  // Counts that do not add up to the union (or run past it) are refused, not followed.
  EXPECT_THROW(reduce::exdyna::check_union<uint32_t>(all, std::vector<int64_t>{1, 2}, parts, 0),
               ProtocolError);
  EXPECT_THROW(reduce::exdyna::check_union<uint32_t>(all, std::vector<int64_t>{1, 0}, parts, 0),
               ProtocolError);
  EXPECT_THROW(reduce::exdyna::check_union<uint32_t>(all, std::vector<int64_t>{-1, 3}, parts, 0),
               ProtocolError);
}

// --- sparse/: OmniReduce -------------------------------------------------------------------------

TEST(OmniReduceWire, BlockCountOfAnySizeDoesNotWrap) {
  // n + block - 1 wrapped for a dedicated aggregator given n near 2^64 by rank 0: 0 blocks.
  const uint64_t n = std::numeric_limits<uint64_t>::max();
  const sparse::detail::Layout l(n, 16, 4, 2, 1, 1, 1);
  EXPECT_EQ(l.blocks, n / 16 + 1);
  EXPECT_EQ(l.lanes, 1u);
}

TEST(OmniReduceWire, RequestAndReplyPointersAreChecked) {
  using namespace sparse::detail;
  const Layout l(1000, 10, 2, 2, 1, 0, 1);  // 100 blocks, 2 columns, stride 2
  std::vector<uint64_t> target(2, kEnd), ahead = {4, 7}, next(2);
  std::vector<uint64_t> msg = {0, 3};
  const WireParty who{5, 1, 0};
  decode_request(l, 0, 0, target, ahead, std::as_bytes(std::span(msg)), who, next);
  EXPECT_EQ(next, msg);
  msg = {1, 3};  // block 1 is column 1's, not column 0's
  try {
    decode_request(l, 0, 0, target, ahead, std::as_bytes(std::span(msg)), who, next);
    FAIL();
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 sent look-ahead 1 for column 0"),
              std::string::npos)
        << e.what();
  }
  msg = {0};  // a short message
  EXPECT_THROW(decode_request(l, 0, 0, target, ahead, std::as_bytes(std::span(msg)), who, next),
               ProtocolError);
  // Reply of round 1: targets {4, 7}, worker's look-aheads {6, 9}: next targets after them.
  target = {4, 7};
  ahead = {6, 9};
  std::vector<uint64_t> reply(2 + 2 * 10 / 2, 0);  // 2 pointers, 2 blocks of 10 floats
  reply[0] = 6;
  reply[1] = 9;
  decode_reply(l, 0, 1, target, ahead, std::as_bytes(std::span(reply)), who, next);
  EXPECT_EQ(next, (std::vector<uint64_t>{6, 9}));
  reply[0] = 8;  // past the worker's own look-ahead: a target is a minimum
  EXPECT_THROW(decode_reply(l, 0, 1, target, ahead, std::as_bytes(std::span(reply)), who, next),
               ProtocolError);
}

// --- data/: IDX
// ------------------------------------------------------------------------------------

TEST(IdxReader, ShortFileDeclaringMuchIsTruncatedError) {
  // 60000 x 28 x 28 bytes declared, 4 held: reported as truncated (the reader used to reserve
  // 64 MiB and zero 16 MiB for it first; it now grows with what the file holds).
  const auto path =
      std::filesystem::temp_directory_path() / ("test_decoders_idx_" + std::to_string(::getpid()));
  {
    std::ofstream out(path, std::ios::binary);
    const unsigned char header[] = {0, 0,  8, 3, 0, 0,  0xea, 0x60, 0, 0,
                                    0, 28, 0, 0, 0, 28, 1,    2,    3, 4};
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
  }
  try {
    data::read_idx(path.string());
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("expected 47040000 bytes of data, found 4"),
              std::string::npos)
        << e.what();
  }
  std::filesystem::remove(path);
}

// --- apps/dtrain: report -------------------------------------------------------------------------

TEST(ReportParser, EpochOutsideIntIsMalformedNotUndefined) {
  // static_cast<int>(1e300) is undefined behaviour (UBSan: float-cast-overflow).
  for (const char* epoch : {"1e300", "-1", "3000000000"}) {
    std::istringstream in(std::string("{\"kind\":\"epoch\",\"epoch\":") + epoch +
                          ",\"time_s\":1,\"test_accuracy\":0.5}\n");
    app::RunData run;
    EXPECT_THROW(app::parse_metrics(in, "m.jsonl", run), InvalidArgument) << epoch;
  }
  std::istringstream in("{\"kind\":\"epoch\",\"epoch\":2,\"time_s\":1,\"test_accuracy\":0.5}\n");
  app::RunData run;
  app::parse_metrics(in, "m.jsonl", run);
  ASSERT_EQ(run.epochs.size(), 1u);
  EXPECT_EQ(run.epochs[0].epoch, 2);
}

TEST(ReportParser, NumberBeyondDoubleIsMalformedJson) {
  // nlohmann's parser throws out_of_range (not parse_error) for 1e999: it escaped as a
  // non-dtrain exception (found by fuzz_metrics).
  std::istringstream in("{\"kind\":\"step\",\"time_s\":1e999,\"loss\":1}\n");
  app::RunData run;
  try {
    app::parse_metrics(in, "m.jsonl", run);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("m.jsonl:1: malformed JSON"), std::string::npos)
        << e.what();
  }
  std::istringstream config("{\"workers\":1e999}");
  app::RunSummary s;
  EXPECT_THROW(app::parse_config(config, "c.json", s), InvalidArgument);
}

TEST(ReportParser, WorkersOutsideIntAreRefused) {
  for (const char* workers : {"4294967297", "-4294967297", "18446744073709551615"}) {
    std::istringstream in(std::string("{\"workers\":") + workers + "}");
    app::RunSummary s;
    EXPECT_THROW(app::parse_config(in, "c.json", s), InvalidArgument) << workers;
  }
  std::istringstream in("{\"workers\":4,\"model\":\"mlp\"}");
  app::RunSummary s;
  app::parse_config(in, "c.json", s);
  EXPECT_EQ(s.workers, 4);
  EXPECT_EQ(s.model, "mlp");
}

}  // namespace
}  // namespace dtrain
