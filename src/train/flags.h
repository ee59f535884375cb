// The training flags every rank must be given alike (internal to train/).
#pragma once

#include "dtrain/comm/group.h"
#include "dtrain/train/trainer.h"

namespace dtrain::train {

// Ranks started with different training flags would build different buckets and collectives
// and fail much later. Every rank contributes a hash per flag to one allgather, and all ranks
// throw the same InvalidArgument naming the first flag and rank that differ from rank 0.
void check_same_flags(const TrainOptions& options, comm::Group& group);

}  // namespace dtrain::train
