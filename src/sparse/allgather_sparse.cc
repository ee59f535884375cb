// AGsparse baseline for OmniReduce: gather every rank's non-zero elements, sum them everywhere.
//
// Works as follows. Each rank lists its non-zero elements as (index, value). An allgather of
// (size, count) per rank checks that the ranks agree on the tensor size and gives the per-rank
// counts; two ring allgathervs then move the indices (int64) and the values (float32). Every rank
// zeroes its tensor and adds the lists in rank order, the same order in which OmniReduce's
// aggregators add whole blocks, so the two give the same floats.
#include <algorithm>
#include <cstring>

#include "dtrain/collective/allgather.h"
#include "dtrain/common/error.h"
#include "dtrain/sparse/omnireduce.h"

namespace dtrain::sparse {

OmniReduceStats allgather_sparse(const OmniReduceOptions& o) {
  DT_ENFORCE(o.group != nullptr, "allgather_sparse: no group");
  DT_ENFORCE(o.block > 0, "allgather_sparse: block is 0");
  DT_ENFORCE(o.data.data() != nullptr || o.data.empty(), "allgather_sparse: data is null");
  comm::Group& g = *o.group;
  const int n = g.size();
  const int me = g.rank();
  const size_t size = o.data.size();
  const uint64_t blocks = size == 0 ? 0 : (size + o.block - 1) / o.block;

  OmniReduceStats stats;
  std::vector<int64_t> indices;
  std::vector<float> values;
  for (size_t i = 0; i < size; ++i) {
    if (o.data[i] == 0.0f) continue;
    if (indices.empty() || static_cast<size_t>(indices.back()) / o.block != i / o.block) {
      ++stats.blocks_nonzero_local;
    }
    indices.push_back(static_cast<int64_t>(i));
    values.push_back(o.data[i]);
  }

  // Sizes and counts of every rank.
  int64_t mine[2] = {static_cast<int64_t>(size), static_cast<int64_t>(indices.size())};
  std::vector<int64_t> all(2 * static_cast<size_t>(n));
  collective::AllgatherOptions head(g);
  head.timeout = o.timeout;
  head.input = collective::ConstView(mine, 2, collective::DataType::kInt64);
  head.output = all;
  collective::allgather(head);
  std::vector<size_t> counts(n);
  for (int r = 0; r < n; ++r) {
    if (all[2 * r] != static_cast<int64_t>(size)) {
      g.fail(comm::Group::FailKind::kProtocol, r,
             dtrain::detail::concat("allgather_sparse: ranks disagree: rank ", r, " has ",
                                    all[2 * r], " floats, rank ", me, " has ", size, " floats"));
    }
    DT_ENFORCE_AS(ProtocolError, all[2 * r + 1] >= 0 && all[2 * r + 1] <= all[2 * r],
                  "allgather_sparse: rank ", r, " claims ", all[2 * r + 1],
                  " non-zero elements of ", all[2 * r]);
    counts[r] = static_cast<size_t>(all[2 * r + 1]);
  }
  size_t total = 0;
  for (size_t c : counts) total += c;

  std::vector<int64_t> all_indices(total);
  std::vector<float> all_values(total);
  collective::AllgathervOptions gi(g);
  gi.timeout = o.timeout;
  gi.input = collective::ConstView(std::span<const int64_t>(indices));
  gi.output = all_indices;
  gi.counts = counts;
  collective::allgatherv(gi);
  collective::AllgathervOptions gv(g);
  gv.timeout = o.timeout;
  gv.input = collective::ConstView(std::span<const float>(values));
  gv.output = all_values;
  gv.counts = counts;
  collective::allgatherv(gv);

  // The ring allgatherv sends every block but the right neighbour's and receives all but its own.
  constexpr size_t kPair = sizeof(int64_t) + sizeof(float);
  if (n > 1) {
    stats.bytes_sent = (total - counts[(me + 1) % n]) * kPair;
    stats.bytes_received = (total - counts[me]) * kPair;
  }

  std::vector<uint8_t> touched(blocks, 0);
  std::fill(o.data.begin(), o.data.end(), 0.0f);
  size_t k = 0;
  for (int r = 0; r < n; ++r) {
    for (size_t j = 0; j < counts[r]; ++j, ++k) {
      const int64_t i = all_indices[k];
      if (i < 0 || static_cast<size_t>(i) >= size) {
        g.fail(comm::Group::FailKind::kProtocol, r,
               dtrain::detail::concat("allgather_sparse: rank ", r, " sent index ", i,
                                      " for a tensor of ", size, " floats"));
      }
      o.data[i] += all_values[k];
      touched[i / o.block] = 1;
    }
  }
  stats.blocks_union = std::count(touched.begin(), touched.end(), uint8_t{1});
  return stats;
}

}  // namespace dtrain::sparse
