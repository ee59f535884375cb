#!/usr/bin/env bash
# The main-job command: installs what is missing, builds (release), and runs dtrain.
#   scripts/run.sh                 the default job
#   scripts/run.sh ARGS...         dtrain ARGS... (e.g. bench allreduce --workers 4 --sizes 64M)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build build -j "$(nproc)" --target dtrain
if [[ $# -eq 0 ]]; then
  set -- bench allreduce --workers 4 --sizes 4K,1M,64M
fi
exec build/dtrain "$@"
