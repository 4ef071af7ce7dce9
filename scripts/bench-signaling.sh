#!/usr/bin/env bash
# scripts/bench-signaling.sh — the signaling benchmarks across two replicas (see --help).
set -euo pipefail

LOG_TAG=bench-signaling
# shellcheck source=scripts/lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"

usage() {
  cat <<'EOF'
Usage: scripts/bench-signaling.sh [options]

Runs the WebSocket benchmarks of unilink-load against the fleet that
scripts/dev.sh runs (gateway A on 127.0.0.1:8000, signaling on :50053), with
a second signaling replica (gRPC :50063, HTTP :9113) and a second gateway
(HTTP :8001) in front of it, which this script starts and stops:

  1. seeds users (scripts/bench-seed.sh USERS 0) and mints their tokens
     (scripts/bench-users.sh, unilink-load mint-tokens);
  2. presence-idle: --sockets presence sockets on gateway B, with the
     resident memory of gateway B and signaling replica B (first, while
     both processes are fresh);
  3. relay: callers on gateway A, callees on gateway B, at --rate frames/s
     in all, with bare Redis pub/sub at the same rate for comparison; with
     --max, once more as fast as possible;
  4. call-setup: callers on gateway A ring callees online on gateway B;
  5. hops (only when asked for: --only hops; needs perf and root): one call
     at 1,000 frames/s, its syscalls traced with perf on every process a
     frame crosses, then bare Redis the same way; `unilink-load hops` prints
     how long a frame waits for each process to wake, and inside each.

Start the fleet first with the same tunables exported for both (they are
passed on to the second replicas), e.g.:

  export SIGNALING_FRAME_RATE=100000 RATE_LIMIT_API=1000000
  scripts/dev.sh --release --no-tail &
  scripts/bench-signaling.sh --release --max --sockets 10000

Options (defaults in brackets):
  -h, --help          show this help and exit
  --release           run target/release binaries (else target/debug); nothing is built
  --pairs N           relay: calls [4]
  --rate R            relay: frames/s in all, 0 = as fast as possible [1000]
  --seconds S         relay: seconds of sending [10]
  --max               relay: also run at --rate 0
  --window W          relay at --rate 0: frames in flight per pair [32]
  --sockets N         presence-idle: sockets [1000]
  --ramp R            presence-idle: sockets opened per second [500]
  --hold S            presence-idle: seconds to hold them [30]
  --setup-pairs N     call-setup: pairs [4]
  --setup-seconds S   call-setup: seconds [10]
  --only LIST         run only these of relay,presence,setup,hops (comma-separated)

Environment: DATABASE_URL [postgres://postgres@127.0.0.1:5432/unilink],
REDIS_URL [redis://127.0.0.1:6379], SECRET_KEY and JWT_* (as the fleet's),
SEED_USERS (seeded users, at least the most a scenario needs) [10000],
KEEP_WORK (set: keep the scratch directory, with the traces of hops).
Logs of the second replicas: .dev/logs/{signaling,gateway}-b.log.
EOF
}

PROFILE_DIR=debug
PAIRS=4
RATE=1000
SECONDS_RELAY=10
MAX=0
WINDOW=32
SOCKETS=1000
RAMP=500
HOLD=30
SETUP_PAIRS=4
SETUP_SECONDS=10
ONLY="relay,presence,setup"

while (($# > 0)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --release) PROFILE_DIR=release ;;
    --max) MAX=1 ;;
    --pairs) PAIRS="$(number "$1" "${2:-}")" && shift ;;
    --rate) RATE="$(number "$1" "${2:-}")" && shift ;;
    --seconds) SECONDS_RELAY="$(number "$1" "${2:-}")" && shift ;;
    --window) WINDOW="$(number "$1" "${2:-}")" && shift ;;
    --sockets) SOCKETS="$(number "$1" "${2:-}")" && shift ;;
    --ramp) RAMP="$(number "$1" "${2:-}")" && shift ;;
    --hold) HOLD="$(number "$1" "${2:-}")" && shift ;;
    --setup-pairs) SETUP_PAIRS="$(number "$1" "${2:-}")" && shift ;;
    --setup-seconds) SETUP_SECONDS="$(number "$1" "${2:-}")" && shift ;;
    --only)
      ONLY="${2:-}"
      shift
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

wants() {
  [[ ",$ONLY," == *",$1,"* ]]
}

ROOT="$(repo_root)"
cd "$ROOT"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR"
[[ "$BIN_DIR" == /* ]] || BIN_DIR="$ROOT/$BIN_DIR"
BUILD="cargo build --bins"
[[ "$PROFILE_DIR" == release ]] && BUILD="$BUILD --release"
for bin in unilink-gateway unilink-signaling unilink-load; do
  [[ -x "$BIN_DIR/$bin" ]] || die "$BIN_DIR/$bin not found ($BUILD first)"
done
LOAD="$BIN_DIR/unilink-load"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/unilink}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
GATEWAY_A="http://127.0.0.1:8000"
GATEWAY_B="http://127.0.0.1:8001"


command -v curl >/dev/null 2>&1 || die "curl not found"
healthy "$GATEWAY_A" || die "no healthy gateway at $GATEWAY_A: start the fleet first (scripts/dev.sh, see --help)"
for port in 8001 9113 50063; do
  tcp_open 127.0.0.1 "$port" && die "port 127.0.0.1:$port is already in use (a second replica still running?)"
done
[[ "${RATE_LIMIT_API:-60}" -ge 100000 ]] ||
  warn "RATE_LIMIT_API is ${RATE_LIMIT_API:-60 (default)}: call-setup will be rate limited (429); export RATE_LIMIT_API=1000000 for the fleet and this script"
frame_rate="${SIGNALING_FRAME_RATE:-50}"
per_socket=$((PAIRS > 0 ? (RATE + PAIRS - 1) / PAIRS : 0))
if { [[ "$MAX" -eq 1 ]] || ((per_socket > frame_rate)); } && ((frame_rate < 100000)); then
  warn "SIGNALING_FRAME_RATE is $frame_rate: the relay will be throttled; export SIGNALING_FRAME_RATE=100000 for the fleet and this script"
fi

# Each presence socket is a file descriptor here and in gateway B.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < SOCKETS + 64)); then
  die "--sockets $SOCKETS needs more open files than the hard limit allows ($(ulimit -Hn))"
fi

# ----------------------------------------------------- second replicas --

WORK="$(mktemp -d)"
LOG_DIR="$ROOT/.dev/logs"
mkdir -p "$LOG_DIR" "$ROOT/.dev/mail"
SIGNALING_B_PID=""
GATEWAY_B_PID=""

stop_started() {
  local pid
  for pid in "$GATEWAY_B_PID" "$SIGNALING_B_PID"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$GATEWAY_B_PID" "$SIGNALING_B_PID"; do
    [[ -n "$pid" ]] || continue
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}
trap 'stop_started' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The environment scripts/dev.sh gives its services, plus whatever tunables
# were exported (inherited).
export ENVIRONMENT=development
export LOG_LEVEL="${LOG_LEVEL:-info}"
export EMAIL_OUTBOX_DIR="$ROOT/.dev/mail"
export AUTH_GRPC_URL="http://127.0.0.1:50051"
export PROFILE_GRPC_URL="http://127.0.0.1:50052"
export NOTIFICATION_GRPC_URL="http://127.0.0.1:50054"

GRPC_ADDR=127.0.0.1:50063 HTTP_ADDR=127.0.0.1:9113 SIGNALING_GRPC_URL=http://127.0.0.1:50063 \
  "$BIN_DIR/unilink-signaling" >"$LOG_DIR/signaling-b.log" 2>&1 </dev/null &
SIGNALING_B_PID=$!
HTTP_ADDR=127.0.0.1:8001 SIGNALING_GRPC_URL=http://127.0.0.1:50063 \
  "$BIN_DIR/unilink-gateway" >"$LOG_DIR/gateway-b.log" 2>&1 </dev/null &
GATEWAY_B_PID=$!
log "started signaling B (pid $SIGNALING_B_PID) and gateway B (pid $GATEWAY_B_PID)"
deadline=$((SECONDS + 60))
until healthy "$GATEWAY_B"; do
  for pid in "$SIGNALING_B_PID" "$GATEWAY_B_PID"; do
    kill -0 "$pid" 2>/dev/null || {
      tail -n 20 "$LOG_DIR/signaling-b.log" "$LOG_DIR/gateway-b.log" >&2 || true
      die "a second replica exited (logs above)"
    }
  done
  ((SECONDS < deadline)) || die "gateway B did not become healthy in 60 s (see $LOG_DIR/gateway-b.log)"
  sleep 0.5
done
log "gateway B is up: $GATEWAY_B -> signaling B"

# ---------------------------------------------------------------- users --

needed=$((2 * PAIRS > SOCKETS ? 2 * PAIRS : SOCKETS))
needed=$((2 * SETUP_PAIRS > needed ? 2 * SETUP_PAIRS : needed))
seed=${SEED_USERS:-10000}
((seed >= needed)) || seed=$needed
scripts/bench-seed.sh "$seed" 0 >&2
scripts/bench-users.sh "$needed" >"$WORK/ids"
"$LOAD" mint-tokens --ids-file "$WORK/ids" --out "$WORK/users"

# ------------------------------------------------------------ scenarios --

# presence-idle first: resident memory grows cleanly only in processes that
# have not yet freed memory (allocators keep what was freed for reuse).
if wants presence; then
  log "presence-idle: $SOCKETS sockets on gateway B at $RAMP/s, held ${HOLD}s"
  "$LOAD" presence-idle --base "$GATEWAY_B" --users "$WORK/users" --sockets "$SOCKETS" \
    --ramp "$RAMP" --seconds "$HOLD" --pids "$GATEWAY_B_PID,$SIGNALING_B_PID"
fi
if wants relay; then
  log "relay: $PAIRS pairs at $RATE frames/s for ${SECONDS_RELAY}s"
  "$LOAD" relay --base-a "$GATEWAY_A" --base-b "$GATEWAY_B" --users "$WORK/users" \
    --pairs "$PAIRS" --rate "$RATE" --seconds "$SECONDS_RELAY" --bare-redis "$REDIS_URL"
  if [[ "$MAX" -eq 1 ]]; then
    log "relay: $PAIRS pairs as fast as possible ($WINDOW in flight per pair) for ${SECONDS_RELAY}s"
    "$LOAD" relay --base-a "$GATEWAY_A" --base-b "$GATEWAY_B" --users "$WORK/users" \
      --pairs "$PAIRS" --rate 0 --window "$WINDOW" --seconds "$SECONDS_RELAY" --bare-redis "$REDIS_URL"
  fi
fi
if wants setup; then
  log "call-setup: $SETUP_PAIRS pairs for ${SETUP_SECONDS}s"
  vacuum_calls "$DATABASE_URL"
  "$LOAD" call-setup --base-a "$GATEWAY_A" --base-b "$GATEWAY_B" --users "$WORK/users" \
    --pairs "$SETUP_PAIRS" --seconds "$SETUP_SECONDS"
fi
if wants hops; then
  command -v perf >/dev/null 2>&1 || die "hops needs perf (Debian: apt install linux-perf)"
  command -v ss >/dev/null 2>&1 || die "hops needs ss (iproute2)"
  listener() {
    ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
  }
  redis_port="$(url_port "$REDIS_URL")"
  gateway_a="$(listener 8000)" redis_pid="$(listener "${redis_port:-6379}")"
  [[ -n "$gateway_a" && -n "$redis_pid" ]] ||
    die "hops: could not find the processes listening on :8000 and :${redis_port:-6379}"
  events=syscalls:sys_exit_epoll_wait,syscalls:sys_exit_recvfrom,syscalls:sys_exit_read
  events+=,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto
  ((frame_rate >= 1000)) ||
    warn "SIGNALING_FRAME_RATE is $frame_rate: one call at 1000 frames/s will be throttled; export SIGNALING_FRAME_RATE=100000"
  log "hops: one call at 1000 frames/s for 8 s, then bare Redis; 3 s of each traced"
  "$LOAD" relay --base-a "$GATEWAY_A" --base-b "$GATEWAY_B" --users "$WORK/users" \
    --pairs 1 --rate 1000 --seconds 8 --bare-redis "$REDIS_URL" >"$WORK/hops-relay.txt" &
  load_pid=$!
  # The fleet is measured from ~0.5 s to ~8.5 s, bare Redis from ~10.5 s to ~18.5 s.
  sleep 3
  trace() { # trace NAME PIDS: 3 s of the syscall events of PIDS into $WORK/NAME.data
    perf record -q -e "$events" -o "$WORK/$1.data" -p "$2" -- sleep 3 >"$WORK/perf.log" 2>&1 || {
      cat "$WORK/perf.log" >&2
      die "hops: perf record failed (it needs root, or kernel.perf_event_paranoid <= 1 and tracefs access)"
    }
  }
  # Relay v2: a frame crosses the two gateways and Redis, not signaling.
  trace fleet "$load_pid,$gateway_a,$redis_pid,$GATEWAY_B_PID"
  sleep 7
  trace bare "$load_pid,$redis_pid"
  wait "$load_pid" || die "hops: the relay run failed"
  cat "$WORK/hops-relay.txt"
  for path in fleet bare; do
    perf script -i "$WORK/$path.data" -F comm,pid,tid,time,event >"$WORK/$path.txt" 2>/dev/null
    echo "hops, $path:"
    "$LOAD" hops --path "$path" --trace "$WORK/$path.txt" \
      --roles "L=$load_pid,gA=$gateway_a,R=$redis_pid,gB=$GATEWAY_B_PID"
  done
fi
log "done; stopping the second replicas"
