// IDX reader. Works as follows:
//   1. The file is opened with zlib's gzopen, which inflates a gzip stream and passes any other
//      file through unchanged ("direct" mode); a name ending in ".gz" read in direct mode is
//      rejected, since it means the stream is mislabeled or its gzip header is damaged.
//   2. The magic number is 4 bytes: two zeros, the element type code, the number of dims. Then
//      come the dims, each a big-endian uint32, then the payload of prod(dims) elements.
//   3. The payload is read in chunks rather than allocated up front, so a damaged header that
//      declares terabytes fails as "truncated" after reading what the file holds, instead of
//      exhausting memory first. The chunks start small and double (up to 16 MiB), so what is
//      allocated stays within about twice what the file holds: a 12-byte file that declares
//      60000x28x28 costs 64 KiB, not 16 MiB zeroed and 64 MiB reserved.
//   4. After the payload the stream must be at its end; extra bytes mean the dims do not describe
//      the file (a wrong file, or a concatenation) and are an error rather than silently dropped.
// zlib reports a corrupt or cut-off gzip stream either as a failed gzread or as a "soft" error
// (Z_BUF_ERROR, unexpected end of file) on a read that returned short, so its error state is
// checked after every read.
#include "dtrain/data/idx.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

#include "dtrain/common/error.h"

namespace dtrain::data {

namespace {

constexpr size_t kFirstChunkBytes = size_t{64} << 10;  // payload read granularity: the first
constexpr size_t kChunkBytes = size_t{16} << 20;       // chunk, doubling up to this
constexpr unsigned kGzBufferBytes = 256u << 10;   // zlib's input buffer; its default is 8 KiB

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzHandle = std::unique_ptr<gzFile_s, GzCloser>;

bool ends_with_gz(const std::string& path) {
  return path.size() >= 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
}

// Throws if zlib has recorded an error on `file`, including the soft end-of-file one.
void check_gz(gzFile file, const std::string& path) {
  int errnum = Z_OK;
  const char* msg = gzerror(file, &errnum);
  if (errnum == Z_OK) return;
  if (errnum == Z_ERRNO) DT_THROW(IoError, "cannot read ", path, ": ", std::strerror(errno));
  DT_THROW(IoError, "corrupt gzip stream in ", path, ": ", msg ? msg : "unknown zlib error");
}

// Reads up to n bytes; fewer only at the end of the stream.
size_t read_bytes(gzFile file, const std::string& path, void* dst, size_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  size_t got = 0;
  while (got < n) {
    unsigned want = static_cast<unsigned>(std::min<size_t>(n - got, size_t{1} << 30));
    int r = gzread(file, out + got, want);
    if (r < 0) check_gz(file, path);
    if (r < 0) DT_THROW(IoError, "cannot read ", path);  // zlib failed without saying why
    got += static_cast<size_t>(r);
    if (r == 0) break;
  }
  check_gz(file, path);
  return got;
}

uint32_t load_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

bool known_type(uint8_t code) {
  constexpr std::array<uint8_t, 6> kCodes{0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E};
  return std::find(kCodes.begin(), kCodes.end(), code) != kCodes.end();
}

GzHandle open_idx(const std::string& path) {
  errno = 0;
  GzHandle file(gzopen(path.c_str(), "rb"));
  if (!file) {
    DT_THROW(IoError, "cannot open ", path, ": ", errno ? std::strerror(errno) : "out of memory");
  }
  gzbuffer(file.get(), kGzBufferBytes);
  // gzdirect() right after gzopen peeks at the header to decide between gzip and plain.
  if (gzdirect(file.get()) == 1 && ends_with_gz(path)) {
    check_gz(file.get(), path);
    DT_THROW(IoError, "corrupt gzip stream in ", path,
             ": the file does not start with a gzip header");
  }
  check_gz(file.get(), path);
  return file;
}

}  // namespace

size_t element_size(IdxType type) {
  switch (type) {
    case IdxType::kUByte:
    case IdxType::kSByte:
      return 1;
    case IdxType::kShort:
      return 2;
    case IdxType::kInt:
    case IdxType::kFloat:
      return 4;
    case IdxType::kDouble:
      return 8;
  }
  DT_THROW(InvalidArgument, "unknown IDX type code ", static_cast<int>(type));
}

const char* name(IdxType type) {
  switch (type) {
    case IdxType::kUByte:
      return "ubyte";
    case IdxType::kSByte:
      return "sbyte";
    case IdxType::kShort:
      return "short";
    case IdxType::kInt:
      return "int";
    case IdxType::kFloat:
      return "float";
    case IdxType::kDouble:
      return "double";
  }
  return "unknown";
}

size_t IdxArray::count() const {
  size_t n = 1;
  for (uint32_t d : dims) n *= d;
  return n;
}

IdxArray read_idx(const std::string& path) {
  GzHandle handle = open_idx(path);
  gzFile file = handle.get();

  std::array<uint8_t, 4> magic{};
  size_t got = read_bytes(file, path, magic.data(), magic.size());
  if (got < magic.size()) {
    DT_THROW(IoError, path, " is truncated: expected a 4-byte IDX magic number, found ", got,
             " bytes");
  }
  uint32_t magic_value = load_be32(magic.data());
  if (magic[0] != 0 || magic[1] != 0 || !known_type(magic[2]) || magic[3] < 1 || magic[3] > 4) {
    DT_THROW(IoError, path, " is not an IDX file: magic number ",
             fmt::format("{:#010x}", magic_value),
             " should be 0x0000TTNN with type TT in {08,09,0b,0c,0d,0e} and 1 <= dims NN <= 4");
  }

  IdxArray out;
  out.type = static_cast<IdxType>(magic[2]);
  std::array<uint8_t, 16> dim_bytes{};
  size_t ndims = magic[3];
  got = read_bytes(file, path, dim_bytes.data(), 4 * ndims);
  if (got < 4 * ndims) {
    DT_THROW(IoError, path, " is truncated: expected ", 4 * ndims, " bytes of dims, found ", got);
  }
  size_t expected = element_size(out.type);
  for (size_t i = 0; i < ndims; ++i) {
    out.dims.push_back(load_be32(dim_bytes.data() + 4 * i));
    if (__builtin_mul_overflow(expected, size_t{out.dims.back()}, &expected)) {
      DT_THROW(IoError, path, " declares dims too large to address");
    }
  }

  got = 0;
  for (size_t chunk = kFirstChunkBytes; got < expected; chunk = std::min(2 * chunk, kChunkBytes)) {
    size_t want = std::min(expected - got, chunk);
    out.data.resize(got + want);
    size_t n = read_bytes(file, path, out.data.data() + got, want);
    got += n;
    if (n < want) break;
  }
  out.data.resize(got);
  if (got < expected) {
    DT_THROW(IoError, path, " is truncated: expected ", expected, " bytes of data, found ", got);
  }

  std::array<uint8_t, 4096> rest{};
  size_t trailing = 0;
  while (size_t n = read_bytes(file, path, rest.data(), rest.size())) trailing += n;
  if (trailing > 0) {
    DT_THROW(IoError, path, " has ", trailing, " trailing bytes after the ", expected,
             "-byte payload its dims declare");
  }
  return out;
}

}  // namespace dtrain::data
