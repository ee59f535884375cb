// The file envelope (see dtrain/common/envelope.h).
//
// Works as follows. seal() writes the header with a ByteWriter and appends the body. open() reads
// the header back with a ByteReader, checking before each read that the bytes are there, so a
// short file is reported as what it is (not a dtrain file, or a header cut off) rather than as
// the reader's generic "truncated" error; every failure is an IoError that names the file. The
// body length is compared with what the file holds before the checksum is computed, so a cut-off
// file says "truncated: header says N bytes, file has M" instead of a checksum mismatch, and a
// length read from a damaged header never allocates: the body is a view into the file.
// The checksum covers the kind tag and the length as well as the body, so a header whose length
// was altered together with the file's size still fails.
#include "dtrain/common/envelope.h"

#include <array>
#include <cstdio>

#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/common/hash.h"

namespace dtrain::envelope {
namespace {

constexpr std::array<unsigned char, 8> kMagic = {0x89, 'D', 'T', 'R', '\r', '\n', 0x1a, '\n'};

uint64_t checksum(std::string_view kind, uint64_t length, std::span<const std::byte> body) {
  return Fnv1a().str(kind).value(length).bytes(body.data(), body.size()).digest();
}

std::string hex(uint64_t v) {
  char out[24];
  std::snprintf(out, sizeof(out), "%016llx", static_cast<unsigned long long>(v));
  return out;
}

// The first bytes of a file, for "not a dtrain file" messages.
std::string first_bytes(std::span<const std::byte> file) {
  std::string out;
  for (size_t i = 0; i < file.size() && i < kMagic.size(); ++i) {
    char b[4];
    std::snprintf(b, sizeof(b), "%02x", static_cast<unsigned>(file[i]));
    if (i > 0) out += ' ';
    out += b;
  }
  return out.empty() ? "nothing (empty file)" : out;
}

// Printable form of a kind tag read from a file (it may hold anything).
std::string printable(std::string_view s) {
  std::string out;
  for (char c : s) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

}  // namespace

bool is_sealed(std::span<const std::byte> file) {
  if (file.size() < kMagic.size()) return false;
  for (size_t i = 0; i < kMagic.size(); ++i) {
    if (static_cast<unsigned char>(file[i]) != kMagic[i]) return false;
  }
  return true;
}

std::vector<std::byte> seal(std::span<const std::byte> body, std::string_view kind) {
  DT_ENFORCE(!kind.empty() && kind.size() <= kMaxKindBytes, "envelope: kind tag '", kind,
             "' must have 1 to ", kMaxKindBytes, " characters");
  const uint64_t length = body.size();
  ByteWriter w;
  w.raw(kMagic.data(), kMagic.size());
  w.put(kVersion);
  w.put_string(kind);
  w.put(length);
  w.put(checksum(kind, length, body));
  w.raw(body.data(), body.size());
  return w.take();
}

std::span<const std::byte> open(std::span<const std::byte> file, std::string_view kind,
                                const std::string& what) {
  if (!is_sealed(file)) {
    DT_THROW(IoError, what, " is not a dtrain file: it starts with ", first_bytes(file),
             ", not the dtrain header (written by another program, or before dtrain sealed its ",
             kind, " files?)");
  }
  ByteReader r(file, what);
  r.get_bytes(kMagic.size(), "magic");
  auto cut = [&](const char* field) {
    DT_THROW(IoError, what, " is truncated: its dtrain header is cut off at byte ", file.size(),
             " (reading the ", field, ")");
  };
  if (r.left() < sizeof(uint32_t)) cut("format version");
  const auto version = r.get<uint32_t>("format version");
  if (version != kVersion) {
    DT_THROW(IoError, what, " has dtrain file format version ", version, "; this build reads ",
             kVersion, " (written by another dtrain version?)");
  }
  if (r.left() < sizeof(uint64_t)) cut("kind tag");
  const auto kind_length = r.get<uint64_t>("kind length");
  if (kind_length > kMaxKindBytes) {
    DT_THROW(IoError, what, " has a damaged dtrain header: its kind tag claims ", kind_length,
             " characters (at most ", kMaxKindBytes, ")");
  }
  if (r.left() < kind_length) cut("kind tag");
  const auto tag_bytes = r.get_bytes(kind_length, "kind tag");
  const std::string_view tag(reinterpret_cast<const char*>(tag_bytes.data()), tag_bytes.size());
  if (tag != kind) {
    DT_THROW(IoError, what, " is a dtrain '", printable(tag), "' file, expected a '", kind,
             "' file");
  }
  if (r.left() < 2 * sizeof(uint64_t)) cut("body length and checksum");
  const auto length = r.get<uint64_t>("body length");
  const auto sum = r.get<uint64_t>("checksum");
  const uint64_t held = r.left();
  if (held < length) {
    DT_THROW(IoError, what, " is truncated: header says ", length, " bytes, file has ", held,
             " (of ", file.size(), " with the header)");
  }
  if (held > length) {
    DT_THROW(IoError, what, " has ", held - length, " trailing bytes after its ", length,
             "-byte body (header says ", length, " bytes, file has ", held, ")");
  }
  const auto body = r.rest();
  const uint64_t actual = checksum(tag, length, body);
  if (actual != sum) {
    DT_THROW(IoError, what, " is damaged: checksum mismatch (header says ", hex(sum),
             ", the body's is ", hex(actual), ")");
  }
  return body;
}

}  // namespace dtrain::envelope
