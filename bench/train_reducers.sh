#!/usr/bin/env bash
# Trains the same model with several --reduce specs (same seed, same epochs) on loopback or under
# bench/netns.sh, keeps every run directory, and prints one table: test accuracy, MB sent per
# rank, samples/s and the reducer's own last step figures (density, compression ratio, ...);
# then `dtrain report` draws the plots (loss vs time, accuracy vs bytes, phases).
#   bench/train_reducers.sh [--netns RATE] [--model mlp] [--epochs 2] [--workers 4]
#                           [--reducers dense,fp16,topk:0.01,...] [--out DIR] [-- extra train flags]
# In --reducers, an item with '=' but no ':' continues the spec before it, so
#   --reducers dense,topk:0.01,exdyna:density=0.01,momentum=0.9   is three specs.
set -euo pipefail
cd "$(dirname "$0")/.."

netns=""
model="mlp"
epochs=2
workers=4
reducers="dense,fp16,topk:0.01,randomk:0.01,exdyna:0.01,qcs"
out=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --netns) netns="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --reducers) reducers="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: bench/train_reducers.sh [--netns RATE] [--model M] [--epochs N] [--workers N] [--reducers LIST] [--out DIR] [-- train flags]" >&2; exit 2 ;;
  esac
done
out=${out:-runs/reducers-$model-${netns:-loopback}}
mkdir -p "$out"

final() { grep '"kind":"final"' "$1" | grep -o "\"$2\":[0-9.e+-]*" | cut -d: -f2; }
# The last reduce record's figures (scalars only), "k=v" joined.
figures() {
  grep '"kind":"reduce"' "$1" | grep -v '\[' | tail -1 | tr -d '{}' | tr ',' '\n' |
    grep -v -E '"(kind|step)"' |
    sed -e 's/"//g' -e 's/:/=/' | awk -F= '{ printf "%s%s=%.4g", (NR > 1 ? " " : ""), $1, $2 }'
}

dirs=()
printf '%-26s %9s %12s %11s  %s\n' reduce accuracy "MB sent/rank" samples/s "reducer figures (last step)"
specs=()
IFS=, read -r -a items <<< "$reducers"
for item in "${items[@]}"; do
  if [[ "$item" == *=* && "$item" != *:* && ${#specs[@]} -gt 0 ]]; then
    specs[-1]+=",$item"
  else
    specs+=("$item")
  fi
done
for spec in "${specs[@]}"; do
  dir="$out/${spec//[:=,]/_}"
  rm -rf "$dir"
  args=(train --model "$model" --reduce "$spec" --epochs "$epochs" --quiet --out "$dir" "${extra[@]}")
  status=0
  if [[ -n "$netns" ]]; then
    bench/netns.sh -n "$workers" -r "$netns" -- "$PWD/build/dtrain" "${args[@]}" > "$dir.log" 2>&1 || status=$?
  else
    build/dtrain "${args[@]}" --workers "$workers" > "$dir.log" 2>&1 || status=$?
  fi
  m="$dir/metrics.jsonl"
  if [[ $status -ne 0 ]] || ! grep -q '"kind":"final"' "$m" 2>/dev/null; then
    # A run that fails (e.g. diverges: non-finite gradients) is a result too: show why.
    printf '%-26s %9s  %s\n' "$spec" failed "$(grep -m1 'error:' "$dir.log" | sed 's/.*error: //')"
    continue
  fi
  acc=$(final "$m" test_accuracy); mb=$(final "$m" bytes_sent); sps=$(final "$m" samples_per_s)
  printf '%-26s %8.2f%% %12.1f %11.0f  %s\n' "$spec" "$(awk -v a="$acc" 'BEGIN { print 100 * a }')" \
    "$(awk -v b="$mb" 'BEGIN { print b / 1e6 }')" "$sps" "$(figures "$m")"
  dirs+=("$dir")
done
build/dtrain report "${dirs[@]}" --out "$out/report" > "$out/report.txt"
echo "runs and plots in $out (report: $out/report.txt)"
