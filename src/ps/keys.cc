// Balanced key ranges: shard s of S holds floor(n/S) keys, the first n%S shards one more.
#include "dtrain/ps/keys.h"

#include <algorithm>

#include "dtrain/common/error.h"

namespace dtrain::ps {

KeyRanges::KeyRanges(uint64_t length, int shards) : length_(length) {
  DT_ENFORCE(shards >= 1, "parameter server: ", shards, " shards (need at least 1)");
  const uint64_t s = static_cast<uint64_t>(shards);
  const uint64_t base = length / s;
  const uint64_t extra = length % s;
  ranges_.reserve(s);
  uint64_t at = 0;
  for (uint64_t i = 0; i < s; ++i) {
    const uint64_t n = base + (i < extra ? 1 : 0);
    ranges_.push_back({at, at + n});
    at += n;
  }
}

int KeyRanges::shard_of(uint64_t key) const {
  DT_ENFORCE(key < length_, "parameter server: key ", key, " is outside the vector of ", length_);
  const uint64_t s = ranges_.size();
  const uint64_t base = length_ / s;
  const uint64_t extra = length_ % s;
  const uint64_t big = extra * (base + 1);  // keys held by the larger shards
  if (key < big) return static_cast<int>(key / (base + 1));
  return static_cast<int>(extra + (key - big) / base);  // base > 0 here: key < length
}

std::vector<KeyRanges::Piece> KeyRanges::split(const Range& r) const {
  DT_ENFORCE(r.begin <= r.end && r.end <= length_, "parameter server: keys [", r.begin, ", ", r.end,
             ") are not a range inside the vector of ", length_);
  std::vector<Piece> pieces;
  if (r.empty()) return pieces;
  for (int s = shard_of(r.begin); s < shards(); ++s) {
    const Range& own = ranges_[static_cast<size_t>(s)];
    if (own.begin >= r.end) break;
    const Range part{std::max(own.begin, r.begin), std::min(own.end, r.end)};
    if (!part.empty()) pieces.push_back({s, part});
  }
  return pieces;
}

}  // namespace dtrain::ps
