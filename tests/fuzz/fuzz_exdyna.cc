// Fuzzes what ExDyna reads from other ranks and from checkpoints (src/reduce/exdyna_wire.cc,
// src/reduce/exdyna.cc): the allgathered threshold-level counts, the allgathered union of
// indices checked against the partitions, and the reducer state of a checkpoint (load_state, on
// a group of one rank; a state that loads must save back to the same bytes when it is of the
// current version, and its saved form must round-trip).
// Input: u8 mode (x % 3), then
//   0 counts: u8 levels (1 + x % 8), u16 d, then int64 counts (rank-major)
//   1 union:  u8 ranks (1 + x % 8), u16 d (x % 8192), u8 blocks (1 + x), u8 flags (bit 0
//             contiguous), u8 seed, u8 step, ranks x u16 counts (x % 64), then uint32 indices
//   2 state:  the bytes of an exdyna reducer state
#include <memory>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/common/error.h"
#include "dtrain/reduce/exdyna.h"
#include "dtrain/reduce/exdyna_wire.h"
#include "fuzz_input.h"

using namespace dtrain;
using namespace dtrain::reduce;

namespace {

comm::Group& solo() {
  static auto* group = [] {
    comm::GroupOptions o;
    o.rank = 0;
    o.size = 1;
    o.run_id = "fuzz";
    return new std::shared_ptr<comm::Group>(comm::Group::connect(o));
  }();
  return **group;
}

template <typename T>
std::vector<T> array_of(std::span<const std::byte> bytes) {
  std::vector<T> v(bytes.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const int mode = in.take<uint8_t>() % 3;
  try {
    if (mode == 0) {
      const int levels = 1 + in.take<uint8_t>() % 8;
      const size_t d = in.take<uint16_t>();
      const auto counts = array_of<int64_t>(in.rest());
      exdyna::check_level_counts(counts, levels, d);
      for (int64_t c : counts) fuzz::check(c >= 0 && static_cast<uint64_t>(c) <= d);
    } else if (mode == 1) {
      const int n = 1 + in.take<uint8_t>() % 8;
      const size_t d = in.take<uint16_t>() % 8192;
      const size_t blocks = 1 + in.take<uint8_t>();
      const auto order = (in.take<uint8_t>() & 1) ? exdyna::BlockOrder::kContiguous
                                                  : exdyna::BlockOrder::kInterleaved;
      const uint64_t seed = in.take<uint8_t>();
      const uint64_t step = in.take<uint8_t>();
      std::vector<int64_t> counts(n);
      for (auto& c : counts) c = in.take<uint16_t>() % 64;
      const auto all = array_of<uint32_t>(in.rest());
      const exdyna::Partitions parts(d, blocks, n, order, seed);
      exdyna::check_union<uint32_t>(all, counts, parts, step);
      size_t at = 0;
      for (int w = 0; w < n; ++w) {
        for (int64_t j = 0; j < counts[w]; ++j, ++at) {
          fuzz::check(all[at] < d && parts.owner(all[at]) == static_cast<int>((step + w) % n));
        }
      }
      fuzz::check(at == all.size());
    } else {
      ExDynaReducer reducer(solo(), ExDynaOptions{});
      const auto state = in.rest();
      reducer.load_state(state);
      const auto saved = reducer.save_state();
      // What loads saves in the current version, which loads and saves to the same bytes; a
      // state already in that version saves back to itself (older versions are upgraded).
      ExDynaReducer again(solo(), ExDynaOptions{});
      again.load_state(saved);
      fuzz::check(again.save_state() == saved);
      auto version = [](std::span<const std::byte> s) {
        uint32_t v = 0;
        if (s.size() >= 8) std::memcpy(&v, s.data() + 4, 4);
        return v;
      };
      if (version(state) == version(saved)) {
        fuzz::check(saved.size() == state.size() &&
                    std::memcmp(saved.data(), state.data(), saved.size()) == 0);
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
