// Fuzzes QCS payload decoding (src/compress/qcs.cc): scales and base-(2Q+1) digit words, or
// shared float measurements, as a peer could send them to decompress().
// Input: u8 log2 bucket (x % 9: 1 .. 256), u8 rows (1 + x % bucket), u8 levels (one of 1, 2, 3,
// 4, 7, 100, 65535), u8 flags (bit 0 shared, bit 1 mmse, bit 2 accumulate), u16 count (x % 2048),
// u8 step, u8 sender, then the payload bytes.
#include <vector>

#include "dtrain/common/error.h"
#include "dtrain/compress/qcs.h"
#include "fuzz_input.h"

using namespace dtrain;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  static constexpr int kLevels[] = {1, 2, 3, 4, 7, 100, 65535};
  compress::QcsOptions o;
  o.bucket = size_t{1} << (in.take<uint8_t>() % 9);
  o.rows = 1 + in.take<uint8_t>() % o.bucket;
  o.levels = kLevels[in.take<uint8_t>() % std::size(kLevels)];
  const auto flags = in.take<uint8_t>();
  o.shared = flags & 1;
  o.mmse = flags & 2;
  const size_t count = in.take<uint16_t>() % 2048;
  const uint64_t step = in.take<uint8_t>();
  const int sender = in.take<uint8_t>();
  compress::QcsCompressor qcs(o);
  compress::Payload p;
  const auto bytes = in.rest();
  p.bytes.assign(bytes.begin(), bytes.end());
  p.count = count;
  std::vector<float> out(count, 0.5f);
  try {
    qcs.decompress(p, out, flags & 4, step, 0, sender);
    fuzz::check(p.bytes.size() == qcs.payload_bytes(count));
  } catch (const Error&) {
  }
  return 0;
}
