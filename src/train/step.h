// One training step (internal to train/): --accumulate micro-batches, each forward and backward
// into the engine's gradient memory, then the optimizer.
#pragma once

#include <torch/torch.h>

#include "run.h"

namespace dtrain::train {

struct StepResult {
  double loss = 0;       // mean over the step's micro-batches (this rank)
  bool applied = false;  // false: the step was skipped (non-finite gradient, --on-nonfinite skip)
  // Seconds per phase; `wait` is what finish() blocked after the last backward.
  double data_s = 0, forward_s = 0, backward_s = 0, wait_s = 0, optimizer_s = 0;
  double last_backward_s = 0;  // the last micro-batch's backward (the one that communicates)
};

// Step `step` on the micro-batches at position `s` of this rank's shard `index` (sample indices of
// the epoch). With `communicate`, the engine averages the gradients while backprop runs (the loss
// is scaled by 1/accumulate, so the step's gradient is the mean over all its samples) and the
// optimizer steps on the average; without, each rank steps on its own gradient (Local SGD).
StepResult train_step(Run& run, const torch::Tensor& index, int64_t s, int64_t step,
                      bool communicate);

}  // namespace dtrain::train
