// Fuzzes OmniReduce's message decoders (src/sparse/omnireduce_wire.cc): a worker's request as the
// aggregator reads it and an aggregator's reply as a worker reads it, against a layout and
// receiver state drawn from the input; and the block geometry a dedicated aggregator derives
// from the tensor size in rank 0's call descriptor (any u64).
// Input: u8 mode (bit 0 reply, bit 1 round > 0), u32 n (x % 2^20), u8 block (1 + x % 64),
// u8 columns (1 + x % 16), u8 workers (1 + x % 8), u8 aggregators (1 + x % 4), u8 slots
// (1 + x % 4), u8 lane, u64 descriptor n, then per column a u8 for the target and one for the
// look-ahead (x >= 0xf0: kEnd, else the (x % 16)-th block of the column, kept below the look-ahead
// for a target), then the message bytes.
#include <vector>

#include "dtrain/common/error.h"
#include "fuzz_input.h"
#include "sparse/omnireduce_internal.h"

using namespace dtrain;
using namespace dtrain::sparse::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const auto mode = in.take<uint8_t>();
  const bool reply = mode & 1;
  const uint64_t round = (mode & 2) ? 1 + (mode >> 2) : 0;
  const size_t n = in.take<uint32_t>() % (size_t{1} << 20);
  const size_t block = 1 + in.take<uint8_t>() % 64;
  const size_t columns = 1 + in.take<uint8_t>() % 16;
  const int workers = 1 + in.take<uint8_t>() % 8;
  const int aggregators = 1 + in.take<uint8_t>() % 4;
  const int slots = 1 + in.take<uint8_t>() % 4;
  const auto lane_byte = in.take<uint8_t>();
  const auto descriptor_n = in.take<uint64_t>();

  // A dedicated aggregator's geometry for any n from the wire: ceil(n / block) without wrapping.
  const Layout remote(descriptor_n, block, columns, workers, aggregators, 1, slots);
  const unsigned __int128 want = (static_cast<unsigned __int128>(descriptor_n) + block - 1) / block;
  fuzz::check(remote.blocks == want);
  fuzz::check(remote.lanes <= static_cast<uint64_t>(aggregators) * slots);

  const Layout l(n, block, columns, workers, aggregators, 0, slots);
  if (l.lanes == 0) return 0;
  const uint64_t lane = lane_byte % l.lanes;
  std::vector<uint64_t> target(columns), ahead(columns), next(columns);
  auto pointer = [&](size_t c, uint8_t x) -> uint64_t {
    if (x >= 0xf0) return kEnd;
    const uint64_t p = l.first_block(lane, c) + (x % 16) * l.stride;
    return p < l.blocks ? p : kEnd;
  };
  for (size_t c = 0; c < columns; ++c) {
    ahead[c] = pointer(c, in.take<uint8_t>());
    target[c] = std::min(ahead[c], pointer(c, in.take<uint8_t>()));
  }
  if (round == 0) std::fill(target.begin(), target.end(), kEnd);
  const auto msg = in.rest();
  const WireParty who{7, 1, 0};
  try {
    if (reply) {
      decode_reply(l, lane, round, target, ahead, msg, who, next);
      for (size_t c = 0; c < columns; ++c) {
        fuzz::check(next[c] == kEnd || (next[c] < l.blocks && next[c] <= ahead[c]));
      }
    } else {
      decode_request(l, lane, round, target, ahead, msg, who, next);
      for (size_t c = 0; c < columns; ++c) {
        fuzz::check(next[c] == kEnd || next[c] < l.blocks);
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
