#!/usr/bin/env bash
# Iteration time of `dtrain train` per gradient schedule (single, wfbp, fused, mgwfbp), per model,
# with the share of communication hidden behind backprop, on loopback or under bench/netns.sh.
#   bench/train_schedules.sh [--netns RATE] [--models mlp,cnn,deep] [--steps N] [--workers N]
#                            [--schedules LIST] [--repeat K] [-- extra dtrain train flags]
# Models: mlp (784-512-256-10), cnn, deep (an MLP of 16 hidden layers of 64 units: many small
# layers, where merging matters). Each configuration trains N steps (default 200) from the same
# seed. "ms/step" is the median over --repeat runs of the steady iteration time: the time between
# the step records at step 60 and at the last step, divided by the steps between them (past
# mgwfbp's warm-up and planning, which run as `single`). samples/s, comm and hidden seconds come
# from the final metrics record of the last run; mgwfbp also prints its predicted and measured
# backward+communication time per step.
set -euo pipefail
cd "$(dirname "$0")/.."

netns=""
models="mlp,cnn,deep"
steps=200
workers=4
repeat=1
schedules="single,wfbp,fused,mgwfbp"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --netns) netns="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --schedules) schedules="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: bench/train_schedules.sh [--netns RATE] [--models mlp,cnn,deep] [--steps N] [--workers N] [--schedules LIST] [--repeat K] [-- flags]" >&2; exit 2 ;;
  esac
done
(( steps > 80 )) || { echo "--steps must be > 80 (the steady window starts at step 60)" >&2; exit 2; }

out=$(mktemp -d /tmp/dtrain-sched-XXXXXX)
trap 'rm -rf "$out"' EXIT
field() { grep '"kind":"final"' "$1" | grep -o "\"$2\":[0-9.e+-]*" | cut -d: -f2; }
# Steady ms/step from the step records (log every 10 steps): (t_last - t_60) / (last - 60).
steady_ms() {
  grep '"kind":"step"' "$1" | awk '
    { match($0, /"step":[0-9]+/); s = substr($0, RSTART + 7, RLENGTH - 7) + 0
      match($0, /"time_s":[0-9.e+-]+/); t = substr($0, RSTART + 9, RLENGTH - 9) + 0
      if (s == 60) { s0 = s; t0 = t } last = s; tl = t }
    END { if (last > s0 && s0 > 0) printf "%.2f", 1000 * (tl - t0) / (last - s0); else print "nan" }'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

printf '%-5s %-10s %9s %12s %9s %9s %8s  %s\n' model schedule ms/step samples/s comm_s hidden_s hidden% mgwfbp
for model in ${models//,/ }; do
  case "$model" in
    deep) margs=(--model mlp --hidden 64,64,64,64,64,64,64,64,64,64,64,64,64,64,64,64) ;;
    *) margs=(--model "$model") ;;
  esac
  for sched in ${schedules//,/ }; do
    times=""
    for ((k = 0; k < repeat; ++k)); do
      dir="$out/$model-$sched-$k"
      args=(train "${margs[@]}" --schedule "$sched" --epochs 1 --max-steps "$steps"
            --test-subset 1000 --quiet --log-every 10 --out "$dir" "${extra[@]}")
      if [[ -n "$netns" ]]; then
        bench/netns.sh -n "$workers" -r "$netns" -- "$PWD/build/dtrain" "${args[@]}" > /dev/null
      else
        build/dtrain "${args[@]}" --workers "$workers" > /dev/null
      fi
      times="$times $(steady_ms "$dir/metrics.jsonl")"
    done
    m="$dir/metrics.jsonl"
    sps=$(field "$m" samples_per_s); comm=$(field "$m" comm_s); hid=$(field "$m" comm_hidden_s)
    pct=$(awk -v h="$hid" -v c="$comm" 'BEGIN { printf "%.0f", (c > 0 ? 100 * h / c : 0) }')
    note=""
    if [[ "$sched" == mgwfbp ]]; then
      note=$(awk -v p="$(field "$m" mgwfbp_predicted_s)" -v q="$(field "$m" mgwfbp_measured_s)" \
        'BEGIN { printf "bwd+comm predicted %.2f ms, measured %.2f ms (%+.0f%%)", 1000 * p, 1000 * q, (q > 0 ? 100 * (p / q - 1) : 0) }')
    fi
    printf '%-5s %-10s %9s %12.0f %9.2f %9.2f %7s%%  %s\n' "$model" "$sched" \
      "$(echo "$times" | median)" "$sps" "$comm" "$hid" "$pct" "$note"
  done
done
