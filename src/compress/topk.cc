// Exact top-k: keep the k = round(density n) entries of largest magnitude.
//
// Works as follows. An index array is partitioned with std::nth_element under a strict total
// order (larger |x| first, equal magnitudes by lower index), so the kept set is deterministic even
// with ties, in expected O(n). The kept indices are sorted ascending (the sparse payload's order,
// see sparse_format.cc) and their values copied. NaN has no place in that order, so the input is
// checked first. The index array is kept between calls to avoid a fresh allocation per bucket.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

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
    order_.resize(in.size());
    std::iota(order_.begin(), order_.end(), uint32_t{0});
    auto before = [&](uint32_t a, uint32_t b) {
      const float ma = std::fabs(in[a]), mb = std::fabs(in[b]);
      return ma > mb || (ma == mb && a < b);
    };
    if (k < in.size()) std::nth_element(order_.begin(), order_.begin() + k, order_.end(), before);
    std::sort(order_.begin(), order_.begin() + k);
    return encode_sparse(in, std::span<const uint32_t>(order_.data(), k));
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

 private:
  double density_;
  std::vector<uint32_t> order_;
};

}  // namespace

std::unique_ptr<Compressor> make_topk(const Params& params) {
  const double density = params.number("density");
  if (!(density > 0 && density <= 1)) params.fail("density", "is outside (0, 1]");
  return std::make_unique<TopkCompressor>(density);
}

}  // namespace dtrain::compress::detail
