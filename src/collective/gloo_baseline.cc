// Gloo's ring allreduce as a peer baseline. Gloo reports failures its own way (an IoException
// that also closes every connection of the context), so an error here poisons our group too.
#include "dtrain/collective/gloo_baseline.h"

#include <gloo/allreduce.h>
#include <gloo/math.h>

#include <cstring>

#include "dtrain/common/error.h"

namespace dtrain::collective {
namespace {

using GlooFn = void (*)(void*, const void*, const void*, size_t);

template <typename T>
GlooFn gloo_fn(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMin:
      return &gloo::min<T>;
    case ReduceOp::kMax:
      return &gloo::max<T>;
    default:
      return &gloo::sum<T>;
  }
}

template <typename T>
void run(const AllreduceOptions& o, uint64_t tag) {
  gloo::AllreduceOptions g(o.group->gloo_context());
  g.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
  if (o.input.data != nullptr && o.input.data != o.output.data) {
    g.setInput(const_cast<T*>(static_cast<const T*>(o.input.data)), o.input.count);
  }
  g.setOutput(static_cast<T*>(o.output.data), o.output.count);
  g.setReduceFunction(gloo_fn<T>(o.op));
  g.setTag(static_cast<uint32_t>(tag));
  g.setTimeout(o.timeout.count() > 0 ? o.timeout : o.group->timeout());
  gloo::allreduce(g);
}

}  // namespace

void gloo_allreduce(const AllreduceOptions& o) {
  DT_ENFORCE(o.group != nullptr, "gloo_allreduce: no group");
  comm::Group& grp = *o.group;
  grp.check_usable();
  const uint64_t tag = o.tag ? o.tag : grp.next_tag();
  if (grp.size() == 1 || o.output.count == 0) {
    if (o.input.data != nullptr && o.input.data != o.output.data && o.output.count > 0) {
      std::memmove(o.output.data, o.input.data, o.output.nbytes());
    }
    return;
  }
  try {
    switch (o.output.dtype) {
      case DataType::kFloat32:
        run<float>(o, tag);
        break;
      case DataType::kFloat64:
        run<double>(o, tag);
        break;
      case DataType::kInt32:
        run<int32_t>(o, tag);
        break;
      case DataType::kInt64:
        run<int64_t>(o, tag);
        break;
      case DataType::kFloat16:
        throw InvalidArgument("gloo allreduce baseline: float16 is not supported (our ring is)");
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    grp.fail(comm::Group::FailKind::kIo, -1,
             detail::concat("gloo allreduce (tag ", tag, ") on rank ", grp.rank(), ": ", e.what()));
  }
  if (o.op == ReduceOp::kAvg) scale_down(o.output.data, o.output.count, o.output.dtype, grp.size());
}

}  // namespace dtrain::collective
