// The file envelope: round trips, and every damage named (common/envelope.h).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "dtrain/common/envelope.h"
#include "dtrain/common/error.h"

namespace dtrain {
namespace {

std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// The IoError open() throws for `file`, as text ("" if it did not throw).
std::string open_error(std::span<const std::byte> file, std::string_view kind = "checkpoint") {
  try {
    envelope::open(file, kind, "run/ckpt.pt");
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Envelope, RoundTrips) {
  for (const std::string body : {std::string(), std::string("x"), std::string(1000, '\0'),
                                 std::string("some checkpoint bytes\n\r\x1a")}) {
    const auto sealed = envelope::seal(bytes_of(body), "checkpoint");
    EXPECT_TRUE(envelope::is_sealed(sealed));
    const auto opened = envelope::open(sealed, "checkpoint", "f");
    ASSERT_EQ(opened.size(), body.size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(opened.data()), opened.size()), body);
    // The body is a view into the file, right after the header.
    if (!body.empty()) EXPECT_EQ(opened.data() + opened.size(), sealed.data() + sealed.size());
  }
}

TEST(Envelope, HeaderLayout) {
  const auto sealed = envelope::seal(bytes_of("abc"), "ckpt");
  // magic 8, version 4, kind length 8 + 4, body length 8, checksum 8, body 3.
  ASSERT_EQ(sealed.size(), 8u + 4 + 8 + 4 + 8 + 8 + 3);
  EXPECT_EQ(static_cast<unsigned char>(sealed[0]), 0x89);
  EXPECT_EQ(std::memcmp(sealed.data() + 1, "DTR\r\n\x1a\n", 7), 0);
  uint32_t version;
  std::memcpy(&version, sealed.data() + 8, 4);
  EXPECT_EQ(version, envelope::kVersion);
}

TEST(Envelope, SealRejectsBadKinds) {
  EXPECT_THROW(envelope::seal({}, ""), InvalidArgument);
  EXPECT_THROW(envelope::seal({}, std::string(envelope::kMaxKindBytes + 1, 'k')), InvalidArgument);
  EXPECT_NO_THROW(envelope::seal({}, std::string(envelope::kMaxKindBytes, 'k')));
}

TEST(Envelope, NotADtrainFile) {
  for (const std::string text : {std::string(), std::string("PK\x03\x04 a zip archive"),
                                 std::string("\x89PNG\r\n\x1a\n....")}) {
    const auto file = bytes_of(text);
    const std::string e = open_error(file);
    EXPECT_TRUE(has(e, "run/ckpt.pt is not a dtrain file")) << e;
    EXPECT_FALSE(envelope::is_sealed(file));
  }
  EXPECT_TRUE(has(open_error({}), "empty file")) << open_error({});
}

TEST(Envelope, WrongKind) {
  const auto sealed = envelope::seal(bytes_of("abc"), "metrics");
  const std::string e = open_error(sealed, "checkpoint");
  EXPECT_TRUE(has(e, "run/ckpt.pt is a dtrain 'metrics' file, expected a 'checkpoint' file")) << e;
}

TEST(Envelope, WrongVersion) {
  auto sealed = envelope::seal(bytes_of("abc"), "checkpoint");
  const uint32_t future = envelope::kVersion + 1;
  std::memcpy(sealed.data() + 8, &future, 4);
  const std::string e = open_error(sealed);
  EXPECT_TRUE(has(e, "format version 2; this build reads 1")) << e;
}

TEST(Envelope, TruncatedBodyNamesBothSizes) {
  const std::string body(100, 'b');
  const auto sealed = envelope::seal(bytes_of(body), "checkpoint");
  const auto cut = std::span<const std::byte>(sealed).first(sealed.size() - 40);
  const std::string e = open_error(cut);
  EXPECT_TRUE(has(e, "run/ckpt.pt is truncated: header says 100 bytes, file has 60")) << e;
}

TEST(Envelope, EveryCutOfTheHeaderIsNamed) {
  const auto sealed = envelope::seal(bytes_of("body"), "checkpoint");
  for (size_t n = 0; n < sealed.size(); ++n) {
    const std::string e = open_error(std::span<const std::byte>(sealed).first(n));
    EXPECT_TRUE(has(e, "run/ckpt.pt")) << n << ": " << e;
    EXPECT_TRUE(n < 8 ? has(e, "not a dtrain file") : has(e, "truncated")) << n << ": " << e;
  }
}

TEST(Envelope, TrailingBytes) {
  auto sealed = envelope::seal(bytes_of("abc"), "checkpoint");
  sealed.push_back(std::byte{0});
  const std::string e = open_error(sealed);
  EXPECT_TRUE(has(e, "1 trailing bytes after its 3-byte body")) << e;
}

TEST(Envelope, ChecksumMismatchOnAnyFlippedBodyBit) {
  const auto sealed = envelope::seal(bytes_of("the body of a checkpoint"), "checkpoint");
  const size_t body_at = sealed.size() - 24;
  for (size_t i = body_at; i < sealed.size(); ++i) {
    auto damaged = sealed;
    damaged[i] ^= std::byte{0x04};
    const std::string e = open_error(damaged);
    EXPECT_TRUE(has(e, "run/ckpt.pt is damaged: checksum mismatch")) << i << ": " << e;
  }
}

TEST(Envelope, DamagedHeaderFieldsAreCaught) {
  const auto sealed = envelope::seal(bytes_of("abcdefgh"), "checkpoint");
  // Every single-byte change anywhere in the file is an error, never a wrong body.
  for (size_t i = 0; i < sealed.size(); ++i) {
    auto damaged = sealed;
    damaged[i] ^= std::byte{0x01};
    EXPECT_FALSE(open_error(damaged).empty()) << "byte " << i;
  }
  // A huge kind length is refused before anything is read for it.
  auto big_kind = sealed;
  const uint64_t huge = uint64_t{1} << 62;
  std::memcpy(big_kind.data() + 12, &huge, 8);
  EXPECT_TRUE(has(open_error(big_kind), "kind tag claims")) << open_error(big_kind);
  // A huge body length reads as truncated, with no allocation.
  auto big_body = sealed;
  std::memcpy(big_body.data() + 8 + 4 + 8 + 10, &huge, 8);
  EXPECT_TRUE(has(open_error(big_body), "truncated: header says 4611686018427387904 bytes"))
      << open_error(big_body);
}

}  // namespace
}  // namespace dtrain
