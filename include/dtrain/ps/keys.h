// How the flat parameter vector is cut into the shards' key ranges, and row tables inside it.
//
// Keys are float offsets into one flat vector of `length` values (the model's parameters laid out
// as the torch bridge flattens them). Shard s of S holds the contiguous range [begin_s, end_s);
// ranges are balanced by bytes: every shard holds floor(length/S) or one more value, the larger
// ones first. A row table (an embedding) is a sub-range [offset, offset + rows*width) of the same
// vector, addressed by row ids; a row never needs to sit inside one shard (its values go to the
// shards that hold them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dtrain::ps {

// A half-open range of keys [begin, end).
struct Range {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
  bool operator==(const Range&) const = default;
};

// A row table inside the flat vector: row r is [offset + r*width, offset + (r+1)*width).
struct Table {
  uint64_t offset = 0;
  uint64_t rows = 0;
  uint64_t width = 0;
  Range row(uint64_t r) const { return {offset + r * width, offset + (r + 1) * width}; }
};

class KeyRanges {
 public:
  // Throws InvalidArgument unless shards >= 1.
  KeyRanges(uint64_t length, int shards);
  uint64_t length() const { return length_; }
  int shards() const { return static_cast<int>(ranges_.size()); }
  const Range& shard(int s) const { return ranges_.at(static_cast<size_t>(s)); }
  // The shard holding key k (k < length).
  int shard_of(uint64_t key) const;
  // The parts of `r` that each shard holds, in shard order; shards holding nothing are left out.
  struct Piece {
    int shard;
    Range keys;
  };
  std::vector<Piece> split(const Range& r) const;

 private:
  uint64_t length_;
  std::vector<Range> ranges_;
};

}  // namespace dtrain::ps
