// Reader for IDX files, the format MNIST and Fashion-MNIST ship in, plain or gzip-compressed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dtrain::data {

// The element type code, the third byte of an IDX magic number.
enum class IdxType : uint8_t {
  kUByte = 0x08,
  kSByte = 0x09,
  kShort = 0x0B,
  kInt = 0x0C,
  kFloat = 0x0D,
  kDouble = 0x0E,
};

// Bytes per element (1, 1, 2, 4, 4, 8); throws InvalidArgument for a code not listed above.
size_t element_size(IdxType type);
const char* name(IdxType type);

// An IDX file's contents. `data` holds the payload exactly as stored: for multi-byte types the
// elements are big-endian, as the format prescribes, and are not swapped here.
struct IdxArray {
  std::vector<uint32_t> dims;
  IdxType type = IdxType::kUByte;
  std::vector<uint8_t> data;

  // Product of dims (1 for no dims, though read_idx never returns those).
  size_t count() const;
};

// Reads `path`; a gzip stream is inflated whatever the name, and a name ending in ".gz" must hold
// one. Throws IoError naming the file when it cannot be read, its magic number is wrong (two zero
// bytes, a known type code, 1 to 4 dims), its payload is shorter than the dims declare, bytes
// follow the payload, or the gzip stream is corrupt.
IdxArray read_idx(const std::string& path);

}  // namespace dtrain::data
