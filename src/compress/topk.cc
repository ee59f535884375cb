// Exact top-k: keep the k = round(density n) entries of largest magnitude.
//
// Works as follows. The kept set is the first k under a strict total order (larger |x| first,
// equal magnitudes by lower index), so it is deterministic even with ties: nth_element on a copy
// of the magnitudes finds the k-th largest t in expected O(n), and one ascending pass keeps every
// |x| > t and the lowest-index entries with |x| == t up to k, already in the sparse payload's
// ascending order (see sparse_format.cc). NaN has no place in that order, so the input is checked
// first. The scratch arrays are kept between calls to avoid a fresh allocation per bucket.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "dtrain/common/error.h"
#include "internal.h"

namespace dtrain::compress::detail {
namespace {

class TopkCompressor : public Compressor {
 public:
  explicit TopkCompressor(double density) : density_(density) {}

  std::string name() const override { return "topk:density=" + format_number(density_); }

  Payload compress(std::span<const float> in, uint64_t, uint64_t) override {
    DT_ENFORCE(in.size() <= std::numeric_limits<uint32_t>::max(), "topk: input of ", in.size(),
               " elements exceeds the 32-bit index range; use smaller buckets");
    check_finite(in, "topk");
    const size_t k = kept_count(density_, in.size());
    // The k-th largest magnitude t, from nth_element on a copy of the magnitudes (contiguous, so
    // much faster than ordering an index array by indirect comparisons); then one ascending pass
    // keeps every |x| > t and the first (lowest-index) entries with |x| == t up to k.
    order_.clear();
    if (k > 0) {
      magnitude_.resize(in.size());
      for (size_t i = 0; i < in.size(); ++i) magnitude_[i] = std::fabs(in[i]);
      std::nth_element(magnitude_.begin(), magnitude_.begin() + (k - 1), magnitude_.end(),
                       std::greater<float>());
      const float t = magnitude_[k - 1];
      size_t above = 0;
      for (float v : in) above += std::fabs(v) > t;
      size_t ties = k - above;
      order_.reserve(k);
      for (size_t i = 0; i < in.size(); ++i) {
        const float m = std::fabs(in[i]);
        if (m > t || (m == t && ties > 0 && ties--)) order_.push_back(static_cast<uint32_t>(i));
      }
    }
    return encode_sparse(in, std::span<const uint32_t>(order_.data(), order_.size()));
  }

  void decompress(const Payload& p, std::span<float> out, bool accumulate, uint64_t, uint64_t,
                  int sender) const override {
    check_payload_size(p, payload_bytes(p.count), "topk", sender);
    decode_sparse(p, out, accumulate, "topk", sender);
  }

  bool summable() const override { return false; }
  size_t payload_bytes(size_t n) const override {
    return kept_count(density_, n) * (sizeof(uint32_t) + sizeof(float));
  }
  bool sparsifier() const override { return true; }
  void kept_indices(const Payload& p, uint64_t, uint64_t,
                    std::vector<uint32_t>& out) const override {
    sparse_indices(p, out);
  }
  double density() const override { return density_; }
  std::unique_ptr<Compressor> with_density(double density) const override {
    auto copy = std::make_unique<TopkCompressor>(density);
    copy->set_worker(worker_);
    return copy;
  }

 private:
  double density_;
  std::vector<uint32_t> order_;   // kept indices, ascending
  std::vector<float> magnitude_;  // scratch for nth_element
};

}  // namespace

std::unique_ptr<Compressor> make_topk(const Params& params) {
  return std::make_unique<TopkCompressor>(
      params.get_double("density", 0.01, 0, 1, /*lo_open=*/true));
}

}  // namespace dtrain::compress::detail
