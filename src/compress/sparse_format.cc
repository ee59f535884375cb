// Index+value payloads (topk, threshold). Indices and values are stored as two arrays rather than
// interleaved pairs so both are 4-byte aligned runs; the count is implied by the payload size,
// which the transport already carries. Indices from a peer are checked (ascending, in range)
// before any write, so a corrupt payload is a ProtocolError rather than a stray store.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "dtrain/common/error.h"
#include "internal.h"

namespace dtrain::compress::detail {

size_t kept_count(double density, size_t n) {
  if (n == 0) return 0;
  const auto k = static_cast<size_t>(std::llround(density * static_cast<double>(n)));
  return std::clamp<size_t>(k, 1, n);
}

Payload encode_sparse(std::span<const float> in, std::span<const uint32_t> indices) {
  const size_t k = indices.size();
  Payload p;
  p.count = in.size();
  p.bytes.resize(k * (sizeof(uint32_t) + sizeof(float)));
  if (k == 0) return p;
  std::memcpy(p.bytes.data(), indices.data(), k * sizeof(uint32_t));
  std::byte* values = p.bytes.data() + k * sizeof(uint32_t);
  for (size_t j = 0; j < k; ++j) std::memcpy(values + j * sizeof(float), &in[indices[j]], 4);
  return p;
}

void sparse_indices(const Payload& p, std::vector<uint32_t>& out) {
  const size_t k = p.bytes.size() / (sizeof(uint32_t) + sizeof(float));
  out.resize(k);
  if (k > 0) std::memcpy(out.data(), p.bytes.data(), k * sizeof(uint32_t));
}

void decode_sparse(const Payload& p, std::span<float> out, bool accumulate, const char* compressor,
                   int sender) {
  check_output(p, out, compressor);
  constexpr size_t kPair = sizeof(uint32_t) + sizeof(float);
  DT_ENFORCE_AS(ProtocolError, p.bytes.size() % kPair == 0, compressor, ": payload from rank ",
                sender, " has ", p.bytes.size(), " bytes, not a multiple of ", kPair);
  const size_t k = p.bytes.size() / kPair;
  std::vector<uint32_t> indices(k);
  if (k > 0) std::memcpy(indices.data(), p.bytes.data(), k * sizeof(uint32_t));
  for (size_t j = 0; j < k; ++j) {
    DT_ENFORCE_AS(ProtocolError, indices[j] < out.size() && (j == 0 || indices[j] > indices[j - 1]),
                  compressor, ": payload from rank ", sender, " has index ", indices[j],
                  " at position ", j, " (out of range of ", out.size(),
                  " elements or not ascending)");
  }
  if (!accumulate) std::fill(out.begin(), out.end(), 0.0f);
  const std::byte* values = p.bytes.data() + k * sizeof(uint32_t);
  for (size_t j = 0; j < k; ++j) {
    float v;
    std::memcpy(&v, values + j * sizeof(float), sizeof(float));
    out[indices[j]] += v;
  }
}

}  // namespace dtrain::compress::detail
