// The tree's pseudo-random numbers: SplitMix64 and keyed streams for shared randomness (every
// rank draws the same numbers for the same key without communicating).
//
// Every rank must draw identical numbers for the same key (seed, bucket, step, stream, worker)
// without communicating, on any standard library: so no std::*_distribution (their algorithms
// are implementation-defined). The key parts are folded through the SplitMix64 finalizer into a
// state, and the stream is SplitMix64 from there; bounded integers use Lemire's multiply-shift
// with rejection, so they are exactly uniform.
#pragma once

#include <bit>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace dtrain {

// SplitMix64's finalizer: every input bit moves every output bit.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One SplitMix64 step from state x: a well-mixed hash of a 64-bit integer.
inline uint64_t splitmix64(uint64_t x) { return mix64(x + 0x9e3779b97f4a7c15ull); }

class KeyedRng {
 public:
  explicit KeyedRng(std::initializer_list<uint64_t> key) {
    for (uint64_t part : key) state_ = mix64(state_ ^ mix64(part + 0x9e3779b97f4a7c15ull));
  }

  uint64_t next() { return mix64(state_ += 0x9e3779b97f4a7c15ull); }

  // Uniform in [0, bound), bound > 0.
  uint64_t below(uint64_t bound) {
    __uint128_t m = static_cast<__uint128_t>(next()) * bound;
    auto low = static_cast<uint64_t>(m);
    if (low < bound) {
      const uint64_t floor = (0 - bound) % bound;
      while (low < floor) {
        m = static_cast<__uint128_t>(next()) * bound;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

  // Uniform on the open interval (-1/2, 1/2), symmetric about 0: the 2^23 midpoints of a grid,
  // each computed exactly in float.
  float dither() { return (static_cast<float>(next() >> 41) + 0.5f) * 0x1p-23f - 0.5f; }

 private:
  uint64_t state_ = 0x6a09e667f3bcc908ull;
};

// k distinct indices of [0, n) (n < 2^32), in ascending order: Floyd's algorithm (k draws) with a
// bitmap for membership, read out in order. `taken` is scratch.
inline void sample_sorted(KeyedRng& rng, size_t n, size_t k, std::vector<uint64_t>& taken,
                          std::vector<uint32_t>& out) {
  taken.assign((n + 63) / 64, 0);
  auto mark = [&](uint64_t i) {
    const bool was = (taken[i / 64] >> (i % 64)) & 1;
    taken[i / 64] |= uint64_t{1} << (i % 64);
    return !was;
  };
  for (uint64_t j = n - k; j < n; ++j) {
    if (!mark(rng.below(j + 1))) mark(j);
  }
  out.clear();
  for (size_t w = 0; w < taken.size(); ++w) {
    for (uint64_t bits = taken[w]; bits != 0; bits &= bits - 1) {
      out.push_back(static_cast<uint32_t>(w * 64 + std::countr_zero(bits)));
    }
  }
}

}  // namespace dtrain
