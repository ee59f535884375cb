// Random-k with a shared seed: keep k = round(density n) positions drawn uniformly without
// replacement, identically on every rank.
//
// Works as follows. The positions come from a stream keyed by (seed, step, stream), so every
// rank (and the decompressor) draws the same set without sending it: the payload is the k values
// alone, in ascending position order, and payloads of different ranks line up elementwise, hence
// summable. The set is drawn with Floyd's algorithm (k draws, see common/random.h). scale=1
// multiplies the decoded values by n/k, which makes the estimate unbiased; scale=0 (the default)
// leaves them as they are, the usual choice under error feedback, where the residual keeps what was
// not sent.
#include <algorithm>
#include <cstring>
#include <limits>

#include "dtrain/common/error.h"
#include "dtrain/common/random.h"
#include "internal.h"

namespace dtrain::compress::detail {
namespace {

constexpr uint64_t kRandomkDomain = 0x72616e646f6d6bull;  // separates randomk keys from qcs keys

class RandomkCompressor : public Compressor {
 public:
  RandomkCompressor(double density, uint64_t seed, bool scale)
      : density_(density), seed_(seed), scale_(scale) {}

  std::string name() const override {
    return "randomk:density=" + format_number(density_) + ",seed=" + std::to_string(seed_) +
           ",scale=" + (scale_ ? "1" : "0");
  }

  Payload compress(std::span<const float> in, uint64_t step, uint64_t stream) override {
    const auto positions = draw(in.size(), step, stream);
    Payload p;
    p.count = in.size();
    p.bytes.resize(positions.size() * sizeof(float));
    for (size_t j = 0; j < positions.size(); ++j) {
      std::memcpy(p.bytes.data() + j * sizeof(float), &in[positions[j]], sizeof(float));
    }
    return p;
  }

  void decompress(const Payload& p, std::span<float> out, bool accumulate, uint64_t step,
                  uint64_t stream, int sender) const override {
    check_output(p, out, "randomk");
    check_payload_size(p, payload_bytes(p.count), "randomk", sender);
    const auto positions = draw(out.size(), step, stream);
    const float factor =
        scale_ && !positions.empty() ? static_cast<float>(out.size()) / positions.size() : 1.0f;
    if (!accumulate) std::fill(out.begin(), out.end(), 0.0f);
    for (size_t j = 0; j < positions.size(); ++j) {
      float v;
      std::memcpy(&v, p.bytes.data() + j * sizeof(float), sizeof(float));
      out[positions[j]] += factor * v;
    }
  }

  bool summable() const override { return true; }
  size_t payload_bytes(size_t n) const override { return kept_count(density_, n) * sizeof(float); }
  // scale=1 decodes n/k times the values sent: not the entries as they are.
  bool sparsifier() const override { return !scale_; }
  void kept_indices(const Payload& p, uint64_t step, uint64_t stream,
                    std::vector<uint32_t>& out) const override {
    DT_ENFORCE(!scale_, "randomk: scale=1 decodes scaled values, not a subset of the input");
    out = draw(p.count, step, stream);
  }
  double density() const override { return density_; }
  std::unique_ptr<Compressor> with_density(double density) const override {
    auto copy = std::make_unique<RandomkCompressor>(density, seed_, scale_);
    copy->set_worker(worker_);
    return copy;
  }

 private:
  std::vector<uint32_t> draw(size_t n, uint64_t step, uint64_t stream) const {
    DT_ENFORCE(n <= std::numeric_limits<uint32_t>::max(), "randomk: input of ", n,
               " elements exceeds the 32-bit index range; use smaller buckets");
    const size_t k = kept_count(density_, n);
    KeyedRng rng({kRandomkDomain, seed_, step, stream});
    std::vector<uint64_t> taken;
    std::vector<uint32_t> positions;
    sample_sorted(rng, n, k, taken, positions);
    return positions;
  }

  double density_;
  uint64_t seed_;
  bool scale_;
};

}  // namespace

std::unique_ptr<Compressor> make_randomk(const Params& params) {
  const double density = params.get_double("density", 0.01, 0, 1, /*lo_open=*/true);
  const uint64_t seed = params.get_size("seed", 0, 0, std::numeric_limits<uint64_t>::max());
  return std::make_unique<RandomkCompressor>(density, seed, params.get_size("scale", 0, 0, 1) == 1);
}

}  // namespace dtrain::compress::detail
