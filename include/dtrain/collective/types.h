// Element types, reduction operators and the type-erased buffer views collectives take.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "dtrain/comm/group.h"

namespace dtrain::collective {

// kFloat16 is IEEE binary16 stored as uint16_t; reductions compute in float and round back to
// half (round to nearest even), so a sum of two halves is correctly rounded.
enum class DataType : uint32_t { kFloat32 = 1, kFloat64 = 2, kInt32 = 3, kInt64 = 4, kFloat16 = 5 };
enum class ReduceOp : uint32_t { kSum = 1, kAvg = 2, kMin = 3, kMax = 4 };

size_t element_size(DataType t);
const char* name(DataType t);
const char* name(ReduceOp op);
// Parses "sum", "avg", "min", "max"; throws InvalidArgument listing them.
ReduceOp parse_reduce_op(const std::string& s);
DataType parse_data_type(const std::string& s);

// IEEE binary16 <-> float. float_to_half rounds to nearest even; magnitudes from 65520 up become
// infinity, NaN stays NaN (quiet).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t float_to_half(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 (or inf): rounds to inf
  if (magnitude < 0x38800000u) {
    // Below the smallest normal half (2^-14): adding 0.5f makes the FPU round to a multiple of
    // 2^-24 (the subnormal half step); the low mantissa bits are then the half's mantissa.
    const float rounded = std::bit_cast<float>(magnitude) + 0.5f;
    return sign | static_cast<uint16_t>(std::bit_cast<uint32_t>(rounded) - 0x3f000000u);
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest
  // even; a carry out of the mantissa correctly bumps the exponent.
  const uint32_t round_bias = 0xfffu + ((magnitude >> 13) & 1u);
  return sign | static_cast<uint16_t>((magnitude - (112u << 23) + round_bias) >> 13);
}

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
  uint64_t tag = 0;         // 0: drawn from the group's counter
  comm::Millis timeout{0};  // 0: the group's default
  // Pipelining unit of ring algorithms. 0: chosen by size (ring.h) for the ring allreduce,
  // reduce-scatter and allgather; kDefaultSegmentBytes for broadcast.
  size_t segment_bytes = 0;
};

inline constexpr size_t kDefaultSegmentBytes = size_t{512} << 10;

}  // namespace dtrain::collective
