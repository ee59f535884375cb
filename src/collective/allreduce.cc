// Allreduce (dispatch by size) and ring reduce-scatter.
//
// Works as follows. Each call first settles which algorithm runs: the one the options force, or
// for kAuto the one the size switch picks for this buffer (allreduce_switch.cc), so every rank
// that makes the same call runs the same algorithm. With verify set the ranks then check their
// call descriptors around the ring (handshake.h), one round trip; without it the descriptor's hash
// is folded into every slot instead, so a call that disagrees can only time out, never pair.
//
// The ring (ring.h) runs reduce-scatter and allgather as one pipelined ring of 2(N-1) steps over
// N chunks: rank r ends the first half owning the fully reduced chunk r, divides it for kAvg (1/N
// of the work), and the second half circulates the reduced chunks. Each rank sends and receives
// 2(N-1)/N of the buffer, the bandwidth-optimal amount; segments pipeline the steps so a large
// buffer keeps both directions of every link busy. Halving-doubling moves the same amount in
// 2 log2(N) rounds and recursive doubling the whole buffer in log2(N) rounds
// (halving_doubling.h): fewer messages, for the sizes where their count sets the time.
//
// Reduce-scatter is the ring's first half alone, on a scratch copy of the input, with per-rank
// counts.
#include "dtrain/collective/allreduce.h"

#include <cstring>
#include <numeric>

#include "dtrain/common/error.h"
#include "halving_doubling.h"
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
  const int n = g.size();
  const size_t elem = element_size(o.output.dtype);
  const AllreduceAlgorithm algorithm = o.algorithm == AllreduceAlgorithm::kAuto
                                           ? o.size_switch.pick(o.output.nbytes(), n)
                                           : o.algorithm;
  DT_ENFORCE(algorithm == AllreduceAlgorithm::kRing ||
                 algorithm == AllreduceAlgorithm::kHalvingDoubling ||
                 algorithm == AllreduceAlgorithm::kRecursiveDoubling,
             "allreduce: unknown algorithm ", static_cast<uint32_t>(algorithm));
  detail::RingLayout layout;
  size_t seg = 0;
  if (algorithm == AllreduceAlgorithm::kRing) {
    layout = detail::RingLayout::even(o.output.count, n);
    seg = detail::segment_elems_for(layout, elem, o.segment_bytes, 2 * (n - 1));
  }
  const uint64_t salt = detail::agree(
      g, tag, deadline,
      {detail::kAllreduce, static_cast<uint32_t>(o.output.dtype), static_cast<uint32_t>(o.op), -1,
       o.output.count, 0, static_cast<uint32_t>(algorithm), 0, seg},
      o.verify);
  if (n == 1 || o.output.count == 0) return;
  const int avg_divisor = o.op == ReduceOp::kAvg ? n : 0;

  if (algorithm != AllreduceAlgorithm::kRing) {
    detail::ButterflyCall call{
        &g, tag, salt, deadline, o.output.bytes(), o.output.count, o.output.dtype, fn, avg_divisor};
    if (algorithm == AllreduceAlgorithm::kHalvingDoubling) {
      detail::halving_doubling(call);
    } else {
      detail::recursive_doubling(call);
    }
    return;
  }
  detail::RingPass pass{&g, tag, deadline, "allreduce", o.output.bytes(), elem, &layout, seg};
  pass.reduce = fn;
  pass.reduce_steps = n - 1;
  pass.gather_steps = n - 1;
  pass.shift = -1;
  pass.salt = salt;
  pass.avg_divisor = avg_divisor;
  pass.dtype = o.output.dtype;
  detail::run_ring(pass);
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
  const size_t elem = element_size(o.output.dtype);
  const size_t seg = detail::segment_elems_for(layout, elem, o.segment_bytes, n - 1);
  detail::handshake(
      g, tag, deadline,
      {detail::kReduceScatter, static_cast<uint32_t>(o.output.dtype), static_cast<uint32_t>(o.op),
       -1, o.input.count, detail::hash_counts(layout.count), 0, 0, seg});
  std::byte* work = g.scratch(o.input.nbytes(), 1);
  if (o.input.count > 0) std::memcpy(work, o.input.data, o.input.nbytes());
  if (n > 1) {
    detail::RingPass pass{&g, tag, deadline, "reduce_scatter", work, elem, &layout, seg};
    pass.reduce = fn;
    pass.reduce_steps = n - 1;
    pass.shift = -1;
    detail::run_ring(pass);
  }
  if (o.output.count == 0) return;
  std::memcpy(o.output.data, work + layout.offset[r] * elem, o.output.nbytes());
  if (o.op == ReduceOp::kAvg) scale_down(o.output.data, o.output.count, o.output.dtype, n);
}

}  // namespace dtrain::collective
