// Checks of ExDyna's gathered counts and indices (see dtrain/reduce/exdyna_wire.h).
#include "dtrain/reduce/exdyna_wire.h"

#include "dtrain/common/error.h"

namespace dtrain::reduce::exdyna {

void check_level_counts(std::span<const int64_t> level_counts, int levels, size_t d) {
  DT_ENFORCE(levels >= 1 && level_counts.size() % static_cast<size_t>(levels) == 0,
             "exdyna: ", level_counts.size(), " gathered counts for ", levels, " levels per rank");
  const size_t n = level_counts.size() / static_cast<size_t>(levels);
  for (size_t w = 0; w < n; ++w) {
    for (int j = 0; j < levels; ++j) {
      const int64_t count = level_counts[w * levels + j];
      DT_ENFORCE_AS(ProtocolError, count >= 0 && static_cast<uint64_t>(count) <= d, "exdyna: rank ",
                    w, " announced ", count, " indices for a bucket of ", d);
    }
  }
}

template <typename Index>
void check_union(std::span<const Index> all, std::span<const int64_t> counts,
                 const Partitions& parts, uint64_t step) {
  const size_t n = counts.size();
  const size_t d = parts.size();
  DT_ENFORCE(n == static_cast<size_t>(parts.count()), "exdyna: ", n, " counts for ", parts.count(),
             " partitions");
  size_t at = 0;
  for (size_t w = 0; w < n; ++w) {
    DT_ENFORCE_AS(ProtocolError,
                  counts[w] >= 0 && static_cast<uint64_t>(counts[w]) <= all.size() - at,
                  "exdyna: rank ", w, " sent ", counts[w], " indices, but the union holds ",
                  all.size(), " of which ", at, " came from the ranks before it");
    const int owned = static_cast<int>((step % n + w) % n);
    for (size_t j = at; j < at + static_cast<size_t>(counts[w]); ++j) {
      DT_ENFORCE_AS(ProtocolError, all[j] < d && parts.owner(all[j]) == owned, "exdyna: rank ", w,
                    " sent index ", all[j], " outside its partition ", owned, " (bucket of ", d,
                    "; partitions disagree?)");
    }
    at += static_cast<size_t>(counts[w]);
  }
  DT_ENFORCE_AS(ProtocolError, at == all.size(), "exdyna: the union holds ", all.size(),
                " indices, the ranks' counts add up to ", at);
}

template void check_union<uint32_t>(std::span<const uint32_t>, std::span<const int64_t>,
                                    const Partitions&, uint64_t);
template void check_union<uint64_t>(std::span<const uint64_t>, std::span<const int64_t>,
                                    const Partitions&, uint64_t);

}  // namespace dtrain::reduce::exdyna
