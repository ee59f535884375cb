// Fuzzes the payload decoders of the compressors other than QCS (fuzz_qcs.cc): above all the
// index+value payloads of topk and threshold (src/compress/sparse_format.cc), and the fixed-size
// payloads of none, fp16 and randomk, as a peer could send them to decompress().
// Input: u8 compressor (x % 5: topk, threshold, none, fp16, randomk), u8 flags (bit 0 accumulate,
// bit 1: output one element short of the payload's count), u16 count (elements of the original
// vector, x % 4096), u8 step, then the payload bytes.
#include <string>
#include <vector>

#include "dtrain/common/error.h"
#include "dtrain/compress/compressor.h"
#include "fuzz_input.h"

using namespace dtrain;

namespace {

const std::vector<std::unique_ptr<compress::Compressor>>& compressors() {
  static const auto* all = [] {
    auto* v = new std::vector<std::unique_ptr<compress::Compressor>>();
    for (const char* spec : {"topk:0.1", "threshold:0.01", "none", "fp16", "randomk:0.25"}) {
      v->push_back(compress::make_compressor(spec));
    }
    return v;
  }();
  return *all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const auto& c = *compressors()[in.take<uint8_t>() % compressors().size()];
  const auto flags = in.take<uint8_t>();
  const size_t count = in.take<uint16_t>() % 4096;
  const uint64_t step = in.take<uint8_t>();
  compress::Payload p;
  const auto bytes = in.rest();
  p.bytes.assign(bytes.begin(), bytes.end());
  p.count = count;
  const bool short_out = (flags & 2) && count > 0;
  std::vector<float> out(short_out ? count - 1 : count, 1.0f);
  try {
    c.decompress(p, out, flags & 1, step, 0, 1);
    fuzz::check(!short_out);
  } catch (const Error&) {
  }
  return 0;
}
