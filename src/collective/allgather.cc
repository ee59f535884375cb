// Ring allgather and allgatherv.
//
// Works as follows. Each rank's block sits at its offset in the output (offsets are the prefix
// sums of the per-rank counts, equal counts for allgather). The counts are checked around the
// ring first (a hash of the whole vector travels in the descriptor), so a rank that disagrees is
// named instead of leaving its neighbour waiting for a block of another size. Then a gathering
// ring pass (ring.h): in step s rank r forwards block r - s to its right and receives block
// r - s - 1 from its left straight into place, segment by segment. Each rank receives exactly the
// other ranks' blocks once.
#include "dtrain/collective/allgather.h"

#include <cstring>
#include <numeric>

#include "dtrain/common/error.h"
#include "handshake.h"
#include "ring.h"

namespace dtrain::collective {
namespace {

void gather_ring(comm::Group& g, const CommonOptions& o, const char* op, uint32_t kind,
                 const ConstView& input, const View& output, const std::vector<size_t>& counts) {
  const int n = g.size();
  const int r = g.rank();
  DT_ENFORCE(counts.size() == static_cast<size_t>(n), op, ": ", counts.size(),
             " counts given for a group of size ", n);
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  DT_ENFORCE(output.count == total, op, ": output has ", output.count,
             " elements, the per-rank counts add up to ", total);
  DT_ENFORCE(output.data != nullptr || total == 0, op, ": output is null");
  auto layout = detail::RingLayout::from_counts(counts);
  const size_t elem = element_size(output.dtype);
  if (input.data != nullptr) {
    DT_ENFORCE(input.count == counts[r] && input.dtype == output.dtype, op, ": rank ", r,
               " input has ", input.count, " ", name(input.dtype), ", its block is ", counts[r],
               " ", name(output.dtype));
    std::byte* own = output.bytes() + layout.offset[r] * elem;
    if (input.count > 0 && input.data != own) std::memmove(own, input.data, input.nbytes());
  }
  const uint64_t tag = o.tag ? o.tag : g.next_tag();
  const auto deadline = g.deadline(o.timeout);
  const size_t seg = detail::segment_elems_for(layout, elem, o.segment_bytes, n - 1);
  detail::handshake(g, tag, deadline,
                    {kind, static_cast<uint32_t>(output.dtype), 0, -1, total,
                     detail::hash_counts(counts), 0, 0, seg});
  if (n == 1 || total == 0) return;
  detail::RingPass pass{&g, tag, deadline, op, output.bytes(), elem, &layout, seg};
  pass.gather_steps = n - 1;
  detail::run_ring(pass);
}

}  // namespace

void allgather(const AllgatherOptions& o) {
  DT_ENFORCE(o.group != nullptr, "allgather: no group");
  const int n = o.group->size();
  size_t c = o.input.data != nullptr ? o.input.count : o.output.count / n;
  DT_ENFORCE(o.output.count == c * n, "allgather: output has ", o.output.count,
             " elements, expected ", n, " x ", c);
  gather_ring(*o.group, o, "allgather", detail::kAllgather, o.input, o.output,
              std::vector<size_t>(n, c));
}

void allgatherv(const AllgathervOptions& o) {
  DT_ENFORCE(o.group != nullptr, "allgatherv: no group");
  gather_ring(*o.group, o, "allgatherv", detail::kAllgatherv, o.input, o.output, o.counts);
}

}  // namespace dtrain::collective
