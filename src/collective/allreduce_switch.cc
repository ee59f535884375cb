// Names of the allreduce algorithms and the size switch that picks one for kAuto.
//
// The default crossovers were measured on the development box (2 cores shared with compile jobs,
// loopback TCP), every algorithm forced in turn and interleaved with Gloo's ring in one run:
//   dtrain bench allreduce --workers 4 --iters 60 --algos rd,hd,ring,gloo
//       --sizes 128K,256K,512K,1M,2M,4M,8M   (one line)
//   dtrain bench allreduce --workers 3 --iters 80 --sizes 256K,512K,1M --algos rd,hd,ring,gloo
// Median time as a multiple of Gloo's, two runs each (load average 3.5-4.5):
//   4 ranks   128K       256K       1M         2M         4M         8M
//   rd        0.65 0.71  0.80 0.79  0.97 0.57  1.19 1.02  1.28 1.33  1.68 1.66
//   hd        0.79 0.80  0.82 0.79  0.97 0.87  0.97 0.93  0.92 0.99  1.13 1.14
//   ring      0.75 0.78  0.91 0.89  0.98 0.96  1.10 0.98  1.00 0.93  0.99 0.99
//   3 ranks   256K       512K       1M
//   rd        0.55 0.47  0.73 0.65  1.13 1.05
//   hd        0.67 0.56  0.75 0.71  1.14 0.99
//   ring      0.81 0.77  1.04 1.00  0.98 0.91
// Hence recursive doubling to 256 KiB, halving-doubling to 2 MiB (4 MiB is a draw; under heavier
// load, 5-7, halving-doubling won to 8 MiB: fewer rounds, fewer wake-ups), the ring above; with 3
// ranks the fold makes both lose to the ring from 1 MiB, so fold_max is 512 KiB. (With 4 ranks
// the ring also measured 0.68-0.70 at 512K against 0.86-0.89 for halving-doubling, an outlier
// between two sizes where it lost, left alone.) Groups of 5-8 ranks on 2 cores favour the fewest
// rounds even more; nothing larger could be measured here.
#include <algorithm>
#include <bit>
#include <charconv>
#include <iterator>

#include "dtrain/collective/allreduce.h"
#include "dtrain/common/error.h"

namespace dtrain::collective {

const char* name(AllreduceAlgorithm a) {
  switch (a) {
    case AllreduceAlgorithm::kAuto:
      return "auto";
    case AllreduceAlgorithm::kRing:
      return "ring";
    case AllreduceAlgorithm::kHalvingDoubling:
      return "halving_doubling";
    case AllreduceAlgorithm::kRecursiveDoubling:
      return "recursive_doubling";
  }
  return "unknown";
}

AllreduceAlgorithm parse_allreduce_algorithm(const std::string& s) {
  for (auto a : {AllreduceAlgorithm::kAuto, AllreduceAlgorithm::kRing,
                 AllreduceAlgorithm::kHalvingDoubling, AllreduceAlgorithm::kRecursiveDoubling}) {
    if (s == name(a)) return a;
  }
  if (s == "hd") return AllreduceAlgorithm::kHalvingDoubling;
  if (s == "rd") return AllreduceAlgorithm::kRecursiveDoubling;
  throw InvalidArgument("allreduce algorithm '" + s +
                        "' is not one of auto, ring, halving_doubling (hd), recursive_doubling "
                        "(rd)");
}

AllreduceAlgorithm AllreduceSwitch::pick(size_t bytes, int world) const {
  if (world <= 1) return AllreduceAlgorithm::kRing;
  if (!std::has_single_bit(static_cast<unsigned>(world)) && bytes > fold_max_bytes) {
    return AllreduceAlgorithm::kRing;
  }
  if (bytes <= recursive_doubling_max_bytes) return AllreduceAlgorithm::kRecursiveDoubling;
  if (bytes <= halving_doubling_max_bytes) return AllreduceAlgorithm::kHalvingDoubling;
  return AllreduceAlgorithm::kRing;
}

std::string AllreduceSwitch::str() const {
  return detail::concat("rd_max=", recursive_doubling_max_bytes,
                        ",hd_max=", halving_doubling_max_bytes, ",fold_max=", fold_max_bytes);
}

AllreduceSwitch AllreduceSwitch::parse(const std::string& s) {
  const std::string what = "allreduce switch '" + s + "'";
  AllreduceSwitch out;
  struct Key {
    const char* name;
    size_t* value;
    bool seen;
  } keys[] = {{"rd_max", &out.recursive_doubling_max_bytes, false},
              {"hd_max", &out.halving_doubling_max_bytes, false},
              {"fold_max", &out.fold_max_bytes, false}};
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string item = s.substr(pos, end - pos);
    const size_t eq = item.find('=');
    DT_ENFORCE(eq != std::string::npos, what, ": '", item,
               "' is not key=bytes (expected rd_max=N,hd_max=N,fold_max=N)");
    const std::string key = item.substr(0, eq);
    const std::string value = item.substr(eq + 1);
    size_t bytes = 0;
    const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), bytes);
    DT_ENFORCE(ec == std::errc() && ptr == value.data() + value.size() && !value.empty(), what,
               ": '", value, "' is not a number of bytes");
    Key* k =
        std::find_if(std::begin(keys), std::end(keys), [&](const Key& k) { return key == k.name; });
    DT_ENFORCE(k != std::end(keys), what, ": unknown key '", key,
               "' (expected rd_max, hd_max, fold_max)");
    DT_ENFORCE(!k->seen, what, ": ", key, " given twice");
    k->seen = true;
    *k->value = bytes;
    pos = end + 1;
  }
  for (const Key& k : keys) DT_ENFORCE(k.seen, what, ": ", k.name, " is missing");
  return out;
}

}  // namespace dtrain::collective
