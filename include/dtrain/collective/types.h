// Element types, reduction operators and the type-erased buffer views collectives take.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::collective {

enum class DataType : uint32_t { kFloat32 = 1, kFloat64 = 2, kInt32 = 3, kInt64 = 4 };
enum class ReduceOp : uint32_t { kSum = 1, kAvg = 2, kMin = 3, kMax = 4 };

size_t element_size(DataType t);
const char* name(DataType t);
const char* name(ReduceOp op);
// Parses "sum", "avg", "min", "max"; throws InvalidArgument listing them.
ReduceOp parse_reduce_op(const std::string& s);
DataType parse_data_type(const std::string& s);

template <typename T>
constexpr DataType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DataType::kFloat32;
  else if constexpr (std::is_same_v<T, double>)
    return DataType::kFloat64;
  else if constexpr (std::is_same_v<T, int32_t>)
    return DataType::kInt32;
  else if constexpr (std::is_same_v<T, int64_t>)
    return DataType::kInt64;
  else
    static_assert(!sizeof(T), "unsupported element type");
}

// dst[i] = op(dst[i], src[i]) for n elements. kAvg accumulates like kSum (scaling is separate).
using ReduceFn = void (*)(void* dst, const void* src, size_t n);
ReduceFn reduce_fn(DataType t, ReduceOp op);
// data[i] /= divisor (integer types: truncating division), for kAvg.
void scale_down(void* data, size_t n, DataType t, int divisor);

// A typed, mutable view of elements.
struct View {
  void* data = nullptr;
  size_t count = 0;
  DataType dtype = DataType::kFloat32;

  View() = default;
  View(void* d, size_t n, DataType t) : data(d), count(n), dtype(t) {}
  template <typename T>
  View(std::span<T> s) : data(s.data()), count(s.size()), dtype(dtype_of<std::remove_cv_t<T>>()) {}
  template <typename T>
  View(std::vector<T>& v) : View(std::span<T>(v)) {}
  std::byte* bytes() const { return static_cast<std::byte*>(data); }
  size_t nbytes() const { return count * element_size(dtype); }
};

// A typed, read-only view; empty (data == nullptr) means "in place" where an op allows it.
struct ConstView {
  const void* data = nullptr;
  size_t count = 0;
  DataType dtype = DataType::kFloat32;

  ConstView() = default;
  ConstView(const void* d, size_t n, DataType t) : data(d), count(n), dtype(t) {}
  template <typename T>
  ConstView(std::span<T> s)
      : data(s.data()), count(s.size()), dtype(dtype_of<std::remove_cv_t<T>>()) {}
  template <typename T>
  ConstView(const std::vector<T>& v) : ConstView(std::span<const T>(v)) {}
  const std::byte* bytes() const { return static_cast<const std::byte*>(data); }
  size_t nbytes() const { return count * element_size(dtype); }
};

// What every collective's options carry.
struct CommonOptions {
  explicit CommonOptions(comm::Group& g) : group(&g) {}
  comm::Group* group;
  uint64_t tag = 0;          // 0: drawn from the group's counter
  comm::Millis timeout{0};   // 0: the group's default
  size_t segment_bytes = 0;  // 0: kDefaultSegmentBytes; pipelining unit of ring algorithms
};

inline constexpr size_t kDefaultSegmentBytes = size_t{512} << 10;

}  // namespace dtrain::collective
