#!/usr/bin/env bash
# scripts/dev.sh — run the whole UniLink fleet locally (see --help).
set -euo pipefail

LOG_TAG=dev
# shellcheck source=scripts/lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"

usage() {
  cat <<'EOF'
Usage: scripts/dev.sh [options]

Runs the whole UniLink fleet locally:
  1. makes sure PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) answer; on a
     local host with nothing listening it installs them with apt-get if needed
     and starts PRIVATE instances with their data in .dev/pg and .dev/redis;
  2. creates the database named in DATABASE_URL if missing;
  3. cargo build --bins (debug profile);
  4. runs `<service> migrate` for auth, profile, signaling, notification;
  5. starts auth, profile, signaling, notification and gateway in the
     background (logs in .dev/logs/<service>.log, echoed to the terminal with
     a [service] prefix) and waits until GET /health on the gateway answers;
  6. keeps running until Ctrl-C / SIGTERM, then stops every service (SIGTERM,
     SIGKILL after 10 s). If any service dies, the others are stopped and the
     script exits 1.

PostgreSQL/Redis servers that were already running are never stopped.
Private instances started from .dev/ are LEFT RUNNING on exit (so the next
start is fast); stop them with `scripts/dev.sh --stop-deps`.

Options:
  -h, --help      show this help and exit
  --no-build      skip `cargo build --bins` (use the existing target/debug binaries)
  --release       build and run optimised binaries (target/release), for benchmarks
  --no-tail       do not echo service logs to the terminal (files only)
  --stop-deps     stop the private PostgreSQL/Redis under .dev/ and exit

Environment (defaults in brackets):
  DATABASE_URL    [postgres://postgres@127.0.0.1:5432/unilink]
  REDIS_URL       [redis://127.0.0.1:6379]
  GATEWAY_PORT    public gateway HTTP port [8000]
  LOG_LEVEL       [info]
  HEALTH_TIMEOUT  seconds to wait for the gateway's /health [60]

Ports: auth gRPC 50051 / HTTP 9101, profile 50052 / 9102,
signaling 50053 / 9103, notification 50054 / 9104, gateway HTTP $GATEWAY_PORT
(all on 127.0.0.1). Outgoing e-mail is written to .dev/mail.
EOF
}

DO_BUILD=1
PROFILE_DIR=debug
CARGO_FLAGS=()
DO_TAIL=1
while (($# > 0)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --no-build) DO_BUILD=0 ;;
    --release)
      PROFILE_DIR=release
      CARGO_FLAGS=(--release)
      ;;
    --no-tail) DO_TAIL=0 ;;
    --stop-deps)
      stop_private_deps
      exit 0
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

ROOT="$(repo_root)"
cd "$ROOT"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/unilink}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
GATEWAY_PORT="${GATEWAY_PORT:-8000}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-60}"
[[ "$GATEWAY_PORT" =~ ^[0-9]+$ ]] || die "GATEWAY_PORT must be a number, got '$GATEWAY_PORT'"
[[ "$HEALTH_TIMEOUT" =~ ^[0-9]+$ ]] || die "HEALTH_TIMEOUT must be a number of seconds, got '$HEALTH_TIMEOUT'"

DEV_DIR="$ROOT/.dev"
LOG_DIR="$DEV_DIR/logs"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR"
[[ "$BIN_DIR" == /* ]] || BIN_DIR="$ROOT/$BIN_DIR"

BACKENDS=(auth profile signaling notification)
SERVICES=("${BACKENDS[@]}" gateway)
declare -A GRPC_PORT=([auth]=50051 [profile]=50052 [signaling]=50053 [notification]=50054)
declare -A HTTP_PORT=([auth]=9101 [profile]=9102 [signaling]=9103 [notification]=9104 [gateway]=$GATEWAY_PORT)

# ----------------------------------------------------------- dependencies --

command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH (install Rust via rustup)"

ensure_postgres "$DATABASE_URL"
ensure_redis "$REDIS_URL"
ensure_database "$DATABASE_URL"

# ------------------------------------------------------------------ build --

if [[ $DO_BUILD -eq 1 ]]; then
  log "building binaries (cargo build --bins)"
  cargo build --bins "${CARGO_FLAGS[@]}" || die "cargo build --bins failed"
fi
for svc in "${SERVICES[@]}"; do
  [[ -x "$BIN_DIR/unilink-$svc" ]] ||
    die "binary $BIN_DIR/unilink-$svc not found (did the build succeed?)"
done

# Refuse to start on busy ports (e.g. another dev.sh is running).
for svc in "${SERVICES[@]}"; do
  for port in ${GRPC_PORT[$svc]:-} ${HTTP_PORT[$svc]}; do
    if tcp_open 127.0.0.1 "$port"; then
      die "port 127.0.0.1:$port (needed by $svc) is already in use — is another scripts/dev.sh running?"
    fi
  done
done

# -------------------------------------------------------------------- env --

mkdir -p "$LOG_DIR" "$DEV_DIR/mail"
export ENVIRONMENT=development
export LOG_LEVEL="${LOG_LEVEL:-info}"
export EMAIL_OUTBOX_DIR="$DEV_DIR/mail"
export AUTH_GRPC_URL="http://127.0.0.1:${GRPC_PORT[auth]}"
export PROFILE_GRPC_URL="http://127.0.0.1:${GRPC_PORT[profile]}"
export SIGNALING_GRPC_URL="http://127.0.0.1:${GRPC_PORT[signaling]}"
export NOTIFICATION_GRPC_URL="http://127.0.0.1:${GRPC_PORT[notification]}"

# run_svc SERVICE [ARGS...] — exec the service binary with its own addresses.
run_svc() {
  local svc="$1"
  shift
  if [[ -n "${GRPC_PORT[$svc]:-}" ]]; then
    export GRPC_ADDR="127.0.0.1:${GRPC_PORT[$svc]}"
  else
    unset GRPC_ADDR
  fi
  export HTTP_ADDR="127.0.0.1:${HTTP_PORT[$svc]}"
  exec "$BIN_DIR/unilink-$svc" "$@"
}

# --------------------------------------------------------------- migrate --

for svc in "${BACKENDS[@]}"; do
  mlog="$LOG_DIR/$svc.migrate.log"
  log "migrating $svc"
  if ! (run_svc "$svc" migrate) >"$mlog" 2>&1; then
    tail -n 40 "$mlog" >&2 || true
    die "'unilink-$svc migrate' failed; full log: $mlog"
  fi
done

# ----------------------------------------------------------------- start --

declare -A PIDS=()
TAIL_PIDS=()
SHUTTING_DOWN=0

stop_all() {
  local svc pid deadline alive
  for svc in gateway "${BACKENDS[@]}"; do
    pid="${PIDS[$svc]:-}"
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  while :; do
    alive=()
    for svc in "${SERVICES[@]}"; do
      pid="${PIDS[$svc]:-}"
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive+=("$svc")
    done
    ((${#alive[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
      warn "still running after 10 s, sending SIGKILL: ${alive[*]}"
      for svc in "${alive[@]}"; do
        kill -KILL "${PIDS[$svc]}" 2>/dev/null || true
      done
      break
    fi
    sleep 0.2
  done
  for svc in "${SERVICES[@]}"; do
    pid="${PIDS[$svc]:-}"
    [[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true
  done
  for pid in "${TAIL_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}

# shutdown EXIT_CODE — stop everything once, print a note, exit.
shutdown() {
  local code="$1"
  trap - INT TERM EXIT
  if [[ $SHUTTING_DOWN -eq 0 ]]; then
    SHUTTING_DOWN=1
    log "stopping services..."
    stop_all
    log "all services stopped (logs in $LOG_DIR)"
    if [[ $DEPS_STARTED_PRIVATE_PG -eq 1 || $DEPS_STARTED_PRIVATE_REDIS -eq 1 ||
      -f "$DEV_DIR/pg/data/postmaster.pid" || -s "$DEV_DIR/redis/redis.pid" ]]; then
      log "private PostgreSQL/Redis in .dev/ left running; stop them with: scripts/dev.sh --stop-deps"
    fi
  fi
  exit "$code"
}
trap 'shutdown 130' INT
trap 'shutdown 143' TERM
trap 'shutdown $?' EXIT

# fail_dead — if a service died, show its log tail and stop everything.
fail_dead() {
  local svc pid rc
  for svc in "${SERVICES[@]}"; do
    pid="${PIDS[$svc]}"
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" 2>/dev/null || rc=$?
      printf '\n' >&2
      log "$svc (pid $pid) exited with status $rc; last lines of $LOG_DIR/$svc.log:"
      tail -n 40 "$LOG_DIR/$svc.log" >&2 || true
      shutdown 1
    fi
  done
}

for svc in "${SERVICES[@]}"; do
  slog="$LOG_DIR/$svc.log"
  : >"$slog"
  # async function call = subshell that execs the binary, so $! is its pid
  run_svc "$svc" >>"$slog" 2>&1 </dev/null &
  PIDS[$svc]=$!
  log "started $svc (pid ${PIDS[$svc]}, log $slog)"
  if [[ $DO_TAIL -eq 1 ]]; then
    # --pid: tail also ends by itself once this script is gone
    tail -n +1 -F --pid=$$ "$slog" 2>/dev/null > >(sed -u "s/^/[$svc] /") &
    TAIL_PIDS+=($!)
  fi
done

# ---------------------------------------------------------------- health --

GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT"

gateway_healthy() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$GATEWAY_URL/health" 2>/dev/null
  else
    # shellcheck disable=SC2016  # $0 is expanded by the inner bash
    timeout 3 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
      printf "GET /health HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n" "$0" >&3
      IFS= read -r status <&3 || exit 1
      [[ "$status" =~ ^HTTP/[0-9.]+\ 2[0-9][0-9] ]]
    ' "$GATEWAY_PORT" 2>/dev/null
  fi
}

log "waiting up to ${HEALTH_TIMEOUT}s for $GATEWAY_URL/health"
deadline=$((SECONDS + HEALTH_TIMEOUT))
until gateway_healthy; do
  fail_dead
  if ((SECONDS >= deadline)); then
    log "gateway did not become healthy within ${HEALTH_TIMEOUT}s; last lines of $LOG_DIR/gateway.log:"
    tail -n 40 "$LOG_DIR/gateway.log" >&2 || true
    shutdown 1
  fi
  sleep 1
done

log "UniLink is up: $GATEWAY_URL  (health: $GATEWAY_URL/health) — press Ctrl-C to stop"

# ------------------------------------------------------------------- run --

while :; do
  sleep 1 &
  wait $! || true
  fail_dead
done
