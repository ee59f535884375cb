// The one serializer of the tree: plain-old-data values and arrays appended to a byte vector,
// and a bounds-checked reader that names what it was reading when the bytes run out. Used for
// reducer state in checkpoints and for small control messages. Native byte order: state is read
// back on the kind of machine that wrote it.
//
//   ByteWriter w;
//   w.put(kMagic).put(uint64_t(v.size())).put_array(std::span<const float>(v));
//   ByteReader r(bytes, "exdyna state");
//   r.expect(kMagic, "magic");
//   auto v = r.get_array<float>(r.get<uint64_t>("length"), "residual");
//   r.finish();  // throws unless every byte was read
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "dtrain/common/error.h"

namespace dtrain {

class ByteWriter {
 public:
  template <typename T>
  ByteWriter& put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return raw(&v, sizeof(T));
  }
  template <typename T>
  ByteWriter& put_array(std::span<const T> v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return raw(v.data(), v.size_bytes());
  }
  template <typename T>
  ByteWriter& put_vector(const std::vector<T>& v) {  // u64 length, then the elements
    put(static_cast<uint64_t>(v.size()));
    return put_array(std::span<const T>(v));
  }
  ByteWriter& put_string(std::string_view s) {  // u64 length, then the characters
    put(static_cast<uint64_t>(s.size()));
    return raw(s.data(), s.size());
  }
  ByteWriter& raw(const void* p, size_t n) {
    const size_t at = bytes_.size();
    bytes_.resize(at + n);
    if (n > 0) std::memcpy(bytes_.data() + at, p, n);
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  std::vector<std::byte> bytes_;
};

// Reads what a ByteWriter wrote. Every failure is an InvalidArgument that starts with `what`
// (e.g. "exdyna state" or "checkpoint run/checkpoint.pt: reducer state") and names the field.
class ByteReader {
 public:
  ByteReader(std::span<const std::byte> bytes, std::string what)
      : bytes_(bytes), what_(std::move(what)) {}

  template <typename T>
  T get(const char* field) {
    static_assert(std::is_trivially_copyable_v<T>);
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  // Reads a T and throws unless it equals `want` (magic numbers, versions).
  template <typename T>
  void expect(const T& want, const char* field) {
    const T got = get<T>(field);
    DT_ENFORCE(got == want, what_, ": ", field, " is ", got, ", expected ", want);
  }
  template <typename T>
  std::vector<T> get_array(uint64_t count, const char* field) {
    static_assert(std::is_trivially_copyable_v<T>);
    DT_ENFORCE(count <= left() / sizeof(T), what_, " is truncated: ", field, " claims ", count,
               " elements at byte ", at_, ", only ", left(), " bytes are left of ", bytes_.size());
    std::vector<T> v(count);
    if (count > 0) std::memcpy(v.data(), bytes_.data() + at_, count * sizeof(T));
    at_ += count * sizeof(T);
    return v;
  }
  template <typename T>
  std::vector<T> get_vector(const char* field) {
    return get_array<T>(get<uint64_t>(field), field);
  }
  std::string get_string(const char* field) {
    const auto n = get<uint64_t>(field);
    DT_ENFORCE(n <= left(), what_, " is truncated: ", field, " claims ", n, " characters at byte ",
               at_, ", only ", left(), " bytes are left");
    std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), n);
    at_ += n;
    return s;
  }
  // The next n bytes as a view (nested blobs).
  std::span<const std::byte> get_bytes(uint64_t n, const char* field) {
    need(n, field);
    auto s = bytes_.subspan(at_, n);
    at_ += n;
    return s;
  }
  std::span<const std::byte> rest() const { return bytes_.subspan(at_); }
  size_t position() const { return at_; }
  size_t left() const { return bytes_.size() - at_; }
  // Throws unless every byte was read (trailing bytes mean a format mismatch).
  void finish() const {
    DT_ENFORCE(at_ == bytes_.size(), what_, " has ", bytes_.size() - at_, " trailing bytes after ",
               at_, " of ", bytes_.size());
  }

 private:
  void need(uint64_t n, const char* field) const {
    DT_ENFORCE(n <= left(), what_, " is truncated at byte ", at_, " of ", bytes_.size(),
               " (reading ", field, ")");
  }

  std::span<const std::byte> bytes_;
  size_t at_ = 0;
  std::string what_;
};

}  // namespace dtrain
