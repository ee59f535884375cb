// The one hash of the tree: 64-bit FNV-1a, for agreement checks (flags, layouts, call
// descriptors) and checksums. Not cryptographic; cheap and identical on every rank and build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

namespace dtrain {

class Fnv1a {
 public:
  Fnv1a& bytes(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ p[i]) * kPrime;
    return *this;
  }
  Fnv1a& str(std::string_view s) {
    bytes(s.data(), s.size());
    return value(static_cast<uint64_t>(s.size()));  // so ("ab","c") and ("a","bc") differ
  }
  template <typename T>
  Fnv1a& value(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return bytes(&v, sizeof(v));
  }
  uint64_t digest() const { return h_; }

 private:
  static constexpr uint64_t kPrime = 1099511628211ull;
  uint64_t h_ = 1469598103934665603ull;
};

inline uint64_t fnv1a(std::span<const std::byte> data) {
  return Fnv1a().bytes(data.data(), data.size()).digest();
}

}  // namespace dtrain
