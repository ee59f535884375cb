#!/usr/bin/env bash
# bench/netns.sh: run a multi-rank command over a bandwidth-limited fake network.
#
# Loopback on a 2-core box is not a network: it has no real bandwidth limit,
# so collectives that look fine there can behave very differently on a real
# link. This harness builds N Linux network namespaces ("hosts") joined by a
# Linux bridge that lives in its own namespace, caps every host link with a
# `tc tbf` qdisc in BOTH directions (host eth0 egress = what the host sends,
# bridge-side veth egress = what the host receives), runs one rank of COMMAND
# per namespace with the DTRAIN_* environment set, and tears everything down
# on exit (normal exit, failure, Ctrl-C or TERM).
#
# tbf is used because it works on this kernel; netem (delay/loss) is not
# available here, so only bandwidth is shaped, not latency.
#
# Nothing is created in, or changed in, the root namespace: the veth pairs are
# created with both ends directly inside the new namespaces and only
# 10.99.0.0/24 addresses are used, inside those namespaces.
set -euo pipefail

readonly PROG="bench/netns.sh"
readonly SUBNET_PREFIX="10.99.0"
readonly KILL_GRACE_S=30 # how long the other ranks may live after one fails

usage() {
  cat <<EOF
Usage: $PROG [-n HOSTS] [-r RATE] [-p PREFIX] [-k] -- COMMAND [ARGS...]

Runs one rank of COMMAND in each of HOSTS network namespaces joined by a
bridge, every host link limited to RATE in each direction with tc tbf.

  -n HOSTS   number of namespaces/ranks (default 4, must be 1..64)
  -r RATE    tc rate per host link, each direction (default 1gbit; any tc
             rate string like 100mbit, 1gbit, 12.5mbps)
  -p PREFIX  name prefix for the namespaces (default "dtn"): hosts are
             PREFIX0..PREFIX<N-1>, the bridge lives in PREFIX-br
  -k         keep the per-rank logs directory (otherwise it is removed at
             exit unless a rank failed or the run was interrupted)
  -h         show this help

Each rank runs as
  ip netns exec PREFIX<i> env DTRAIN_RANK=<i> DTRAIN_WORLD_SIZE=<N> \\
      DTRAIN_RENDEZVOUS=file://<fresh tmp dir> DTRAIN_HOST=$SUBNET_PREFIX.<i+1> \\
      DTRAIN_RUN_ID=netns-<pid> DTRAIN_IFACE=eth0 COMMAND [ARGS...]
Rank 0 writes to this terminal; rank i>0 writes to <logdir>/rank-<i>.log.
Exit status is 0 only if every rank exits 0. Needs root.
EOF
}

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

bad_usage() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  usage >&2
  exit 2
}

log() { printf 'netns: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- arguments
hosts=4
rate=1gbit
prefix=dtn
keep_logs=0

while getopts ":n:r:p:kh" opt; do
  case "$opt" in
    n) hosts="$OPTARG" ;;
    r) rate="$OPTARG" ;;
    p) prefix="$OPTARG" ;;
    k) keep_logs=1 ;;
    h)
      usage
      exit 0
      ;;
    :) bad_usage "option -$OPTARG needs an argument" ;;
    *) bad_usage "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 1 ]] || bad_usage "missing COMMAND (put it after --)"

if ! [[ "$hosts" =~ ^[0-9]+$ ]] || ((10#$hosts < 1 || 10#$hosts > 64)); then
  bad_usage "-n HOSTS must be an integer in 1..64 (got '$hosts')"
fi
hosts=$((10#$hosts))

# Namespace names are files, but keep them short and unambiguous: a letter
# first, no trailing digit (so PREFIX<i> cannot collide with another prefix).
if ! [[ "$prefix" =~ ^[A-Za-z]([A-Za-z0-9_-]{0,10}[A-Za-z_-])?$ ]]; then
  bad_usage "-p PREFIX must be 1..12 chars of [A-Za-z0-9_-], start with a letter and not end with a digit (got '$prefix')"
fi

# tc rate -> bits per second (tc units: bare number/bit, k/m/g/t bit, ki/mi/gi/ti
# bit, and the same with bps = bytes per second; case-insensitive).
rate_bits_per_s() {
  local r="${1,,}" num unit mult
  [[ "$r" =~ ^([0-9]+(\.[0-9]+)?)([a-z]*)$ ]] || return 1
  num="${BASH_REMATCH[1]}"
  unit="${BASH_REMATCH[3]}"
  case "$unit" in
    "" | bit) mult=1 ;;
    kbit) mult=1000 ;;
    mbit) mult=1000000 ;;
    gbit) mult=1000000000 ;;
    tbit) mult=1000000000000 ;;
    kibit) mult=1024 ;;
    mibit) mult=1048576 ;;
    gibit) mult=1073741824 ;;
    tibit) mult=1099511627776 ;;
    bps) mult=8 ;;
    kbps) mult=8000 ;;
    mbps) mult=8000000 ;;
    gbps) mult=8000000000 ;;
    tbps) mult=8000000000000 ;;
    kibps) mult=8192 ;;
    mibps) mult=8388608 ;;
    gibps) mult=8589934592 ;;
    tibps) mult=8796093022208 ;;
    *) return 1 ;;
  esac
  awk -v n="$num" -v m="$mult" 'BEGIN { printf "%.0f\n", n * m }'
}

rate_bps="$(rate_bits_per_s "$rate")" ||
  bad_usage "-r RATE must be a tc rate like 100mbit, 1gbit or 12.5mbps (got '$rate')"
if ((rate_bps < 100000 || rate_bps > 100000000000)); then
  bad_usage "-r RATE must be between 100kbit and 100gbit (got '$rate')"
fi

# tbf sizes, in bytes. veth hands tbf GSO/TSO super-packets of up to ~64 KiB,
# and a bucket of only a few MTUs (the usual rate/HZ rule of thumb) caps a
# 1gbit link at about half its rate here (15 KB: ~520 Mbit/s, 32 KB: ~740).
# So the bucket is ~4 ms worth of RATE but at least 128 KiB (two full GSO
# packets); only below ~50mbit is it shrunk to 20 ms of RATE (floor 16 KiB),
# since there a 128 KiB head start would visibly inflate short transfers
# (1mbit with 128 KiB measured 1.2 Mbit/s on a 0.6 MB transfer).
# The queue holds 50 ms of RATE but at least 256 KiB: with only `latency 50ms`
# a 10mbit link dropped a quarter of its packets (TCP bursts overflow a 60 KB
# queue), which makes results depend on retransmit timers.
read -r burst_bytes limit_bytes < <(awk -v b="$rate_bps" 'BEGIN {
  B = b / 8
  low = B * 0.020; if (low < 16384) low = 16384; if (low > 131072) low = 131072
  burst = B * 0.004; if (burst < low) burst = low
  q = B * 0.050; if (q < 262144) q = 262144
  printf "%.0f %.0f\n", burst, burst + q }')

# ---------------------------------------------------------------- preflight
if [[ "$(id -u)" -ne 0 ]]; then
  die "needs root to create network namespaces (run with sudo)"
fi
for tool in ip tc; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "'$tool' not found (install iproute2)"
done

br_ns="${prefix}-br"
existing=()
while read -r name _; do
  if [[ "$name" =~ ^${prefix}([0-9]+|-br)$ ]]; then
    existing+=("$name")
  fi
done < <(ip netns list 2>/dev/null || true)
if ((${#existing[@]} > 0)); then
  {
    printf '%s: network namespaces with prefix "%s" already exist (left over from a crashed run?):\n' \
      "$PROG" "$prefix"
    printf '  %s\n' "${existing[@]}"
    printf 'Remove them with:\n'
    printf '  ip netns del %s\n' "${existing[@]}"
    printf 'or pick another prefix with -p.\n'
  } >&2
  exit 1
fi

# ---------------------------------------------------------------- cleanup
created_ns=()  # namespaces we created, in creation order
rank_pids=()   # index = rank; pid (== process group id, via setsid)
rank_alive=()  # index = rank; 1 while not yet reaped
rdzv_dir=""
log_dir=""
interrupted=0
any_failed=0
cleaned=0

have_setsid=0
command -v setsid >/dev/null 2>&1 && have_setsid=1

# Send SIG to rank i: its whole process group when it has one.
signal_rank() {
  local sig="$1" pid="$2"
  if ((have_setsid)); then
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
  else
    kill "-$sig" "$pid" 2>/dev/null || true
  fi
}

# Kill every live rank (TERM, then KILL after a short grace) and reap them.
# shellcheck disable=SC2317  # only reached via trap
kill_ranks() {
  local i pid waited=0 alive
  for i in "${!rank_pids[@]}"; do
    [[ "${rank_alive[$i]:-0}" == 1 ]] && signal_rank TERM "${rank_pids[$i]}"
  done
  while ((waited < 30)); do # up to 3 s
    alive=0
    for i in "${!rank_pids[@]}"; do
      [[ "${rank_alive[$i]:-0}" == 1 ]] || continue
      pid="${rank_pids[$i]}"
      if kill -0 "$pid" 2>/dev/null; then
        alive=1
      fi
    done
    ((alive)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for i in "${!rank_pids[@]}"; do
    [[ "${rank_alive[$i]:-0}" == 1 ]] || continue
    signal_rank KILL "${rank_pids[$i]}"
    wait "${rank_pids[$i]}" 2>/dev/null || true
    rank_alive[i]=0
  done
}

# shellcheck disable=SC2317  # only reached via trap
cleanup() {
  local rc=$? ns pid
  ((cleaned)) && return 0
  cleaned=1
  set +e
  trap '' INT TERM
  kill_ranks
  # Anything else still inside our namespaces (daemonised children, ...)
  # would keep the namespace and its veths alive after `ip netns del`.
  for ns in "${created_ns[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null
    done
  done
  for ns in "${created_ns[@]}"; do
    ip netns del "$ns" 2>/dev/null ||
      printf '%s: warning: could not delete namespace %s\n' "$PROG" "$ns" >&2
  done
  if [[ -n "$rdzv_dir" && -d "$rdzv_dir" ]]; then
    rm -rf -- "$rdzv_dir"
  fi
  if [[ -n "$log_dir" && -d "$log_dir" ]]; then
    if ((keep_logs || any_failed || interrupted)); then
      printf 'netns: per-rank logs kept in %s\n' "$log_dir" >&2
    else
      rm -rf -- "$log_dir"
    fi
  fi
  return "$rc"
}

# shellcheck disable=SC2317  # only reached via trap
on_signal() {
  interrupted=1
  printf '\n%s: got SIG%s, stopping ranks and removing namespaces\n' "$PROG" "$1" >&2
  trap - INT TERM
  if [[ "$1" == INT ]]; then exit 130; else exit 143; fi
}

trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

# ---------------------------------------------------------------- topology
# Offloads (TSO/GSO/GRO) are deliberately left on, as on a real NIC: tbf
# shapes GSO packets correctly given the burst above, and turning them off
# (ethtool -K) only burns the little CPU a 2-core box has.
#
# Record the name before creating it, so that a signal arriving while
# `ip netns add` runs still gets it cleaned up; forget it if the add failed
# (e.g. a concurrent run with the same prefix owns it).
add_netns() {
  created_ns+=("$1")
  if ! ip netns add "$1"; then
    unset 'created_ns[-1]'
    die "could not create network namespace $1 (another run using prefix '$prefix'?)"
  fi
}

tbf() { # tbf NAMESPACE DEV
  tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst "$burst_bytes" limit "$limit_bytes"
}

add_netns "$br_ns"
ip -n "$br_ns" link set lo up
ip -n "$br_ns" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$br_ns" link set br0 up

for ((i = 0; i < hosts; i++)); do
  ns="${prefix}${i}"
  add_netns "$ns"
  # Both ends are born inside their namespaces: nothing touches the root ns.
  ip link add eth0 netns "$ns" type veth peer name "veth$i" netns "$br_ns"
  ip -n "$br_ns" link set "veth$i" master br0
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "${SUBNET_PREFIX}.$((i + 1))/24" dev eth0
  tbf "$ns" eth0           # what host i sends
  tbf "$br_ns" "veth$i"    # what host i receives
  ip -n "$br_ns" link set "veth$i" up
  ip -n "$ns" link set eth0 up
done

rdzv_dir="$(mktemp -d /tmp/dtrain-netns-XXXXXX)"
log_dir="$(mktemp -d /tmp/dtrain-netns-logs-XXXXXX)"

# ---------------------------------------------------------------- launch
log "$hosts hosts on ${SUBNET_PREFIX}.0/24, $rate each way per host link"

launcher=()
((have_setsid)) && launcher=(setsid)

for ((i = 0; i < hosts; i++)); do
  rank_cmd=(
    "${launcher[@]}" ip netns exec "${prefix}${i}" env
    "DTRAIN_RANK=$i"
    "DTRAIN_WORLD_SIZE=$hosts"
    "DTRAIN_RENDEZVOUS=file://$rdzv_dir"
    "DTRAIN_HOST=${SUBNET_PREFIX}.$((i + 1))"
    "DTRAIN_RUN_ID=netns-$$"
    "DTRAIN_IFACE=eth0"
    "$@"
  )
  if ((i == 0)); then
    "${rank_cmd[@]}" </dev/null &
  else
    "${rank_cmd[@]}" </dev/null >"$log_dir/rank-$i.log" 2>&1 &
  fi
  rank_pids[i]=$!
  rank_alive[i]=1
done

# ---------------------------------------------------------------- wait
# Poll rather than `wait -n`: bash drops a background job that died from a
# signal from its job table, so `wait -n PID...` can no longer see it, while a
# plain `wait PID` still returns its status once it is gone.
rank_rc=()
failed=()
killed_by_us=()
live=$hosts
first_failed=""
grace_announced=0
phase=running # -> terminating (TERM sent to stragglers) -> killing (KILL sent)
deadline=0

while :; do
  for i in "${!rank_pids[@]}"; do
    [[ "${rank_alive[$i]}" == 1 ]] || continue
    kill -0 "${rank_pids[$i]}" 2>/dev/null && continue
    rc=0
    wait "${rank_pids[$i]}" 2>/dev/null || rc=$?
    rank_alive[i]=0
    rank_rc[i]=$rc
    live=$((live - 1))
    if ((rc != 0)); then
      any_failed=1
      failed+=("$i")
      if [[ -z "$first_failed" ]]; then
        first_failed=$i
        deadline=$((SECONDS + KILL_GRACE_S))
      fi
    fi
  done
  ((live > 0)) || break
  if [[ -n "$first_failed" && "$grace_announced" == 0 ]]; then
    grace_announced=1
    log "rank $first_failed exited with status ${rank_rc[$first_failed]}; giving the other ranks ${KILL_GRACE_S}s to finish"
  fi
  if [[ -n "$first_failed" && "$phase" != killing ]] && ((SECONDS >= deadline)); then
    stragglers=()
    for i in "${!rank_pids[@]}"; do
      [[ "${rank_alive[$i]}" == 1 ]] && stragglers+=("$i")
    done
    if [[ "$phase" == running ]]; then
      log "rank(s) ${stragglers[*]} still running ${KILL_GRACE_S}s after rank $first_failed failed; killing them"
      sig=TERM
      phase=terminating
      deadline=$((SECONDS + 3))
    else
      sig=KILL
      phase=killing
    fi
    for i in "${stragglers[@]}"; do
      signal_rank "$sig" "${rank_pids[$i]}"
      killed_by_us[i]=1
    done
  fi
  sleep 0.2
done

if ((${#failed[@]} == 0)); then
  log "all $hosts ranks exited 0"
  exit 0
fi

max_tails=8
{
  printf '%s: %d of %d rank(s) failed:\n' "$PROG" "${#failed[@]}" "$hosts"
  for i in "${failed[@]}"; do
    rc="${rank_rc[$i]}"
    why=""
    if ((rc > 128)) && sig="$(kill -l "$((rc - 128))" 2>/dev/null)"; then
      why=" (SIG$sig)"
    fi
    if [[ "${killed_by_us[$i]:-0}" == 1 ]]; then
      why+=", killed by $PROG after rank $first_failed failed"
    fi
    printf '  rank %d (%s): exit status %d%s\n' "$i" "${prefix}${i}" "$rc" "$why"
  done
  shown=0
  hidden=0
  for i in "${failed[@]}"; do
    if ((i == 0)); then
      printf -- '--- rank 0: its output went to the terminal above\n'
    elif ((shown < max_tails)); then
      printf -- '--- last 20 lines of %s\n' "$log_dir/rank-$i.log"
      tail -n 20 -- "$log_dir/rank-$i.log" 2>/dev/null || true
      shown=$((shown + 1))
    else
      hidden=$((hidden + 1))
    fi
  done
  if ((hidden > 0)); then
    printf -- '--- (%d more failed rank logs in %s)\n' "$hidden" "$log_dir"
  fi
} >&2
exit "${rank_rc[${failed[0]}]}"
