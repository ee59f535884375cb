// The training schemes (internal to train/): one file each, over the shared loop (loop.h).
#pragma once

#include <memory>

#include "dtrain/reduce/reducer.h"
#include "loop.h"

namespace dtrain::train {

// --algorithm sync (sync_sgd.cc).
std::unique_ptr<Scheme> make_sync_scheme(Run& run);
// --algorithm local:... (local_sgd.cc).
std::unique_ptr<Scheme> make_local_sgd_scheme(Run& run);

// --model-parallel K (model_parallel.cc): replicas of a partitioned mlp, K ranks each, trained
// synchronously with their own loop (no engine: each partition averages its gradients itself).
TrainResult train_model_parallel(const TrainOptions& o, comm::Group& g);

// A reducer's figures of its latest step (step_metrics and step_vectors) as one JSON object, or
// null when it has none.
nlohmann::json reducer_figures(const reduce::GradientReducer& reducer);

}  // namespace dtrain::train
