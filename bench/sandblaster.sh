#!/usr/bin/env bash
# Sandblaster L-BFGS (issue 16): time per batch with one replica slowed 3x, with portions and
# backup tasks against a static split of the batch; then loss against wall time for Sandblaster,
# synchronous L-BFGS (the same coordinator with a static split: one portion per replica, no
# backups) and synchronous SGD, on logreg and mlp.
#
#   bench/sandblaster.sh OUTDIR [REPEATS]      (DTRAIN=path/to/dtrain to pick the binary)
#
# OUTDIR/table.txt: median time per batch of every setting (median over the batches of a run,
# then over REPEATS runs) and its ratio to the same method without the slow replica.
# OUTDIR/plot-<model>/: `dtrain report` of the three methods (loss against time).
set -euo pipefail
DTRAIN=${DTRAIN:-build/dtrain}
OUT=${1:?usage: bench/sandblaster.sh OUTDIR [REPEATS]}
REPEATS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

run() {
  local name=$1
  shift
  rm -rf "${OUT:?}/$name"
  if ! "$DTRAIN" train --quiet --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1; then
    echo "run $name failed (dtrain train $*): see $OUT/$name.log" >&2
    exit 1
  fi
  if grep -qE "rank [0-9]+\)? failed" "$OUT/$name.log"; then  # a rank that did not end cleanly
    echo "run $name: a rank failed (dtrain train $*): see $OUT/$name.log" >&2
    exit 1
  fi
}

data_of() {
  case $1 in
    logreg) echo "--model logreg --l2 1e-4" ;;               # all 60,000 images per batch
    mlp) echo "--model mlp --train-subset 6000 --l2 1e-4" ;;  # 784-512-256-10
  esac
}

# 1) Time per batch: W replicas, the last one slowed 3x (it sleeps twice its compute time).
for rep in $(seq 1 "$REPEATS"); do
  for model in logreg mlp; do
    for W in 4 2; do
      common="--algorithm sandblaster --workers $W --servers 2 $(data_of $model) --epochs 10"
      run "$model-w$W-portions-r$rep" $common --portions $((8 * W))
      run "$model-w$W-portions-slow-r$rep" $common --portions $((8 * W)) --slow-rank $((W - 1)):3
      run "$model-w$W-static-r$rep" $common --portions "$W" --no-backup
      run "$model-w$W-static-slow-r$rep" $common --portions "$W" --no-backup --slow-rank $((W - 1)):3
    done
  done
done
python3 "$HERE/sandblaster_table.py" "$OUT" | tee "$OUT/table.txt"

# 2) Loss against wall time, 4 workers each.
for model in logreg mlp; do
  run "curve-$model-sandblaster" --algorithm sandblaster --workers 4 --servers 2 \
    $(data_of $model) --epochs 60 --portions 32
  run "curve-$model-lbfgs-static" --algorithm sandblaster --workers 4 --servers 2 \
    $(data_of $model) --epochs 60 --portions 4 --no-backup
  subset=""
  [ "$model" = mlp ] && subset="--train-subset 6000"
  run "curve-$model-sgd" --workers 4 --model $model $subset --optimizer sgd --lr 0.1 \
    --batch-size 64 --epochs 8 --log-every 10
  "$DTRAIN" report "$OUT/curve-$model-sandblaster" "$OUT/curve-$model-lbfgs-static" \
    "$OUT/curve-$model-sgd" --out "$OUT/plot-$model" | tee "$OUT/report-$model.txt"
done
