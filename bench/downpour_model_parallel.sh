#!/usr/bin/env bash
# Downpour with partitioned replicas against unpartitioned ones: for each setting "W K PARTITION"
# (W replica ranks, --model-parallel K) trains the same Downpour job --reps times and prints one
# line per run: samples/s, final test accuracy (the shards' parameters), MB crossing partitions
# and MB sent by rank 0, time, replicas lost.
#   bench/downpour_model_parallel.sh [--reps 2] [--servers 1] [--out DIR]
#       [--settings "1 1 neurons;2 2 neurons;2 2 layers;2 1 neurons;4 2 neurons;4 2 layers"]
#       [-- flags for every run]
set -euo pipefail
cd "$(dirname "$0")/.."

reps=2 servers=1 out=runs/downpour-model-parallel
settings="1 1 neurons;2 2 neurons;2 2 layers;2 1 neurons;4 2 neurons;4 2 layers"
extra=(--epochs 2)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reps) reps="$2"; shift 2 ;;
    --servers) servers="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --settings) settings="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) sed -n '2,7p' "$0" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
bin="$PWD/build/dtrain"
printf "%-4s %-22s %10s %8s %12s %12s %7s %s\n" rep setting samples/s acc% MB_crossing MB_sent time_s lost
for ((rep = 1; rep <= reps; ++rep)); do
  IFS=';' read -ra list <<< "$settings"
  for s in "${list[@]}"; do
    read -r w k p <<< "$s"
    dir="$out/w${w}k${k}${p}.$rep"
    rm -rf "$dir"
    "$bin" train --algorithm downpour --workers "$w" --servers "$servers" --model-parallel "$k" \
      --partition "$p" --quiet --out "$dir" "${extra[@]}" > "$dir.log" 2>&1 ||
      { echo "run $dir failed; see $dir.log" >&2; exit 1; }
    tail -n 1 "$dir/metrics.jsonl" | python3 -c "
import json, sys
j = json.load(sys.stdin)
print('%-4s %-22s %10.0f %8.2f %12.1f %12.1f %7.1f %s' % ('$rep', 'W=$w K=$k $p',
      j['samples_per_s'], 100 * j['test_accuracy'], j.get('bytes_crossing_partitions', 0) / 1e6,
      j['bytes_sent'] / 1e6, j['time_s'], j['replicas_lost']))"
  done
done
