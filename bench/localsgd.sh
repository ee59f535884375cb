#!/usr/bin/env bash
# Stich's convex Local SGD experiment (`dtrain bench localsgd`), the default sweep and its two
# companions, into a results directory:
#   bench/localsgd.sh [RESULTS_DIR] [-- extra flags for every run]
# RESULTS_DIR (default docs/results/$(date +%F)) receives localsgd-convex.txt (the commands, the
# commit and the three runs' output) and localsgd-convex/ (CSV and PNGs of the headline run; the
# PNGs of the weighted-average run under weighted/, whose CSV is dropped: its tables are in the
# text, and the headline CSV is the one the summary is read from). The runs:
#   1. the default sweep: w8a-like problem, K = 1,2,4,8, H = 1..2048, T = 8192 and 32768, b = 1,
#      step sizes decay:32,500, the averaged model measured;
#   2. the same with --iterate weighted (the paper's (a + t)^2-weighted average of iterates);
#   3. the same with --lr-schedule theory (eta_t = 4 / (mu (a + t)), a > 16 kappa), text only.
set -euo pipefail
cd "$(dirname "$0")/.."

results="docs/results/$(date +%F)"
if [[ $# -gt 0 && "$1" != "--" ]]; then results="$1"; shift; fi
extra=()
if [[ $# -gt 0 ]]; then
  [[ "$1" == "--" ]] || { echo "usage: bench/localsgd.sh [RESULTS_DIR] [-- flags]" >&2; exit 2; }
  shift
  extra=("$@")
fi
dtrain="${DTRAIN:-build/dtrain}"
[[ -x "$dtrain" ]] || { echo "no $dtrain: build the dtrain target (with LibTorch) first" >&2; exit 2; }

out="$results/localsgd-convex"
text="$results/localsgd-convex.txt"
mkdir -p "$out/weighted"
more="${extra[*]:+ ${extra[*]}}"
runs=(
  "bench localsgd --out $out$more"
  "bench localsgd --iterate weighted --out $out/weighted$more"
  "bench localsgd --lr-schedule theory$more"
)
{
  echo "# dtrain bench localsgd: Stich, Local SGD Converges Fast and Communicates Little (ICLR 2019)"
  echo "# commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ' (working tree with uncommitted changes)'), $(date -u +%FT%TZ), $(nproc) cores"
  echo "# wrapper: bench/localsgd.sh $results${extra:+ -- ${extra[*]}}"
  for r in "${runs[@]}"; do echo "# \$ $dtrain $r"; done
  echo "# Runs 1 and 2 use the default steps decay:32,500 (eta_t = 32 * 500 / (500 + t)); run 3 the"
  echo "# spec's theory steps 4 / (mu (a + t)), a = 16 kappa + 1 ~ 4n: there eta_t ~ 1 for all"
  echo "# T << a, the runs stay in the bias-dominated phase, and neither K nor H matters (see its"
  echo "# claim (1)). The smaller T is the first T steps of the larger-T runs (steps do not depend on T)."
  echo "# Run 1 measures the averaged model, run 2 the paper's (a + t)^2-weighted average of iterates."
} >"$text"
for r in "${runs[@]}"; do
  {
    echo
    echo "################################################################################"
    echo "\$ $dtrain $r"
    echo
  } >>"$text"
  start=$SECONDS
  # shellcheck disable=SC2086  # $r is a flag list
  "$dtrain" $r >>"$text" 2>"$out/.progress.log" || { cat "$out/.progress.log" >&2; exit 1; }
  echo "(wall $((SECONDS - start)) s)" >>"$text"
done
rm -f "$out/.progress.log" "$out/weighted/localsgd.csv"
echo "wrote $text and $out/"
