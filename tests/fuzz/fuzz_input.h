// A fuzz input read front to back: a few parameter bytes, then the bytes under test. Reading past
// the end yields zeros, so every input is valid for every target; tests/fuzz/make_corpus.cc
// writes seeds in the same layout (parameters first, with ByteWriter-style native integers).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <type_traits>

namespace dtrain::fuzz {

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  template <typename T>
  T take() {
    static_assert(std::is_trivially_copyable_v<T>);
    T v{};
    const size_t n = std::min(sizeof(T), size_ - at_);
    if (n > 0) std::memcpy(&v, data_ + at_, n);
    at_ += n;
    return v;
  }
  // The bytes not read yet.
  std::span<const std::byte> rest() const {
    return {reinterpret_cast<const std::byte*>(data_) + at_, size_ - at_};
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

// A finding the sanitizers cannot see: a decoder accepted something it promised to refuse.
inline void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace dtrain::fuzz
