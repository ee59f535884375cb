// Ring allreduce and reduce-scatter.
//
// Works as follows. After the call descriptors are checked around the ring (handshake.h), the
// buffer is split into N nearly equal chunks. A reducing ring pass (ring.h) leaves rank r with
// the fully reduced chunk r after N-1 steps; kAvg scales that one chunk (1/N of the work); a
// gathering pass then circulates the reduced chunks for N-1 more steps. Each rank sends and
// receives 2(N-1)/N of the buffer, the bandwidth-optimal amount. Segments (default 512 KiB)
// pipeline the steps so a large buffer keeps both directions of every link busy.
// Reduce-scatter is the first pass alone, on a scratch copy of the input, with per-rank counts.
#include "dtrain/collective/allreduce.h"

#include <cstring>
#include <numeric>

#include "dtrain/common/error.h"
#include "handshake.h"
#include "ring.h"

namespace dtrain::collective {

void allreduce(const AllreduceOptions& o) {
  DT_ENFORCE(o.group != nullptr, "allreduce: no group");
  comm::Group& g = *o.group;
  if (o.input.data != nullptr) {
    DT_ENFORCE(o.input.count == o.output.count && o.input.dtype == o.output.dtype,
               "allreduce: input has ", o.input.count, " ", name(o.input.dtype), " but output has ",
               o.output.count, " ", name(o.output.dtype));
  }
  DT_ENFORCE(o.output.data != nullptr || o.output.count == 0, "allreduce: output is null");
  const uint64_t tag = o.tag ? o.tag : g.next_tag();
  const auto deadline = g.deadline(o.timeout);
  if (o.input.data != nullptr && o.input.data != o.output.data && o.output.count > 0) {
    std::memmove(o.output.data, o.input.data, o.output.nbytes());
  }
  const ReduceFn fn = reduce_fn(o.output.dtype, o.op);
  detail::handshake(g, tag, deadline,
                    {detail::kAllreduce, static_cast<uint32_t>(o.output.dtype),
                     static_cast<uint32_t>(o.op), -1, o.output.count, 0});
  const int n = g.size();
  if (n == 1 || o.output.count == 0) return;

  const size_t elem = element_size(o.output.dtype);
  auto layout = detail::RingLayout::even(o.output.count, n);
  const size_t seg = detail::segment_elems_for(layout, elem, o.segment_bytes, n, 2);
  detail::RingPass pass{&g, tag, deadline, "allreduce", o.output.bytes(), elem, &layout, seg};
  pass.reduce = fn;
  pass.shift = -1;
  pass.sub_base = 1;
  detail::run_ring_pass(pass);
  if (o.op == ReduceOp::kAvg) {
    const int r = g.rank();
    scale_down(o.output.bytes() + layout.offset[r] * elem, layout.count[r], o.output.dtype, n);
  }
  pass.reduce = nullptr;
  pass.shift = 0;
  pass.sub_base = 1 + detail::subs_per_pass(layout, seg, n);
  detail::run_ring_pass(pass);
}

void reduce_scatter(const ReduceScatterOptions& o) {
  DT_ENFORCE(o.group != nullptr, "reduce_scatter: no group");
  comm::Group& g = *o.group;
  const int n = g.size();
  const int r = g.rank();
  DT_ENFORCE(o.input.dtype == o.output.dtype, "reduce_scatter: input is ", name(o.input.dtype),
             " but output is ", name(o.output.dtype));
  detail::RingLayout layout;
  if (o.counts.empty()) {
    layout = detail::RingLayout::even(o.input.count, n);
  } else {
    DT_ENFORCE(o.counts.size() == static_cast<size_t>(n), "reduce_scatter: ", o.counts.size(),
               " counts given for a group of size ", n);
    size_t total = std::accumulate(o.counts.begin(), o.counts.end(), size_t{0});
    DT_ENFORCE(total == o.input.count, "reduce_scatter: counts add up to ", total,
               " but input has ", o.input.count, " elements");
    layout = detail::RingLayout::from_counts(o.counts);
  }
  DT_ENFORCE(o.output.count == layout.count[r], "reduce_scatter: rank ", r, " output has ",
             o.output.count, " elements, its block has ", layout.count[r]);
  DT_ENFORCE(o.input.data != nullptr || o.input.count == 0, "reduce_scatter: input is null");
  const uint64_t tag = o.tag ? o.tag : g.next_tag();
  const auto deadline = g.deadline(o.timeout);
  const ReduceFn fn = reduce_fn(o.output.dtype, o.op);
  detail::handshake(
      g, tag, deadline,
      {detail::kReduceScatter, static_cast<uint32_t>(o.output.dtype), static_cast<uint32_t>(o.op),
       -1, o.input.count, detail::hash_counts(layout.count)});
  const size_t elem = element_size(o.output.dtype);
  std::byte* work = g.scratch(o.input.nbytes(), 1);
  if (o.input.count > 0) std::memcpy(work, o.input.data, o.input.nbytes());
  if (n > 1) {
    const size_t seg = detail::segment_elems_for(layout, elem, o.segment_bytes, n, 1);
    detail::RingPass pass{&g, tag, deadline, "reduce_scatter", work, elem, &layout, seg};
    pass.reduce = fn;
    pass.shift = -1;
    detail::run_ring_pass(pass);
  }
  if (o.output.count == 0) return;
  std::memcpy(o.output.data, work + layout.offset[r] * elem, o.output.nbytes());
  if (o.op == ReduceOp::kAvg) scale_down(o.output.data, o.output.count, o.output.dtype, n);
}

}  // namespace dtrain::collective
