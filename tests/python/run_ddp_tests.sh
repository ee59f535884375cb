#!/usr/bin/env bash
# The Python package's test: tests/python/ddp_hooks.py as 2 processes under torchrun.
#   tests/python/run_ddp_tests.sh PYTHON PACKAGE_DIR     (PACKAGE_DIR holds dtrain/, e.g. build/python)
# --redirects/--tee work around torch 1.13's launcher on Python 3.11.
set -euo pipefail
python=$1
export PYTHONPATH=$2${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1
here=$(dirname "$0")
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
"$python" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 2 \
  --redirects 2 --tee 2 --log_dir "$logs" "$here/ddp_hooks.py"
