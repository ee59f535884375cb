// Error feedback: z = g + beta r, send compress(z), keep r_next = (1 - beta) r + (z - z_hat).
//
// z_hat is this rank's own payload decoded (with sender = its own worker, so QCS uses its own
// signs and dither), exactly what the other ranks will add for it. A stream's residual is created
// at zero on first use and must keep its size. Checkpoint layout, little-endian as in memory:
// "DTEF" magic, u32 version, u64 stream count, then per stream u64 id, u64 length, floats.
#include <cstring>

#include "dtrain/common/error.h"
#include "dtrain/compress/compressor.h"

namespace dtrain::compress {
namespace {

constexpr uint32_t kMagic = 0x46455444;  // "DTEF"
constexpr uint32_t kVersion = 1;

// Writes T at `pos` of a buffer sized in advance.
template <typename T>
void put(std::vector<std::byte>& out, size_t& pos, const T& v) {
  std::memcpy(out.data() + pos, &v, sizeof(T));
  pos += sizeof(T);
}

// Reads T at `pos`, throwing InvalidArgument if the state is too short.
template <typename T>
T take(std::span<const std::byte> in, size_t& pos, const char* what) {
  DT_ENFORCE(in.size() - pos >= sizeof(T), "error-feedback state of ", in.size(),
             " bytes is truncated (reading ", what, " at byte ", pos, ")");
  T v;
  std::memcpy(&v, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return v;
}

}  // namespace

ErrorFeedback::ErrorFeedback(std::unique_ptr<Compressor> compressor, double beta)
    : compressor_(std::move(compressor)), beta_(beta) {
  DT_ENFORCE(compressor_ != nullptr, "error feedback needs a compressor");
  DT_ENFORCE(beta > 0 && beta <= 1, "error feedback: beta=", beta, " is outside (0, 1]");
}

Payload ErrorFeedback::compress(std::span<const float> g, uint64_t step, uint64_t stream) {
  auto [it, fresh] = residuals_.try_emplace(stream, g.size(), 0.0f);
  std::vector<float>& r = it->second;
  DT_ENFORCE(r.size() == g.size(), "error feedback: stream ", stream, " has ", g.size(),
             " elements now but ", r.size(), " before (did the bucket layout change?)");
  const auto beta = static_cast<float>(beta_);
  z_.resize(g.size());
  for (size_t i = 0; i < g.size(); ++i) z_[i] = g[i] + beta * r[i];
  Payload p = compressor_->compress(z_, step, stream);
  z_hat_.resize(g.size());
  compressor_->decompress(p, z_hat_, false, step, stream, compressor_->worker());
  for (size_t i = 0; i < g.size(); ++i) r[i] = (1 - beta) * r[i] + (z_[i] - z_hat_[i]);
  return p;
}

std::span<const float> ErrorFeedback::residual(uint64_t stream) const {
  auto it = residuals_.find(stream);
  if (it == residuals_.end()) return {};
  return it->second;
}

std::vector<std::byte> ErrorFeedback::save_state() const {
  size_t total = 2 * sizeof(uint32_t) + sizeof(uint64_t);
  for (const auto& [stream, r] : residuals_)
    total += 2 * sizeof(uint64_t) + r.size() * sizeof(float);
  std::vector<std::byte> out(total);
  size_t pos = 0;
  put(out, pos, kMagic);
  put(out, pos, kVersion);
  put(out, pos, static_cast<uint64_t>(residuals_.size()));
  for (const auto& [stream, r] : residuals_) {
    put(out, pos, stream);
    put(out, pos, static_cast<uint64_t>(r.size()));
    if (!r.empty()) std::memcpy(out.data() + pos, r.data(), r.size() * sizeof(float));
    pos += r.size() * sizeof(float);
  }
  return out;
}

void ErrorFeedback::load_state(std::span<const std::byte> state) {
  size_t pos = 0;
  const auto magic = take<uint32_t>(state, pos, "magic");
  DT_ENFORCE(magic == kMagic, "error-feedback state does not start with the DTEF magic");
  const auto version = take<uint32_t>(state, pos, "version");
  DT_ENFORCE(version == kVersion, "error-feedback state has version ", version, ", expected ",
             kVersion);
  const auto streams = take<uint64_t>(state, pos, "stream count");
  std::map<uint64_t, std::vector<float>> loaded;
  for (uint64_t s = 0; s < streams; ++s) {
    const auto stream = take<uint64_t>(state, pos, "stream id");
    const auto length = take<uint64_t>(state, pos, "residual length");
    DT_ENFORCE(length <= (state.size() - pos) / sizeof(float), "error-feedback state of ",
               state.size(), " bytes is truncated: stream ", stream, " claims ", length,
               " floats at byte ", pos);
    std::vector<float> r(length);
    if (length > 0) std::memcpy(r.data(), state.data() + pos, length * sizeof(float));
    pos += length * sizeof(float);
    DT_ENFORCE(loaded.emplace(stream, std::move(r)).second, "error-feedback state lists stream ",
               stream, " twice");
  }
  DT_ENFORCE(pos == state.size(), "error-feedback state has ", state.size() - pos,
             " trailing bytes after ", streams, " streams");
  residuals_ = std::move(loaded);
}

}  // namespace dtrain::compress
