#!/usr/bin/env bash
# Runs an example program as N local ranks (dtrain's environment, a fresh file rendezvous) and
# fails if any rank fails:  examples/run_ranks.sh N PROGRAM [ARGS...]
set -euo pipefail
n=$1
shift
rdzv=$(mktemp -d)
trap 'rm -rf "$rdzv"' EXIT
pids=()
for ((r = 0; r < n; r++)); do
  DTRAIN_RANK=$r DTRAIN_WORLD_SIZE=$n DTRAIN_RENDEZVOUS="file://$rdzv" DTRAIN_HOST=127.0.0.1 \
    DTRAIN_RUN_ID="example-$$" "$@" &
  pids+=($!)
done
# The first rank to fail takes the others down (they would wait out their group timeout).
status=0
for ((i = 0; i < n; i++)); do
  if ! wait -n; then
    status=1
    kill "${pids[@]}" 2>/dev/null || true
  fi
done
exit $status
