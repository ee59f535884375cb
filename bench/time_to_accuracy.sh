#!/usr/bin/env bash
# Time to accuracy: trains the same model under several settings (same seed and data order) on
# loopback or under bench/netns.sh, each with --target-accuracy and --eval-every, and prints one
# table: training time to the target (the second of two consecutive evaluations at or above it;
# evaluation time excluded), final accuracy, MB sent per rank, communication rounds, samples/s,
# the mean density sent (sparsifiers) and the evaluation time kept off the clock; then `dtrain
# report` draws the plots (accuracy against wall time among them).
#   bench/time_to_accuracy.sh [--netns RATE] [--workers 4] [--target 0.85] [--eval-every 50]
#       [--out DIR] --run "LABEL|TRAIN FLAGS" [--run ...] [-- flags for every run]
# e.g.
#   bench/time_to_accuracy.sh --netns 100mbit \
#     --run "sync dense|--optimizer momentum" \
#     --run "local H=4|--optimizer momentum --algorithm local:H=4" \
#     -- --model mlp --lr 0.1 --epochs 3
# A run that gives its own --workers (and --servers, for --algorithm downpour) runs on that many
# ranks (workers + servers namespaces under --netns).
set -euo pipefail
cd "$(dirname "$0")/.."

netns=""
workers=4
target=0.85
eval_every=50
out=""
runs=()
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --netns) netns="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --target) target="$2"; shift 2 ;;
    --eval-every) eval_every="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --run) runs+=("$2"); shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) sed -n '2,15p' "$0" >&2; exit 2 ;;
  esac
done
[[ ${#runs[@]} -gt 0 ]] || { echo "bench/time_to_accuracy.sh: give at least one --run" >&2; exit 2; }
out=${out:-runs/time-to-accuracy-${netns:-loopback}}
mkdir -p "$out"

# A field of the final record (numbers and null).
final() { grep '"kind":"final"' "$1" | grep -o "\"$2\":[^,}]*" | cut -d: -f2 || true; }
# The last reduce record's mean_density, if any.
density() {
  { grep '"kind":"reduce"' "$1" | grep -o '"mean_density":[^,}]*' | tail -1 | cut -d: -f2; } || true
}

printf '%-30s %10s %9s %10s %8s %10s %8s %7s\n' setting "to target" accuracy "MB/rank" rounds \
  samples/s density eval_s
dirs=()
for run in "${runs[@]}"; do
  label=${run%%|*}
  read -r -a flags <<< "${run#*|}"
  # A run may give its own --workers (and --servers: Downpour's parameter-server ranks).
  ranks=$workers
  launch=(--workers "$workers")
  run_workers="" run_servers=0
  for ((i = 0; i + 1 < ${#flags[@]}; i++)); do
    case "${flags[i]}" in
      --workers) run_workers=${flags[i + 1]} ;;
      --servers) run_servers=${flags[i + 1]} ;;
    esac
  done
  if [[ -n "$run_workers" ]]; then
    ranks=$((run_workers + run_servers))
    launch=()
  fi
  dir="$out/$(printf '%s' "$label" | tr -c 'A-Za-z0-9_.-' '_')"
  rm -rf "$dir"
  args=(train "${extra[@]}" "${flags[@]}" --target-accuracy "$target" --eval-every "$eval_every"
        --quiet --out "$dir")
  status=0
  if [[ -n "$netns" ]]; then
    bench/netns.sh -n "$ranks" -r "$netns" -- "$PWD/build/dtrain" "${args[@]}" > "$dir.log" 2>&1 || status=$?
  else
    build/dtrain "${args[@]}" "${launch[@]}" > "$dir.log" 2>&1 || status=$?
  fi
  m="$dir/metrics.jsonl"
  if [[ $status -ne 0 ]] || ! grep -q '"kind":"final"' "$m" 2>/dev/null; then
    printf '%-30s %10s  %s\n' "$label" failed "$(grep -m1 'error' "$dir.log" | cut -c1-100)"
    continue
  fi
  ttt=$(final "$m" time_to_target_s)
  [[ "$ttt" == null || -z "$ttt" ]] && ttt="-" || ttt=$(printf '%.1f s' "$ttt")
  d=$(density "$m"); [[ -z "$d" ]] && d="-" || d=$(printf '%.4f' "$d")
  printf '%-30s %10s %8.2f%% %10.1f %8s %10.0f %8s %7.1f\n' "$label" "$ttt" \
    "$(awk -v a="$(final "$m" test_accuracy)" 'BEGIN { print 100 * a }')" \
    "$(awk -v b="$(final "$m" bytes_sent)" 'BEGIN { print b / 1e6 }')" "$(final "$m" rounds)" \
    "$(final "$m" samples_per_s)" "$d" "$(final "$m" eval_s)"
  dirs+=("$dir")
done
if [[ ${#dirs[@]} -gt 0 ]]; then
  build/dtrain report "${dirs[@]}" --out "$out/report" > "$out/report.txt" || true
fi
echo "runs and plots in $out (report: $out/report.txt)"
