#!/usr/bin/env bash
# scripts/bench-fleet.sh — the load figures through nginx with two replicas of everything (see --help).
set -euo pipefail

LOG_TAG=bench-fleet
# shellcheck source=scripts/lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"

usage() {
  cat <<'EOF'
Usage: scripts/bench-fleet.sh [options]

Runs unilink-load through a real load balancer in front of two replicas of
every service, next to the same scenario on one replica of everything, and
says where the CPU went (per process, from /proc) in each.

It needs the fleet of scripts/dev.sh running (replica 1 of every service,
gateway on 127.0.0.1:8000); it starts, and stops at the end:
  * replica 2 of auth, profile, signaling, notification (gRPC :50061-50064,
    HTTP :9111-9114),
  * gateways G1 (:8011) and G2 (:8012), each balancing over both replicas
    of every backend,
  * nginx on 127.0.0.1:8080 balancing G1 and G2 (as in a deployment).

Scenarios, each first through nginx (two replicas of everything), then on
gateway :8000 alone (one replica of everything, the Redis hop only where it
is inherent):
  1. sign-in + reads: auth-mix (GET /users/me at 64 connections while
     --logins clients sign in with their password, argon2id);
  2. call set-up: call-setup with --setup-pairs pairs;
  3. relay: --pairs calls at --rate frames/s, and as fast as possible, with
     bare Redis pub/sub at the same rate;
  4. idle sockets (two replicas only, run first while the processes it
     measures are fresh): --sockets presence sockets, resident memory per
     socket over both gateways and both signaling replicas (start the dev
     fleet just before; bench-signaling.sh has the one-replica figure).

Start the fleet first with the benchmark tunables exported for both, e.g.:

  export SIGNALING_FRAME_RATE=100000 RATE_LIMIT_API=1000000 RATE_LIMIT_AUTH=1000000 RATE_LIMIT_AUTH_ADDRESS=1000000 \
         MAX_SOCKETS_PER_USER=100 LOG_LEVEL=warn
  scripts/dev.sh --release --no-tail &
  scripts/bench-fleet.sh --release

Options (defaults in brackets):
  -h, --help          show this help and exit
  --release           run target/release binaries (else target/debug); nothing is built
  --seconds S         seconds per measurement [10]
  --pairs N           relay: calls [50]
  --rate R            relay: frames/s in all [1000]
  --logins N          auth-mix: clients signing in [4]
  --setup-pairs N     call-setup: pairs [20]
  --sockets N         idle presence sockets [5000]
  --only LIST         run only these of signin,setup,relay,idle (comma-separated)

Environment: DATABASE_URL [postgres://postgres@127.0.0.1:5432/unilink],
REDIS_URL [redis://127.0.0.1:6379], SECRET_KEY and JWT_* (as the fleet's).
Logs: .dev/logs/*-2.log, gateway-g{1,2}.log, nginx-bench.log.
EOF
}

PROFILE_DIR=debug
SECS=10
PAIRS=50
RATE=1000
LOGINS=4
SETUP_PAIRS=20
SOCKETS=5000
ONLY="signin,setup,relay,idle"

while (($# > 0)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --release) PROFILE_DIR=release ;;
    --seconds) SECS="$(number "$1" "${2:-}")" && shift ;;
    --pairs) PAIRS="$(number "$1" "${2:-}")" && shift ;;
    --rate) RATE="$(number "$1" "${2:-}")" && shift ;;
    --logins) LOGINS="$(number "$1" "${2:-}")" && shift ;;
    --setup-pairs) SETUP_PAIRS="$(number "$1" "${2:-}")" && shift ;;
    --sockets) SOCKETS="$(number "$1" "${2:-}")" && shift ;;
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
for svc in auth profile signaling notification gateway load; do
  [[ -x "$BIN_DIR/unilink-$svc" ]] || die "$BIN_DIR/unilink-$svc not found (cargo build --bins first)"
done
LOAD="$BIN_DIR/unilink-load"
ensure_nginx
NGINX="$(command -v nginx || printf /usr/sbin/nginx)"
command -v curl >/dev/null 2>&1 || die "curl not found"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/unilink}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
ONE="http://127.0.0.1:8000"
LB="http://127.0.0.1:8080"
declare -A GRPC1=([auth]=50051 [profile]=50052 [signaling]=50053 [notification]=50054)
declare -A GRPC2=([auth]=50061 [profile]=50062 [signaling]=50063 [notification]=50064)
declare -A HTTP2=([auth]=9111 [profile]=9112 [signaling]=9113 [notification]=9114)

healthy "$ONE" || die "no healthy gateway at $ONE: start the fleet first (scripts/dev.sh, see --help)"
for port in 50061 50062 50063 50064 9111 9112 9113 9114 8011 8012 8080; do
  tcp_open 127.0.0.1 "$port" && die "port 127.0.0.1:$port is already in use"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------- second replicas --

WORK="$(mktemp -d)"
LOG_DIR="$ROOT/.dev/logs"
mkdir -p "$LOG_DIR" "$ROOT/.dev/mail"
declare -A PID=()
STARTED=()

stop_started() {
  local name pid
  for name in "${STARTED[@]}"; do
    kill -TERM "${PID[$name]}" 2>/dev/null || true
  done
  for name in "${STARTED[@]}"; do
    pid="${PID[$name]}"
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap 'stop_started' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

both() {
  printf 'http://127.0.0.1:%s,http://127.0.0.1:%s' "${GRPC1[$1]}" "${GRPC2[$1]}"
}

export ENVIRONMENT=development
export LOG_LEVEL="${LOG_LEVEL:-warn}"
export EMAIL_OUTBOX_DIR="$ROOT/.dev/mail"
export AUTH_GRPC_URL PROFILE_GRPC_URL SIGNALING_GRPC_URL NOTIFICATION_GRPC_URL
AUTH_GRPC_URL="$(both auth)"
PROFILE_GRPC_URL="$(both profile)"
SIGNALING_GRPC_URL="$(both signaling)"
NOTIFICATION_GRPC_URL="$(both notification)"

start() { # start NAME BINARY ENV...
  local name="$1" binary="$2"
  shift 2
  env "$@" "$BIN_DIR/$binary" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  PID[$name]=$!
  STARTED+=("$name")
}

for svc in auth profile notification signaling; do
  start "$svc-2" "unilink-$svc" GRPC_ADDR="127.0.0.1:${GRPC2[$svc]}" HTTP_ADDR="127.0.0.1:${HTTP2[$svc]}"
done
start gateway-g1 unilink-gateway HTTP_ADDR=127.0.0.1:8011
start gateway-g2 unilink-gateway HTTP_ADDR=127.0.0.1:8012
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $LOG_DIR/nginx-bench.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream gateways { server 127.0.0.1:8011; server 127.0.0.1:8012; keepalive 128; }
  server {
    listen 127.0.0.1:8080 backlog=4096;
    location / {
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_read_timeout 1h;
    }
  }
}
EOF
chmod -R a+rwX "$WORK"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g "daemon off;" >"$LOG_DIR/nginx.log" 2>&1 </dev/null &
PID[nginx]=$!
STARTED+=(nginx)
deadline=$((SECONDS + 90))
until healthy "http://127.0.0.1:8011" && healthy "http://127.0.0.1:8012" && healthy "$LB"; do
  for name in "${STARTED[@]}"; do
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited (log: $LOG_DIR/$name.log)"
  done
  ((SECONDS < deadline)) || die "the second replicas did not become healthy in 90 s (logs in $LOG_DIR)"
  sleep 0.5
done
log "two replicas of everything behind nginx at $LB"

# The processes of each layout, for the CPU and memory accounting.
pid_of_port() { # the process listening on 127.0.0.1:PORT
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n1
}
declare -A FLEET2=() FLEET1=()
for svc in auth profile signaling notification; do
  FLEET1[$svc]="$(pid_of_port "${GRPC1[$svc]}")"
  FLEET2[$svc-1]="${FLEET1[$svc]}"
  FLEET2[$svc-2]="${PID[$svc-2]}"
done
FLEET1[gateway]="$(pid_of_port 8000)"
FLEET2[gateway-1]="${PID[gateway-g1]}"
FLEET2[gateway-2]="${PID[gateway-g2]}"
# nginx's work is done by its worker processes.
FLEET2[nginx]="${PID[nginx]} $(pgrep -P "${PID[nginx]}" | tr '\n' ' ')"
for name in "${!FLEET1[@]}"; do
  [[ -n "${FLEET1[$name]}" ]] || die "no process found listening for $name of the dev fleet"
done
REDIS_PID="$(pid_of_port 6379)"
PG_PIDS() { pgrep -d' ' -x postgres 2>/dev/null || pgrep -d' ' postgres || true; }

ticks() { # ticks PID... — utime+stime of the processes (and their threads)
  local total=0 pid
  for pid in "$@"; do
    [[ -r "/proc/$pid/stat" ]] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  printf '%s' "$total"
}

# cpu_report LABEL LAYOUT CMD... — runs CMD and prints the CPU seconds each
# process of LAYOUT (FLEET1 or FLEET2), Redis, PostgreSQL and the load
# generator used meanwhile.
cpu_report() {
  local label="$1" layout="$2" name hz started
  shift 2
  local -n procs="$layout"
  hz="$(getconf CLK_TCK)"
  declare -A before=()
  # shellcheck disable=SC2086 # a name may stand for several processes
  for name in "${!procs[@]}"; do before[$name]="$(ticks ${procs[$name]})"; done
  local redis_before pg_before self_before
  redis_before="$(ticks "$REDIS_PID")"
  # shellcheck disable=SC2046
  pg_before="$(ticks $(PG_PIDS))"
  self_before="$(awk '{print $16 + $17}' /proc/$$/stat)"
  started=$SECONDS
  "$@"
  local line="cpu s during $label ($((SECONDS - started)) s):"
  for name in $(printf '%s\n' "${!procs[@]}" | sort); do
    # shellcheck disable=SC2086
    line+=" $name=$(awk -v a="${before[$name]}" -v b="$(ticks ${procs[$name]})" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz}')"
  done
  line+=" redis=$(awk -v a="$redis_before" -v b="$(ticks "$REDIS_PID")" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz}')"
  # shellcheck disable=SC2046
  line+=" postgres=$(awk -v a="$pg_before" -v b="$(ticks $(PG_PIDS))" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz}')"
  line+=" load-generator=$(awk -v a="$self_before" -v b="$(awk '{print $16 + $17}' /proc/$$/stat)" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz}')"
  printf '%s\n' "$line"
}

# ----------------------------------------------------------------- users --

needed=$((2 * PAIRS > SOCKETS ? 2 * PAIRS : SOCKETS))
needed=$((2 * SETUP_PAIRS > needed ? 2 * SETUP_PAIRS : needed))
seed=${SEED_USERS:-10000}
((seed >= needed)) || seed=$needed
scripts/bench-seed.sh "$seed" 0 >&2
scripts/bench-users.sh "$needed" >"$WORK/ids"
"$LOAD" mint-tokens --ids-file "$WORK/ids" --out "$WORK/users"
first_token="$(awk 'NR==1 {print $2}' "$WORK/users")"
EMAIL="bench-signin@kiit.ac.in"
PASSWORD="correct horse battery"
"$LOAD" bootstrap --base "$ONE" --mail-dir "$ROOT/.dev/mail" --email "$EMAIL" --password "$PASSWORD" >/dev/null

# ------------------------------------------------------------- scenarios --

for layout in FLEET2 FLEET1; do
  if [[ $layout == FLEET2 ]]; then
    base="$LB" what="two replicas of everything behind nginx"
  else
    base="$ONE" what="one replica of everything"
  fi
  log "=== $what ($base)"
  # Idle sockets first, and only over two replicas: resident memory grows
  # cleanly only in fresh processes (allocators keep what was freed), and
  # the one-replica figure is bench-signaling.sh's.
  if wants idle && [[ $layout == FLEET2 ]]; then
    cpu_report "idle sockets, $what" "$layout" \
      "$LOAD" presence-idle --base "$base" --users "$WORK/users" --sockets "$SOCKETS" \
      --ramp 1000 --seconds 15 --pids "${PID[gateway-g1]},${PID[gateway-g2]},${FLEET2[signaling-1]},${FLEET2[signaling-2]}"
  fi
  if wants signin; then
    cpu_report "sign-in + reads, $what" "$layout" \
      "$LOAD" auth-mix --base "$base" --token "$first_token" --email "$EMAIL" --password "$PASSWORD" \
      --connections 64 --logins "$LOGINS" --seconds "$SECS"
  fi
  if wants setup; then
    vacuum_calls "$DATABASE_URL"
    cpu_report "call set-up, $what" "$layout" \
      "$LOAD" call-setup --base-a "$base" --base-b "$base" --users "$WORK/users" \
      --pairs "$SETUP_PAIRS" --seconds "$SECS"
  fi
  if wants relay; then
    cpu_report "relay at $RATE frames/s, $what" "$layout" \
      "$LOAD" relay --base-a "$base" --base-b "$base" --users "$WORK/users" \
      --pairs "$PAIRS" --rate "$RATE" --seconds "$SECS" --bare-redis "$REDIS_URL"
    cpu_report "relay as fast as possible, $what" "$layout" \
      "$LOAD" relay --base-a "$base" --base-b "$base" --users "$WORK/users" \
      --pairs "$PAIRS" --rate 0 --window 32 --seconds "$SECS" --bare-redis "$REDIS_URL"
  fi
done
log "done; stopping the second replicas and nginx"
