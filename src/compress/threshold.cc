// Threshold sparsification: keep every entry with |x| >= lambda, in one pass. The payload size
// follows the data (8 bytes per kept entry, see sparse_format.cc), so payload_size_fixed() is
// false and the reducer exchanges sizes before gathering.
#include <cmath>
#include <limits>

#include "dtrain/common/error.h"
#include "internal.h"

namespace dtrain::compress::detail {
namespace {

class ThresholdCompressor : public Compressor {
 public:
  explicit ThresholdCompressor(double lambda) : lambda_(lambda) {}

  std::string name() const override { return "threshold:lambda=" + format_number(lambda_); }

  Payload compress(std::span<const float> in, uint64_t, uint64_t) override {
    DT_ENFORCE(in.size() <= std::numeric_limits<uint32_t>::max(), "threshold: input of ", in.size(),
               " elements exceeds the 32-bit index range; use smaller buckets");
    check_finite(in, "threshold");
    kept_.clear();
    for (size_t i = 0; i < in.size(); ++i) {
      if (static_cast<double>(std::fabs(in[i])) >= lambda_)
        kept_.push_back(static_cast<uint32_t>(i));
    }
    return encode_sparse(in, kept_);
  }

  void decompress(const Payload& p, std::span<float> out, bool accumulate, uint64_t, uint64_t,
                  int sender) const override {
    decode_sparse(p, out, accumulate, "threshold", sender);
  }

  bool summable() const override { return false; }
  bool payload_size_fixed() const override { return false; }
  size_t payload_bytes(size_t) const override {
    DT_THROW(InvalidArgument,
             "threshold: the payload size depends on the data; use the payload's bytes.size()");
  }
  bool sparsifier() const override { return true; }
  void kept_indices(const Payload& p, uint64_t, uint64_t,
                    std::vector<uint32_t>& out) const override {
    sparse_indices(p, out);
  }

 private:
  double lambda_;  // compared in double so the threshold is exactly the one named
  std::vector<uint32_t> kept_;
};

}  // namespace

std::unique_ptr<Compressor> make_threshold(const Params& params) {
  return std::make_unique<ThresholdCompressor>(
      params.get_double("lambda", 0.001, 0, std::numeric_limits<double>::infinity()));
}

}  // namespace dtrain::compress::detail
