#!/usr/bin/env bash
# The fault matrix: runs `dtrain train` (4 local ranks) with each reducer and each schedule, and
# Downpour, and sends SIGKILL or SIGSTOP to a random rank (0 included) at a random moment after
# the first checkpoint. For every run it records the exit status, the time from the signal to
# the launcher's end, the rank the launcher names and whether it is the right one, orphan
# processes (any rank still alive once the launcher is gone), and whether the run resumes from
# its last checkpoint (`--resume`, to the end of the run). Expected, per row:
#   synchronous schemes: the job fails (status != 0) naming the signalled rank within
#     --timeout + 10 s; no orphans; the checkpoint resumes.
#   Downpour, a replica signalled: the job finishes (status 0) without it, the launcher names it;
#     a server signalled: the job fails naming it within --timeout + 10 s. No orphans; the shards'
#     checkpoints resume.
#   bench/faults.sh [--runs 4] [--timeout 10] [--seed 1] [--out DIR] [--only REGEX (of the labels)]
#       [--downpour-runs 8]   (Downpour: ranks 0..3 with SIGKILL, then with SIGSTOP, in turn)
# Prints one line per run and a summary; exits 1 if any row is not as expected.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=4 downpour_runs=8 timeout=10 seed=1 out=runs/faults only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --downpour-runs) downpour_runs="$2"; shift 2 ;;
    *) sed -n '2,15p' "$0" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
bin="$PWD/build/dtrain"
RANDOM=$seed

# A small run that lasts a few seconds: 500 steps of an MLP on a Fashion-MNIST subset.
common=(--model mlp --hidden 128 --train-subset 16000 --test-subset 2000 --batch-size 32
        --epochs 4 --checkpoint-every 25 --quiet --timeout "$timeout")
settings=()
for reduce in dense omnireduce exdyna:density=0.01 topk:0.01 qcs; do
  for schedule in single wfbp fused:25 mgwfbp; do
    [[ $schedule == mgwfbp && $reduce != dense ]] && continue  # mgwfbp: dense only
    settings+=("$reduce $schedule|--workers 4 --reduce $reduce --schedule $schedule")
  done
done
settings+=("downpour 3R 1S|--algorithm downpour --workers 3 --servers 1 --lr 0.03")

now() { date +%s.%N; }
children() { cat "/proc/$1/task/$1/children" 2>/dev/null; }
rank_of() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n 's/^DTRAIN_RANK=//p'; }

printf '%-26s %3s %-4s %4s %6s %7s %-6s %-5s %-7s %-7s %s\n' setting run sig rank status \
  "t_err_s" named right orphan resumes verdict
total=0 bad=0
for setting in "${settings[@]}"; do
  label=${setting%%|*}
  read -r -a flags <<< "${setting#*|}"
  [[ -n $only && ! $label =~ $only ]] && continue
  downpour=0; [[ $label == downpour* ]] && downpour=1
  n_runs=$runs; ((downpour)) && n_runs=$downpour_runs
  for ((i = 1; i <= n_runs; i++)); do
    dir="$out/$(printf '%s' "$label" | tr -c 'A-Za-z0-9_.-' '_')-$i"
    rm -rf "$dir" "$dir.log"
    "$bin" train "${common[@]}" "${flags[@]}" --out "$dir" > "$dir.log" 2>&1 &
    launcher=$!
    # The first checkpoint: checkpoint.pt (synchronous) or a shard's file (Downpour).
    until compgen -G "$dir/checkpoint.pt" > /dev/null || compgen -G "$dir/shard-*.ps" > /dev/null; do
      kill -0 "$launcher" 2>/dev/null || break
      sleep 0.02
    done
    # Drawn here, not in $(...): a subshell's draws do not advance this shell's generator.
    r_delay=$RANDOM r_rank=$RANDOM r_sig=$RANDOM
    sleep "$(awk -v r=$r_delay 'BEGIN { printf "%.2f", r / 32767 * 1.5 }')"
    target=$((r_rank % 4))
    sig=KILL; ((r_sig % 2)) && sig=STOP
    if ((downpour)); then
      # Every role and signal in turn (replicas 0..2, the server), then again.
      target=$(((i - 1) % 4))
      sig=KILL; (((i - 1) / 4 % 2)) && sig=STOP
    fi
    pids=() victim=""
    for c in $(children "$launcher"); do
      pids+=("$c")
      [[ "$(rank_of "$c")" == "$target" ]] && victim=$c
    done
    if [[ -z $victim ]]; then
      wait "$launcher"
      printf '%-26s %3s %-4s %4s  the run ended before the signal; not counted\n' "$label" "$i" "$sig" "$target"
      continue
    fi
    kill -s "$sig" "$victim"
    signalled=$(now)
    status=0
    wait "$launcher" || status=$?
    t_err=$(awk -v a="$signalled" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    sleep 0.2
    orphans=0
    for p in "${pids[@]}"; do
      if [[ -e /proc/$p ]] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
        orphans=$((orphans + 1))
        kill -9 "$p" 2>/dev/null
      fi
    done
    # The rank the launcher names.
    if ((downpour)) && ((target < 3)); then
      named=$(grep -o 'replica [0-9]* (rank [0-9]*)' "$dir.log" | head -1 | grep -o 'rank [0-9]*' | cut -d' ' -f2)
      [[ -z $named ]] && named=$(grep -o 'job finished without replica(s) [0-9]*' "$dir.log" | grep -o '[0-9]*$')
      expect_status=0
    else
      named=$(grep -o 'job failed: rank [0-9]*' "$dir.log" | head -1 | grep -o '[0-9]*$')
      expect_status=1
    fi
    named=${named:--}
    right=no; [[ $named == "$target" ]] && right=yes
    # Resume from the last checkpoint to the end of the run.
    resumes=no
    if "$bin" train "${common[@]}" "${flags[@]}" --resume "$dir" > "$dir.resume.log" 2>&1 &&
       grep -q '"kind":"final"' "$dir/metrics.jsonl"; then
      resumes=yes
    fi
    ok=yes
    if ((expect_status)); then [[ $status -ne 0 ]] || ok=no; else [[ $status -eq 0 ]] || ok=no; fi
    [[ $right == yes && $orphans -eq 0 && $resumes == yes ]] || ok=no
    if ((expect_status)); then
      awk -v t="$t_err" -v lim="$((timeout + 10))" 'BEGIN { exit !(t <= lim) }' || ok=no
    fi
    total=$((total + 1))
    [[ $ok == yes ]] || bad=$((bad + 1))
    printf '%-26s %3s %-4s %4s %6s %7s %-6s %-5s %-7s %-7s %s\n' "$label" "$i" "$sig" "$target" \
      "$status" "$t_err" "$named" "$right" "$orphans" "$resumes" "$([[ $ok == yes ]] && echo ok || echo WRONG)"
  done
done
echo "$total runs, $((total - bad)) as expected, $bad not"
((bad == 0))
