// train(): checks the options, builds what every scheme shares (run.h), picks the training
// scheme of --algorithm (sync_sgd.cc, local_sgd.cc), restores --resume and runs the loop
// (loop.cc); --model-parallel runs its own (model_parallel.cc).
#include "dtrain/train/trainer.h"

#include "dtrain/train/local_sgd_schedule.h"
#include "flags.h"
#include "schemes.h"

namespace dtrain::train {

TrainResult train(const TrainOptions& o, comm::Group& g) {
  validate(o);
  check_same_flags(o, g);
  if (o.model_parallel > 1) return train_model_parallel(o, g);
  Run run(o, g);
  auto scheme = LocalSgdSchedule::parse(o.algorithm).local ? make_local_sgd_scheme(run)
                                                           : make_sync_scheme(run);
  CheckpointMeta start;
  if (!o.resume.empty()) start = scheme->resume(o.resume);
  run.start(o.resume.empty() || scheme->broadcast_at_start());
  return run_loop(run, *scheme, start);
}

}  // namespace dtrain::train
