// Error feedback: z = g + beta r, send compress(z), keep r_next = (1 - beta) r + (z - z_hat).
//
// z_hat is this rank's own payload decoded (with sender = its own worker, so QCS uses its own
// signs and dither), exactly what the other ranks will add for it. A stream's residual is created
// at zero on first use and must keep its size. Checkpoint layout, little-endian as in memory:
// "DTEF" magic, u32 version, u64 stream count, then per stream u64 id, u64 length, floats.
#include <map>

#include "dtrain/common/bytes.h"
#include "dtrain/common/error.h"
#include "dtrain/compress/compressor.h"

namespace dtrain::compress {
namespace {

constexpr uint32_t kMagic = 0x46455444;  // "DTEF"
constexpr uint32_t kVersion = 1;

}  // namespace

ErrorFeedback::ErrorFeedback(std::unique_ptr<Compressor> compressor, double beta)
    : compressor_(std::move(compressor)), beta_(beta) {
  DT_ENFORCE(compressor_ != nullptr, "error feedback needs a compressor");
  DT_ENFORCE(beta > 0 && beta <= 1, "error feedback: beta=", beta, " is outside (0, 1]");
}

Payload ErrorFeedback::compress(std::span<const float> g, uint64_t step, uint64_t stream,
                                Compressor* with) {
  Compressor& codec = with != nullptr ? *with : *compressor_;
  auto [it, fresh] = residuals_.try_emplace(stream, g.size(), 0.0f);
  std::vector<float>& r = it->second;
  DT_ENFORCE(r.size() == g.size(), "error feedback: stream ", stream, " has ", g.size(),
             " elements now but ", r.size(), " before (did the bucket layout change?)");
  const auto beta = static_cast<float>(beta_);
  z_.resize(g.size());
  for (size_t i = 0; i < g.size(); ++i) z_[i] = g[i] + beta * r[i];
  Payload p = codec.compress(z_, step, stream);
  z_hat_.resize(g.size());
  codec.decompress(p, z_hat_, false, step, stream, codec.worker());
  for (size_t i = 0; i < g.size(); ++i) r[i] = (1 - beta) * r[i] + (z_[i] - z_hat_[i]);
  return p;
}

std::span<const float> ErrorFeedback::residual(uint64_t stream) const {
  auto it = residuals_.find(stream);
  if (it == residuals_.end()) return {};
  return it->second;
}

std::vector<std::byte> ErrorFeedback::save_state() const {
  ByteWriter w;
  w.put(kMagic).put(kVersion).put(static_cast<uint64_t>(residuals_.size()));
  for (const auto& [stream, r] : residuals_) w.put(stream).put_vector(r);
  return w.take();
}

void ErrorFeedback::load_state(std::span<const std::byte> state) {
  ByteReader r(state, "error-feedback state");
  DT_ENFORCE(r.get<uint32_t>("magic") == kMagic,
             "error-feedback state does not start with the DTEF magic");
  r.expect(kVersion, "version");
  const auto streams = r.get<uint64_t>("stream count");
  std::map<uint64_t, std::vector<float>> loaded;
  for (uint64_t s = 0; s < streams; ++s) {
    const auto stream = r.get<uint64_t>("stream id");
    DT_ENFORCE(loaded.emplace(stream, r.get_vector<float>("residual")).second,
               "error-feedback state lists stream ", stream, " twice");
  }
  r.finish();
  residuals_ = std::move(loaded);
}

}  // namespace dtrain::compress
