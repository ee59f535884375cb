// `dtrain train --resume DIR` continues a run with the settings it was started with: every
// setting recorded in DIR/config.json (model, data subset, optimizer, reducer, schedule, scheme,
// workers, ...) is taken from there unless given on the command line, so that
//   dtrain train --resume runs/a
// continues runs/a as it was, and `--resume runs/a --epochs 5` extends it. A flag given that
// contradicts the checkpoint is refused later, by the checkpoint's own checks (e.g. another
// --optimizer, named with both).
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "dtrain/train/trainer.h"

namespace dtrain::app {

// Fills the settings of `options` (and `workers`) that were not given on `cmd`'s command line
// from options.resume/config.json; returns the flags it took, e.g. {"--model logreg", ...}.
// Nothing when --resume is not given or the directory has no config.json (the resume then fails
// naming the missing checkpoint). A config.json that is not JSON, or holds a value of the wrong
// type, is an InvalidArgument naming the file and the key.
std::vector<std::string> take_settings_from_run(const CLI::App& cmd, train::TrainOptions& options,
                                                int& workers);

}  // namespace dtrain::app
