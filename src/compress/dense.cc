// The dense compressors: `none` (float32 copy) and `fp16` (IEEE half, round to nearest even).
// Both are elementwise, so their payloads are summable as they stand: fp16 payloads go through
// the ring allreduce as kFloat16, which adds in float and rounds back to half at every hop (the
// sum of N payloads therefore carries up to N-1 extra half roundings).
#include <cstring>

#include "dtrain/collective/types.h"
#include "internal.h"

namespace dtrain::compress::detail {
namespace {

class NoneCompressor : public Compressor {
 public:
  std::string name() const override { return "none"; }
  Payload compress(std::span<const float> in, uint64_t, uint64_t) override {
    Payload p;
    p.count = in.size();
    p.bytes.resize(in.size_bytes());
    if (!in.empty()) std::memcpy(p.bytes.data(), in.data(), in.size_bytes());
    return p;
  }
  void decompress(const Payload& p, std::span<float> out, bool accumulate, uint64_t, uint64_t,
                  int sender) const override {
    check_output(p, out, "none");
    check_payload_size(p, payload_bytes(p.count), "none", sender);
    for (size_t i = 0; i < out.size(); ++i) {
      float v;
      std::memcpy(&v, p.bytes.data() + i * sizeof(float), sizeof(float));
      out[i] = accumulate ? out[i] + v : v;
    }
  }
  bool summable() const override { return true; }
  size_t payload_bytes(size_t n) const override { return n * sizeof(float); }
};

class Fp16Compressor : public Compressor {
 public:
  std::string name() const override { return "fp16"; }
  Payload compress(std::span<const float> in, uint64_t, uint64_t) override {
    Payload p;
    p.count = in.size();
    p.bytes.resize(payload_bytes(in.size()));
    for (size_t i = 0; i < in.size(); ++i) {
      const uint16_t h = collective::float_to_half(in[i]);
      std::memcpy(p.bytes.data() + i * sizeof(h), &h, sizeof(h));
    }
    return p;
  }
  void decompress(const Payload& p, std::span<float> out, bool accumulate, uint64_t, uint64_t,
                  int sender) const override {
    check_output(p, out, "fp16");
    check_payload_size(p, payload_bytes(p.count), "fp16", sender);
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, p.bytes.data() + i * sizeof(h), sizeof(h));
      const float v = collective::half_to_float(h);
      out[i] = accumulate ? out[i] + v : v;
    }
  }
  bool summable() const override { return true; }
  collective::DataType summable_type() const override { return collective::DataType::kFloat16; }
  size_t payload_bytes(size_t n) const override { return n * sizeof(uint16_t); }
};

}  // namespace

std::unique_ptr<Compressor> make_none(const Params&) {
  return std::make_unique<NoneCompressor>();
}

std::unique_ptr<Compressor> make_fp16(const Params&) {
  return std::make_unique<Fp16Compressor>();
}

}  // namespace dtrain::compress::detail
