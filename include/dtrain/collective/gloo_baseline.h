// Gloo's own collectives on the same Group, as the peer baseline in benchmarks and cross-checks.
#pragma once

#include "dtrain/collective/allreduce.h"

namespace dtrain::collective {

// Gloo's ring allreduce (gloo::allreduce with Algorithm::RING) on the group's Gloo context.
// Same options and results as allreduce(); segment_bytes is ignored.
void gloo_allreduce(const AllreduceOptions& options);

}  // namespace dtrain::collective
