#!/usr/bin/env bash
# Downpour kill-and-rejoin: trains the same Downpour job undisturbed and with one replica killed
# (SIGKILL) at --kill-at of the run and a replacement started into the job at --restart-at, with
# the command the launcher prints; over --seeds, prints final accuracy, time and the shards'
# record (updates, replicas lost) of each run, and the two means.
#   bench/downpour_rejoin.sh [--workers 4] [--servers 1] [--victim 3] [--kill-at 0.3]
#       [--restart-at 0.5] [--seeds 1,2,3] [--out DIR] [-- flags for every run]
# "Of the run" is replica 0's step count (its step records in metrics.jsonl, --log-every 10).
set -euo pipefail
cd "$(dirname "$0")/.."

workers=4 servers=1 victim=3 kill_at=0.3 restart_at=0.5 seeds=1,2,3 out=runs/downpour-rejoin
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --servers) servers="$2"; shift 2 ;;
    --victim) victim="$2"; shift 2 ;;
    --kill-at) kill_at="$2"; shift 2 ;;
    --restart-at) restart_at="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) sed -n '2,8p' "$0" >&2; exit 2 ;;
  esac
done
(( victim > 0 && victim < workers )) || { echo "--victim must be a replica other than 0" >&2; exit 2; }
mkdir -p "$out"
bin="$PWD/build/dtrain"

# The latest step of replica 0's step records, or 0.
lead_step() { grep -o '"kind":"step".*' "$1/metrics.jsonl" 2>/dev/null | grep -o '"step":[0-9]*' | tail -1 | cut -d: -f2 || true; }
final() { grep '"kind":"final"' "$1" | grep -o "\"$2\":[^,}]*" | cut -d: -f2 || true; }
# Waits until replica 0 has reached `step`; fails if the job ended first.
wait_step() {
  local dir=$1 step=$2 pid=$3
  while :; do
    local s; s=$(lead_step "$dir"); s=${s:-0}
    (( s >= step )) && return 0
    kill -0 "$pid" 2>/dev/null || { echo "the job ended before step $step" >&2; return 1; }
    sleep 0.05
  done
}
# The pid of the launcher's child with DTRAIN_RANK=rank.
child_of() {
  local launcher=$1 rank=$2
  for c in $(cat "/proc/$launcher/task/$launcher/children" 2>/dev/null); do
    if tr '\0' '\n' < "/proc/$c/environ" 2>/dev/null | grep -qx "DTRAIN_RANK=$rank"; then
      echo "$c"; return 0
    fi
  done
  return 1
}

# time_s: replica 0's training time (its own steps); job_s: the whole job, launch to end.
printf '%-22s %6s %9s %8s %8s %9s %14s %s\n' run seed accuracy time_s job_s updates replicas_lost note
declare -A acc_sum=([undisturbed]=0 [kill-and-rejoin]=0)
n=0
IFS=, read -r -a seed_list <<< "$seeds"
for seed in "${seed_list[@]}"; do
  for kind in undisturbed kill-and-rejoin; do
    dir="$out/$kind-seed$seed"
    rm -rf "$dir"
    args=(train --algorithm downpour --workers "$workers" --servers "$servers" --seed "$seed"
          --log-every 10 --quiet "${extra[@]}" --out "$dir")
    started=$(date +%s.%N)
    "$bin" "${args[@]}" > "$dir.log" 2>&1 &
    launcher=$!
    note=""
    if [[ $kind == kill-and-rejoin ]]; then
      # Replica 0's steps in the whole run: those of the undisturbed run of this seed.
      total=$undisturbed_steps
      kill_step=$(python3 -c "print(int($total * $kill_at))")
      restart_step=$(python3 -c "print(int($total * $restart_at))")
      wait_step "$dir" "$kill_step" "$launcher"
      victim_pid=$(child_of "$launcher" "$victim")
      kill -9 "$victim_pid"
      # The launcher's line: "... To start a replacement into this job: VARS COMMAND".
      until grep -q "To start a replacement into this job" "$dir.log"; do sleep 0.05; done
      line=$(grep "To start a replacement into this job" "$dir.log" | head -1)
      read -r -a envs <<< "$(sed -E 's/.*into this job: (DTRAIN_RANK=[^ ]+ ([A-Z_]+=[^ ]+ )*).*/\1/' <<< "$line")"
      wait_step "$dir" "$restart_step" "$launcher"
      env "${envs[@]}" "$bin" "${args[@]}" > "$dir.replacement.log" 2>&1 &
      replacement=$!
      note="killed at step $kill_step, replacement at $restart_step of $total"
    fi
    status=0
    wait "$launcher" || status=$?
    [[ $kind == kill-and-rejoin ]] && { wait "$replacement" || status=$?; }
    job_s=$(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')")
    m="$dir/metrics.jsonl"
    if [[ $status -ne 0 ]] || ! grep -q '"kind":"final"' "$m"; then
      echo "$kind seed $seed failed (status $status); see $dir.log" >&2
      exit 1
    fi
    [[ $kind == undisturbed ]] && undisturbed_steps=$(final "$m" steps)
    acc=$(final "$m" test_accuracy)
    lost=$(grep '"kind":"final"' "$m" | grep -o '"replicas_lost":\[[^]]*\]' | cut -d: -f2)
    printf '%-22s %6s %8.2f%% %8.1f %8s %9s %14s %s\n' "$kind" "$seed" "$(python3 -c "print($acc*100)")" \
      "$(final "$m" time_s)" "$job_s" "$(final "$m" server_updates)" "$lost" "$note"
    acc_sum[$kind]=$(python3 -c "print(${acc_sum[$kind]} + $acc)")
  done
  n=$((n + 1))
done
for kind in undisturbed kill-and-rejoin; do
  printf 'mean accuracy, %s: %.2f%% over %d runs\n' "$kind" "$(python3 -c "print(${acc_sum[$kind]} / $n * 100)")" "$n"
done
