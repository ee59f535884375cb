#!/usr/bin/env bash
# PyTorch DDP with dtrain's comm hooks against DDP's default allreduce: 4 ranks of
# bench/ddp_hooks.py under bench/netns.sh, one run per hook, then a table (samples/s, the ratio
# to the default hook, test accuracy after the epochs, MB sent per rank).
#   bench/ddp_hooks.sh [--rate 100mbit] [--epochs 2] [--hooks default,exdyna:0.01,...] [--out DIR]
#                      [-- extra ddp_hooks.py flags]
# Needs the Python package built (build/python) and Debian's python3-torch.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=100mbit
epochs=2
hooks="default,exdyna:0.01,omnireduce,topk:0.01"
out=runs/ddp-hooks
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --hooks) hooks=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: bench/ddp_hooks.sh [--rate R] [--epochs N] [--hooks LIST] [--out DIR] [-- flags]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
export PYTHONPATH=$PWD/build/python OMP_NUM_THREADS=1
results=$out/results.jsonl
: >"$results"
IFS=, read -r -a list <<<"$hooks"
for h in "${list[@]}"; do
  echo "== hook $h, $rate, $epochs epochs" >&2
  bench/netns.sh -n 4 -r "$rate" -p ddph -- /usr/bin/python3 bench/ddp_hooks.py --hook "$h" \
    --epochs "$epochs" "${extra[@]}" | tee -a "$out/log.txt" | grep '^{' >>"$results"
done
/usr/bin/python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = next((r for r in rows if r["hook"] == "default"), None)
print("| hook | samples/s | vs default | test accuracy | vs default (points) | MB sent/rank |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    ratio = "%.2fx" % (r["samples_per_s"] / base["samples_per_s"]) if base else "-"
    dacc = "%+.2f" % (100 * (r["test_accuracy"] - base["test_accuracy"])) if base else "-"
    mb = "-" if r["mb_sent_per_rank"] is None else "%.1f" % r["mb_sent_per_rank"]
    print("| %s | %.0f | %s | %.2f%% | %s | %s |" % (r["hook"], r["samples_per_s"], ratio,
          100 * r["test_accuracy"], dacc, mb))
PY
