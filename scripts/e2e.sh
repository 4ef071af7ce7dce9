#!/usr/bin/env bash
# scripts/e2e.sh — a real call between two real browsers through the fleet (see --help).
set -euo pipefail

LOG_TAG=e2e
# shellcheck source=scripts/lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"

usage() {
  cat <<'EOF'
Usage: scripts/e2e.sh [--no-build] [--prepare] [--help]

End-to-end test of the reference web client (services/gateway/web) in
headless Chromium, through the whole fleet:

  PostgreSQL, Redis (private, throwaway), auth, profile, notification,
  TWO signaling replicas, THREE gateways (a and b, and c as the balancer's
  fallback for both), nginx in front of the gateways (the browsers' only
  address), an SMTP sink (inside the test script) that the
  notification service delivers the real emails to, and coturn
  (deploy/coturn: the shipped turnserver.conf and entrypoint) that
  signaling's TURN_URLS point at.

The browser test (scripts/e2e/e2e.mjs, playwright-core driving Debian's
chromium with a fake camera) signs two users up and in from their emails,
has them call each other, checks that both peer connections connect and
decode the other's video, chats both ways, toggles mute and camera, reloads
both pages mid-call (each rejoins), hangs up and checks both histories; has
a call declined; kill -9s the caller's gateway mid-call (the
page reconnects its signaling socket with last_seq through the balancer and
misses nothing); then kill -9s the signaling replica holding the caller's
call stream during set-up, and checks the call still connects. Last, relay
only: a TURN client in the test checks coturn takes the credentials GET
/calls/ice-servers minted (not another secret's, not expired ones) and
refuses private, link-local and reserved peers; both users tick "Always
relay my calls" (iceTransportPolicy "relay"), call, and the selected
candidate pair must be relay to relay through coturn, with video decoded.
Screenshots and logs: target/e2e/.

Everything runs inside a private network namespace (unshare -n, only a
loopback interface): Chromium offers loopback ICE candidates only, the fixed
ports inside cannot clash with anything on the machine, and nothing outside
is reached. Needs root (for unshare -n and the throwaway PostgreSQL).

Missing tools are installed: chromium, nginx-light, postgresql,
redis-server, coturn (apt-get) and playwright-core (npm ci from
scripts/e2e/package-lock.json).
The run is bounded (E2E_TIMEOUT seconds, default 180, builds and installs
excluded; a passing run takes about 25 s) and stops every process it started.

Options:
  --no-build   use the existing target/debug binaries (no cargo build --bins)
  --prepare    install the missing tools and packages, then exit
  -h, --help   show this help

Environment:
  E2E_TIMEOUT      seconds for the run inside the namespace [180]
  CHROMIUM         browser executable [/usr/bin/chromium]
  CARGO_TARGET_DIR where the binaries are [target]
EOF
}

ROOT="$(repo_root)"
OUT_DIR="$ROOT/target/e2e"
LOG_DIR="$OUT_DIR/logs"
TEST_DIR="$ROOT/scripts/e2e"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
[[ "$BIN_DIR" == /* ]] || BIN_DIR="$ROOT/$BIN_DIR"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

# Ports inside the namespace (private: nothing else listens there).
PG_PORT=5432
REDIS_PORT=6379
SMTP_PORT=2525
LB_PORT=8080
declare -A GRPC_PORT=([auth]=50051 [profile]=50052 [signaling-1]=50053 [signaling-2]=50063 [notification]=50054)
declare -A HTTP_PORT=([auth]=9101 [profile]=9102 [signaling-1]=9103 [signaling-2]=9113 [notification]=9104
  [gateway-a]=8001 [gateway-b]=8002 [gateway-c]=8003)

# ===================================================================== outside

ensure_tools() {
  [[ $EUID -eq 0 ]] || die "run as root: the test needs a private network namespace (unshare -n)"
  command -v unshare >/dev/null 2>&1 || apt_install util-linux
  command -v ip >/dev/null 2>&1 || apt_install iproute2
  command -v curl >/dev/null 2>&1 || apt_install curl
  # A font, so that screenshots show text (chromium only recommends one).
  [[ -x "$CHROMIUM" ]] || apt_install chromium fonts-dejavu-core
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || apt_install nginx-light
  _pg_bindir >/dev/null || apt_install postgresql
  _redis_server_bin >/dev/null || apt_install redis-server
  command -v turnserver >/dev/null 2>&1 || apt_install coturn
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  _ensure_postgres_user
  if [[ ! -d "$TEST_DIR/node_modules/playwright-core" ||
    "$TEST_DIR/package-lock.json" -nt "$TEST_DIR/node_modules/.package-lock.json" ]]; then
    log "installing playwright-core (npm ci)"
    (cd "$TEST_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $TEST_DIR failed"
  fi
}

outside() {
  local build=1 rc=0 started
  while (($# > 0)); do
    case "$1" in
      -h | --help)
        usage
        exit 0
        ;;
      --no-build) build=0 ;;
      --prepare)
        ensure_tools
        exit 0
        ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
  local timeout_s="${E2E_TIMEOUT:-180}"
  [[ "$timeout_s" =~ ^[0-9]+$ ]] || die "E2E_TIMEOUT must be a number of seconds, got '$timeout_s'"
  ensure_tools
  if [[ $build -eq 1 ]]; then
    log "building binaries (cargo build --bins)"
    (cd "$ROOT" && cargo build --bins) || die "cargo build --bins failed"
  fi
  for bin in auth profile signaling notification gateway; do
    [[ -x "$BIN_DIR/unilink-$bin" ]] || die "$BIN_DIR/unilink-$bin not found (build first)"
  done
  rm -rf "$OUT_DIR"
  mkdir -p "$LOG_DIR"
  log "running inside a private network namespace (at most ${timeout_s}s)"
  started=$SECONDS
  timeout --kill-after=15 "$timeout_s" unshare --net -- bash "${BASH_SOURCE[0]}" --inside || rc=$?
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    log "TIMED OUT after $((SECONDS - started))s; logs in $LOG_DIR"
  elif [[ $rc -ne 0 ]]; then
    log "FAILED (exit $rc) after $((SECONDS - started))s; logs in $LOG_DIR"
  else
    log "passed in $((SECONDS - started))s; screenshots in $OUT_DIR"
  fi
  return "$rc"
}

# ====================================================================== inside

PIDS=()   # every process started here, in start order
declare -A PID_OF=()
WORK=""

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  # The test and the services first (they still talk to the data stores),
  # then PostgreSQL (fast shutdown) and Redis, then whatever is left.
  local services=() stores=()
  for pid in "${PIDS[@]}"; do
    if [[ "$pid" == "${PID_OF[postgres]:-}" || "$pid" == "${PID_OF[redis]:-}" ]]; then
      stores+=("$pid")
    else
      services+=("$pid")
    fi
  done
  stop_pids TERM "${services[@]}"
  [[ -n "${PID_OF[postgres]:-}" ]] && { kill -INT "${PID_OF[postgres]}" 2>/dev/null || true; }
  stop_pids TERM "${stores[@]}"
  # Anything else left in this private namespace was started by this run
  # (Chromium puts itself in its own process group): stop it too.
  sweep_namespace
  wait 2>/dev/null || true
  [[ -n "$WORK" ]] && rm -rf "$WORK"
  exit "$rc"
}

# stop_pids SIGNAL PID... — send SIGNAL, wait up to 8 s, then SIGKILL.
stop_pids() {
  local signal="$1" pid alive deadline
  shift
  (($# > 0)) || return 0
  for pid in "$@"; do
    kill "-$signal" "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + 8))
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "$@"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive == 0)) && return 0
    sleep 0.1
  done
  for pid in "$@"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# sweep_namespace — SIGKILL every other process in this network namespace.
sweep_namespace() {
  local own proc pid
  own="$(readlink /proc/self/ns/net)" || return 0
  for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    [[ "$(readlink "$proc/ns/net" 2>/dev/null)" == "$own" ]] || continue
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# spawn NAME CMD... — start CMD in the background, logging to $LOG_DIR/NAME.log.
spawn() {
  local name="$1"
  shift
  "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
  PID_OF[$name]=$!
}

# alive_or_die NAME — fail with the log's tail when NAME has exited.
alive_or_die() {
  local pid="${PID_OF[$1]}"
  if ! kill -0 "$pid" 2>/dev/null; then
    tail -n 30 "$LOG_DIR/$1.log" >&2 || true
    die "$1 exited during start-up (log: $LOG_DIR/$1.log)"
  fi
}

# wait_http NAME URL SECONDS — until URL answers 2xx (NAME must stay alive).
wait_http() {
  local name="$1" url="$2" deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    alive_or_die "$name"
    ((SECONDS < deadline)) || die "$name did not answer $url within $3s (log: $LOG_DIR/$name.log)"
    sleep 0.25
  done
}

start_postgres() {
  local bindir data="$WORK/pg"
  bindir="$(_pg_bindir)" || die "PostgreSQL server binaries not found"
  mkdir -p "$data"
  chown postgres: "$data"
  setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-locale \
    >"$LOG_DIR/initdb.log" 2>&1 || die "initdb failed (log: $LOG_DIR/initdb.log)"
  # exec'd by setpriv (no fork), so the pid is the postmaster's.
  spawn postgres setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bindir/postgres" -D "$data" -k "$data" -c listen_addresses=127.0.0.1 -p "$PG_PORT" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200
  local deadline=$((SECONDS + 30))
  until PGCONNECT_TIMEOUT=2 psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c 'CREATE DATABASE unilink' >/dev/null 2>&1; do
    alive_or_die postgres
    ((SECONDS < deadline)) || die "PostgreSQL did not come up (log: $LOG_DIR/postgres.log)"
    sleep 0.25
  done
}

start_redis() {
  mkdir -p "$WORK/redis"
  spawn redis "$(_redis_server_bin)" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$WORK/redis"
  wait_until 15 redis_ping 127.0.0.1 "$REDIS_PORT" || die "Redis did not come up (log: $LOG_DIR/redis.log)"
}

# service NAME BINARY [ARGS...] — exec a fleet binary with NAME's addresses
# (call it in a subshell: `spawn` runs it in the background, or `( … )`).
service() {
  local name="$1" bin="$2"
  shift 2
  if [[ -n "${GRPC_PORT[$name]:-}" ]]; then
    export GRPC_ADDR="127.0.0.1:${GRPC_PORT[$name]}"
  fi
  export HTTP_ADDR="127.0.0.1:${HTTP_PORT[$name]}"
  exec "$BIN_DIR/unilink-$bin" "$@"
}

# The TURN relay: deploy/coturn's entrypoint and turnserver.conf as shipped,
# plus what only this loopback test may do. Production denies loopback peers
# (denied-peer-ip 127.0.0.0/8, no allow-loopback-peers) so that nobody can
# relay into the host's own services; here both browsers' relay addresses
# are 127.0.0.1, the only address in this namespace, so exactly 127.0.0.1 is
# allowed back (allowed-peer-ip). Every other denied range stays denied, and
# the browser test checks that.
start_turn() {
  local conf="$ROOT/deploy/coturn/turnserver.conf" dir="$WORK/turn"
  TURN_PORT="$(sed -n 's/^listening-port=//p' "$conf")"
  TURN_RELAY_PORTS="$(sed -n 's/^min-port=//p' "$conf")-$(sed -n 's/^max-port=//p' "$conf")"
  [[ "$TURN_PORT" =~ ^[0-9]+$ && "$TURN_RELAY_PORTS" =~ ^[0-9]+-[0-9]+$ ]] ||
    die "cannot read listening-port/min-port/max-port from $conf"
  mkdir -p "$dir"
  chown turnserver: "$dir"
  TURN_SECRET="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export TURN_SECRET
  export TURN_URLS="turn:127.0.0.1:$TURN_PORT?transport=udp,turn:127.0.0.1:$TURN_PORT?transport=tcp"
  spawn coturn env TURN_CONFIG="$conf" TURN_RUN_DIR="$dir" TURN_LISTENING_IP=127.0.0.1 \
    setpriv --reuid=turnserver --regid=turnserver --init-groups \
    "$ROOT/deploy/coturn/entrypoint.sh" --allow-loopback-peers --allowed-peer-ip=127.0.0.1 --verbose
  local deadline=$((SECONDS + 15))
  until tcp_open 127.0.0.1 "$TURN_PORT"; do
    alive_or_die coturn
    ((SECONDS < deadline)) || die "coturn did not listen on $TURN_PORT within 15s (log: $LOG_DIR/coturn.log)"
    sleep 0.25
  done
}

start_balancer() {
  local conf="$WORK/nginx/nginx.conf"
  mkdir -p "$WORK/nginx/tmp"
  # Sticky by cookie (a real balancer's session affinity): the test gives
  # each browser context its own replica, with c as the fallback when that
  # one is down; without the cookie, round robin. Each answer says which
  # replica served it (X-Upstream).
  cat >"$conf" <<EOF
worker_processes 1;
user root;
pid $WORK/nginx/nginx.pid;
error_log $LOG_DIR/nginx-error.log warn;
events { worker_connections 256; }
http {
  # No query strings in the log: the sockets carry the token there.
  log_format path_only '\$remote_addr [\$time_local] "\$request_method \$uri" \$status \$body_bytes_sent \$upstream_addr \$request_time';
  access_log $LOG_DIR/nginx-access.log path_only;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  map \$cookie_unilink_replica \$gateway_pool { a gateway_a; b gateway_b; default gateways; }
  upstream gateways { server 127.0.0.1:${HTTP_PORT[gateway-a]}; server 127.0.0.1:${HTTP_PORT[gateway-b]}; }
  upstream gateway_a { server 127.0.0.1:${HTTP_PORT[gateway-a]}; server 127.0.0.1:${HTTP_PORT[gateway-c]} backup; }
  upstream gateway_b { server 127.0.0.1:${HTTP_PORT[gateway-b]}; server 127.0.0.1:${HTTP_PORT[gateway-c]} backup; }
  server {
    listen 127.0.0.1:$LB_PORT;
    location / {
      proxy_pass http://\$gateway_pool;
      proxy_http_version 1.1;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      add_header X-Upstream \$upstream_addr always;
    }
  }
}
EOF
  nginx -t -q -c "$conf" >"$LOG_DIR/nginx-test.log" 2>&1 || {
    cat "$LOG_DIR/nginx-test.log" >&2
    die "nginx rejected its configuration"
  }
  spawn nginx nginx -c "$conf" -g 'daemon off;'
  wait_http nginx "http://127.0.0.1:$LB_PORT/livez" 15
}

# replica_list KIND NAME... — `NAME=<pid>@http://127.0.0.1:<http port>,…`
# of the processes KIND-NAME (for the test: what to kill, where to scrape).
replica_list() {
  local kind="$1" name out=()
  shift
  for name in "$@"; do
    out+=("$name=${PID_OF[$kind-$name]}@http://127.0.0.1:${HTTP_PORT[$kind-$name]}")
  done
  (IFS=,; printf '%s' "${out[*]}")
}

inside() {
  trap cleanup EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  ip link set lo up
  WORK="$(mktemp -d /tmp/unilink-e2e.XXXXXX)"
  chmod 755 "$WORK"
  local t0=$SECONDS

  start_postgres
  start_redis
  start_turn
  log "PostgreSQL, Redis and coturn up ($((SECONDS - t0))s)"

  export ENVIRONMENT=development
  export LOG_LEVEL=info
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/unilink"
  export DATABASE_POOL_SIZE=4 DATABASE_MAX_OVERFLOW=8
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  export SMTP_SERVER=127.0.0.1 SMTP_PORT="$SMTP_PORT" SMTP_TIMEOUT_SECONDS=5
  export BACKEND_URL="http://127.0.0.1:$LB_PORT"
  export FRONTEND_URL="http://127.0.0.1:$LB_PORT/app"
  export ALLOWED_ORIGINS="http://127.0.0.1:$LB_PORT"
  export TRUSTED_PROXIES=127.0.0.1
  export RATE_LIMIT_AUTH=1000 RATE_LIMIT_AUTH_ADDRESS=10000 RATE_LIMIT_API=10000
  export SHUTDOWN_GRACE_SECONDS=2
  export AUTH_GRPC_URL="http://127.0.0.1:${GRPC_PORT[auth]}"
  export PROFILE_GRPC_URL="http://127.0.0.1:${GRPC_PORT[profile]}"
  export NOTIFICATION_GRPC_URL="http://127.0.0.1:${GRPC_PORT[notification]}"
  export SIGNALING_GRPC_URL="http://127.0.0.1:${GRPC_PORT[signaling-1]},http://127.0.0.1:${GRPC_PORT[signaling-2]}"

  local svc
  for svc in auth profile signaling notification; do
    local name="$svc"
    [[ "$svc" == signaling ]] && name=signaling-1
    (service "$name" "$svc" migrate) >"$LOG_DIR/$svc.migrate.log" 2>&1 ||
      die "unilink-$svc migrate failed (log: $LOG_DIR/$svc.migrate.log)"
  done
  log "migrated ($((SECONDS - t0))s)"

  for svc in auth profile notification signaling-1 signaling-2; do
    spawn "$svc" service "$svc" "${svc%-[0-9]}"
  done
  for svc in auth profile notification signaling-1 signaling-2; do
    wait_http "$svc" "http://127.0.0.1:${HTTP_PORT[$svc]}/readyz" 60
  done
  for svc in gateway-a gateway-b gateway-c; do
    spawn "$svc" service "$svc" gateway
  done
  for svc in gateway-a gateway-b gateway-c; do
    wait_http "$svc" "http://127.0.0.1:${HTTP_PORT[$svc]}/health" 60
  done
  start_balancer
  log "fleet up behind nginx on 127.0.0.1:$LB_PORT ($((SECONDS - t0))s)"

  E2E_BASE_URL="http://127.0.0.1:$LB_PORT" \
    E2E_SMTP_PORT="$SMTP_PORT" \
    E2E_OUT_DIR="$OUT_DIR" \
    E2E_GATEWAYS="$(replica_list gateway a b c)" \
    E2E_SIGNALING="$(replica_list signaling 1 2)" \
    E2E_TURN_SECRET="$TURN_SECRET" E2E_TURN_RELAY_PORTS="$TURN_RELAY_PORTS" E2E_TURN_LOG="$LOG_DIR/coturn.log" \
    node "$TEST_DIR/e2e.mjs" > >(tee "$LOG_DIR/browser-test.log") 2>&1 &
  local test_pid=$!
  PIDS+=("$test_pid")
  local rc=0
  wait "$test_pid" || rc=$?
  log "browser test finished with status $rc ($((SECONDS - t0))s in the namespace)"
  return "$rc"
}

if [[ "${1:-}" == "--inside" ]]; then
  shift
  inside "$@"
else
  outside "$@"
fi
