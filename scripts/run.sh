#!/usr/bin/env bash
# The main-job command: installs what is missing, builds (release), and runs dtrain.
#   scripts/run.sh                 the default job: dtrain train (4 local workers, MLP,
#                                  Fashion-MNIST, 2 epochs), run directory runs/default
#   scripts/run.sh ARGS...         dtrain ARGS... (e.g. train --model cnn, bench allreduce)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build build -j "$(nproc)" --target dtrain
if [[ $# -eq 0 ]]; then
  set -- train --out runs/default
fi
exec build/dtrain "$@"
