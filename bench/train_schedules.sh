#!/usr/bin/env bash
# Samples/s of `dtrain train` per gradient schedule (single, wfbp, fused), per model, with the
# share of communication hidden behind backprop, on loopback or under bench/netns.sh.
#   bench/train_schedules.sh [--netns RATE] [--models mlp,cnn] [--steps N] [--workers N]
# Each configuration trains N steps (default 150) from the same seed; figures come from the run's
# final metrics record (samples/s over the whole run, communication busy and hidden seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

netns=""
models="mlp,cnn"
steps=150
workers=4
schedules="single,wfbp,fused"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --netns) netns="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --schedules) schedules="$2"; shift 2 ;;
    *) echo "usage: bench/train_schedules.sh [--netns RATE] [--models mlp,cnn] [--steps N] [--workers N] [--schedules LIST]" >&2; exit 2 ;;
  esac
done

out=$(mktemp -d /tmp/dtrain-sched-XXXXXX)
trap 'rm -rf "$out"' EXIT
field() { grep '"kind":"final"' "$1" | grep -o "\"$2\":[0-9.e+-]*" | cut -d: -f2; }

printf '%-5s %-10s %12s %10s %10s %9s\n' model schedule samples/s comm_s hidden_s hidden%
for model in ${models//,/ }; do
  for sched in ${schedules//,/ }; do
    dir="$out/$model-$sched"
    args=(train --model "$model" --schedule "$sched" --epochs 1 --max-steps "$steps"
          --test-subset 1000 --quiet --out "$dir")
    if [[ -n "$netns" ]]; then
      bench/netns.sh -n "$workers" -r "$netns" -- "$PWD/build/dtrain" "${args[@]}" > /dev/null
    else
      build/dtrain "${args[@]}" --workers "$workers" > /dev/null
    fi
    m="$dir/metrics.jsonl"
    sps=$(field "$m" samples_per_s); comm=$(field "$m" comm_s); hid=$(field "$m" comm_hidden_s)
    pct=$(awk -v h="$hid" -v c="$comm" 'BEGIN { printf "%.0f", (c > 0 ? 100 * h / c : 0) }')
    printf '%-5s %-10s %12.0f %10.2f %10.2f %8s%%\n' "$model" "$sched" "$sps" "$comm" "$hid" "$pct"
  done
done
