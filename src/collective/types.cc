#include "dtrain/collective/types.h"

#include <algorithm>

#include "dtrain/common/error.h"

namespace dtrain::collective {

size_t element_size(DataType t) {
  switch (t) {
    case DataType::kFloat16:
      return 2;
    case DataType::kFloat32:
    case DataType::kInt32:
      return 4;
    case DataType::kFloat64:
    case DataType::kInt64:
      return 8;
  }
  DT_THROW(InvalidArgument, "unknown data type ", static_cast<uint32_t>(t));
}

const char* name(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return "float32";
    case DataType::kFloat64:
      return "float64";
    case DataType::kInt32:
      return "int32";
    case DataType::kInt64:
      return "int64";
    case DataType::kFloat16:
      return "float16";
  }
  return "unknown";
}

const char* name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
  }
  return "unknown";
}

ReduceOp parse_reduce_op(const std::string& s) {
  for (auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax}) {
    if (s == name(op)) return op;
  }
  throw InvalidArgument("reduction '" + s + "' is not one of sum, avg, min, max");
}

DataType parse_data_type(const std::string& s) {
  for (auto t : {DataType::kFloat32, DataType::kFloat64, DataType::kInt32, DataType::kInt64,
                 DataType::kFloat16}) {
    if (s == name(t)) return t;
  }
  if (s == "float") return DataType::kFloat32;
  if (s == "double") return DataType::kFloat64;
  if (s == "f16" || s == "half") return DataType::kFloat16;
  throw InvalidArgument("data type '" + s +
                        "' is not one of float32, float64, int32, int64, float16 (f16)");
}

namespace {

// Plain loops over restrict pointers: g++ -O3 vectorizes them.
template <typename T>
void sum(void* dst, const void* src, size_t n) {
  T* __restrict d = static_cast<T*>(dst);
  const T* __restrict s = static_cast<const T*>(src);
  for (size_t i = 0; i < n; ++i) d[i] += s[i];
}
template <typename T>
void min(void* dst, const void* src, size_t n) {
  T* __restrict d = static_cast<T*>(dst);
  const T* __restrict s = static_cast<const T*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i] < d[i] ? s[i] : d[i];
}
template <typename T>
void max(void* dst, const void* src, size_t n) {
  T* __restrict d = static_cast<T*>(dst);
  const T* __restrict s = static_cast<const T*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i] > d[i] ? s[i] : d[i];
}

// Half precision: combine in float, round back to half. A float holds the exact sum of two halves
// to within one rounding, and float's 24 bits >= 2*11+2 make that double rounding innocuous, so
// sums are correctly rounded halves.
void sum_f16(void* dst, const void* src, size_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = float_to_half(half_to_float(d[i]) + half_to_float(s[i]));
}
void min_f16(void* dst, const void* src, size_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) {
    if (half_to_float(s[i]) < half_to_float(d[i])) d[i] = s[i];
  }
}
void max_f16(void* dst, const void* src, size_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) {
    if (half_to_float(s[i]) > half_to_float(d[i])) d[i] = s[i];
  }
}

ReduceFn pick_f16(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return &sum_f16;
    case ReduceOp::kMin:
      return &min_f16;
    case ReduceOp::kMax:
      return &max_f16;
  }
  DT_THROW(InvalidArgument, "unknown reduction ", static_cast<uint32_t>(op));
}

void scale_f16(void* data, size_t n, int divisor) {
  uint16_t* d = static_cast<uint16_t*>(data);
  const float f_divisor = static_cast<float>(divisor);
  for (size_t i = 0; i < n; ++i) d[i] = float_to_half(half_to_float(d[i]) / f_divisor);
}

template <typename T>
ReduceFn pick(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return &sum<T>;
    case ReduceOp::kMin:
      return &min<T>;
    case ReduceOp::kMax:
      return &max<T>;
  }
  DT_THROW(InvalidArgument, "unknown reduction ", static_cast<uint32_t>(op));
}

template <typename T>
void scale(void* data, size_t n, int divisor) {
  T* d = static_cast<T*>(data);
  // A true division, not a multiplication by 1/divisor (which differs in the last bit for
  // divisors that are not powers of two): kAvg is documented as the sum divided by N.
  const T t_divisor = static_cast<T>(divisor);
  for (size_t i = 0; i < n; ++i) d[i] /= t_divisor;
}

}  // namespace

ReduceFn reduce_fn(DataType t, ReduceOp op) {
  switch (t) {
    case DataType::kFloat32:
      return pick<float>(op);
    case DataType::kFloat64:
      return pick<double>(op);
    case DataType::kInt32:
      return pick<int32_t>(op);
    case DataType::kInt64:
      return pick<int64_t>(op);
    case DataType::kFloat16:
      return pick_f16(op);
  }
  DT_THROW(InvalidArgument, "unknown data type ", static_cast<uint32_t>(t));
}

void scale_down(void* data, size_t n, DataType t, int divisor) {
  switch (t) {
    case DataType::kFloat32:
      return scale<float>(data, n, divisor);
    case DataType::kFloat64:
      return scale<double>(data, n, divisor);
    case DataType::kInt32:
      return scale<int32_t>(data, n, divisor);
    case DataType::kInt64:
      return scale<int64_t>(data, n, divisor);
    case DataType::kFloat16:
      return scale_f16(data, n, divisor);
  }
}

}  // namespace dtrain::collective
