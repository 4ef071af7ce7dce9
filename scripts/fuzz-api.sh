#!/usr/bin/env bash
# scripts/fuzz-api.sh — property-based fuzzing of the public REST API with
# schemathesis, driven by the gateway's own /openapi.json (see --help).
set -euo pipefail

LOG_TAG=fuzz
# shellcheck source=scripts/lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"

SCHEMATHESIS_VERSION=4.32.5

usage() {
  cat <<'EOF'
Usage: scripts/fuzz-api.sh [--no-build] [--prepare] [--help]

Fuzzes every operation of the gateway's OpenAPI description with
schemathesis (PyPI, pinned) and fails on any server error (5xx other than
503/504 from an outage, which would be a real outage here):

  1. makes sure PostgreSQL (TEST_DATABASE_URL) and Redis (TEST_REDIS_URL)
     answer, creates a throwaway database unilink_fuzz_<pid> and uses the
     Redis key prefix unilink-fuzz-<pid>: (both removed at exit);
  2. builds the debug binaries (unless --no-build) and starts auth, profile,
     signaling, notification and the gateway on free loopback ports, mails
     written to a temporary folder (EMAIL_OUTBOX_DIR);
  3. signs a user up and in through those mails (unilink-load bootstrap),
     makes them an administrator (scripts/make-admin.sh) and logs in again,
     so admin routes are fuzzed beyond their 403; signs a second user up and
     reports them, and hands both ids to the operations that take a user or
     report id (schemathesis.toml), so those get past their 404;
  4. installs schemathesis into a virtualenv if missing and runs
       st run <gateway>/openapi.json --checks not_a_server_error
     with the bearer token, a fixed seed and example budget; /auth/logout
     and DELETE /users/me are left out (they would end the session);
  5. stops everything it started (also on Ctrl-C or failure).

The run is bounded by FUZZ_TIMEOUT seconds (schemathesis alone; default 180).
With --prepare it only installs schemathesis (step 4's virtualenv) and exits.

Environment (defaults in brackets):
  TEST_DATABASE_URL   admin URL of the PostgreSQL server
                      [postgres://postgres@127.0.0.1:5432/postgres]
  TEST_REDIS_URL      [redis://127.0.0.1:6379]
  FUZZ_MAX_EXAMPLES   test cases per operation and phase [30]
  FUZZ_SEED           [20260101]
  FUZZ_TIMEOUT        seconds for the schemathesis run [180]
  SCHEMATHESIS_VENV   virtualenv holding schemathesis
                      [~/.cache/unilink/schemathesis-<version>]
  CARGO_TARGET_DIR    where the binaries are [target]
Reports (JUnit, NDJSON) and service logs: target/fuzz-api/.
EOF
}

DO_BUILD=1
PREPARE=0
while (($# > 0)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --no-build) DO_BUILD=0 ;;
    --prepare) PREPARE=1 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

ROOT="$(repo_root)"
cd "$ROOT"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
[[ "$BIN_DIR" == /* ]] || BIN_DIR="$ROOT/$BIN_DIR"
OUT_DIR="$ROOT/target/fuzz-api"
LOG_DIR="$OUT_DIR/logs"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-30}"
SEED="${FUZZ_SEED:-20260101}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-180}"
VENV="${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/unilink/schemathesis-$SCHEMATHESIS_VERSION}"
for n in "$MAX_EXAMPLES" "$SEED" "$FUZZ_TIMEOUT"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "FUZZ_MAX_EXAMPLES, FUZZ_SEED and FUZZ_TIMEOUT must be numbers, got '$n'"
done

ADMIN_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
DB_NAME="unilink_fuzz_$$"
PREFIX="unilink-fuzz-$$:"
DB_HOST="$(url_host "$ADMIN_URL")"
DB_PORT="$(url_port "$ADMIN_URL" 5432)"
DB_USERINFO="$(url_userinfo "$ADMIN_URL")"
DB_URL="postgres://${DB_USERINFO:+$DB_USERINFO@}$DB_HOST:$DB_PORT/$DB_NAME"

BACKENDS=(auth profile signaling notification)
declare -A PIDS=()
WORK=""
DB_CREATED=0

# ---------------------------------------------------------------- cleanup --

cleanup() {
  local rc=$? svc pid deadline
  trap - EXIT INT TERM
  for svc in gateway "${BACKENDS[@]}"; do
    pid="${PIDS[$svc]:-}"
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  for svc in gateway "${BACKENDS[@]}"; do
    pid="${PIDS[$svc]:-}"
    [[ -n "$pid" ]] || continue
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $DB_CREATED -eq 1 ]]; then
    PGCONNECT_TIMEOUT=5 psql -X -q -d "$ADMIN_URL" \
      -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 ||
      warn "could not drop database $DB_NAME"
  fi
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -u "$REDIS" --scan --pattern "${PREFIX}*" 2>/dev/null |
      xargs -r -n 500 redis-cli -u "$REDIS" DEL >/dev/null 2>&1 || true
  fi
  [[ -n "$WORK" ]] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------- dependencies --

command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH"
command -v curl >/dev/null 2>&1 || apt_install curl
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
ensure_postgres "$ADMIN_URL"
ensure_redis "$REDIS"
ensure_psql

if [[ ! -x "$VENV/bin/st" ]] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
    die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"
fi
[[ $PREPARE -eq 0 ]] || exit 0

if [[ $DO_BUILD -eq 1 ]]; then
  log "building the binaries (debug)"
  cargo build -q -p unilink-auth -p unilink-profile -p unilink-signaling -p unilink-notification \
    -p unilink-gateway -p unilink-loadgen --bins || die "cargo build failed"
fi
for bin in "${BACKENDS[@]}" gateway load; do
  [[ -x "$BIN_DIR/unilink-$bin" ]] || die "$BIN_DIR/unilink-$bin not found (build it, or drop --no-build)"
done

# ------------------------------------------------------------------ fleet --

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

rm -rf "$OUT_DIR"
mkdir -p "$LOG_DIR"
WORK="$(mktemp -d)"
mkdir -p "$WORK/mail"

PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_URL" -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null ||
  die "could not create database $DB_NAME"
DB_CREATED=1

export ENVIRONMENT=development
export LOG_LEVEL="${LOG_LEVEL:-warn}"
export DATABASE_URL="$DB_URL"
export DATABASE_POOL_SIZE=4 DATABASE_MAX_OVERFLOW=4
export REDIS_URL="$REDIS"
export REDIS_KEY_PREFIX="$PREFIX"
export EMAIL_OUTBOX_DIR="$WORK/mail"
export RATE_LIMIT_AUTH=1000000 RATE_LIMIT_AUTH_ADDRESS=1000000 RATE_LIMIT_API=1000000
unset SMTP_SERVER
declare -A GRPC=() HTTP=()
for svc in "${BACKENDS[@]}"; do
  GRPC[$svc]="$(free_port)"
  HTTP[$svc]="$(free_port)"
done
HTTP[gateway]="$(free_port)"
export AUTH_GRPC_URL="http://127.0.0.1:${GRPC[auth]}"
export PROFILE_GRPC_URL="http://127.0.0.1:${GRPC[profile]}"
export SIGNALING_GRPC_URL="http://127.0.0.1:${GRPC[signaling]}"
export NOTIFICATION_GRPC_URL="http://127.0.0.1:${GRPC[notification]}"
BASE="http://127.0.0.1:${HTTP[gateway]}"

# start SERVICE [ARGS...] — exec the service binary with its own addresses.
# Run it in a subshell (`(start …)` or `start … &`), so $! is the service.
start() {
  local svc="$1"
  shift
  if [[ -n "${GRPC[$svc]:-}" ]]; then
    export GRPC_ADDR="127.0.0.1:${GRPC[$svc]}"
  fi
  export HTTP_ADDR="127.0.0.1:${HTTP[$svc]}"
  exec "$BIN_DIR/unilink-$svc" "$@"
}

for svc in "${BACKENDS[@]}"; do
  (start "$svc" migrate) >"$LOG_DIR/$svc.migrate.log" 2>&1 ||
    die "unilink-$svc migrate failed; see $LOG_DIR/$svc.migrate.log"
done
for svc in "${BACKENDS[@]}" gateway; do
  start "$svc" >"$LOG_DIR/$svc.log" 2>&1 </dev/null &
  PIDS[$svc]=$!
done
log "fleet starting (gateway $BASE, database $DB_NAME, redis prefix $PREFIX)"
wait_until 60 healthy "$BASE" || {
  tail -n 20 "$LOG_DIR/gateway.log" >&2 || true
  die "the gateway did not become healthy within 60 s"
}

# ------------------------------------------------------------------ token --

EMAIL="fuzzer@kiit.ac.in"
PASSWORD="fuzz-password-0123"
"$BIN_DIR/unilink-load" bootstrap --base "$BASE" --mail-dir "$WORK/mail" --email "$EMAIL" \
  --password "$PASSWORD" >/dev/null || die "could not sign the fuzzing user up"
DATABASE_URL="$DB_URL" "$ROOT/scripts/make-admin.sh" "$EMAIL" >/dev/null ||
  die "could not make the fuzzing user an administrator"
# The next login mail is told from the first by its time (1 s resolution).
sleep 1.2
TOKEN="$("$BIN_DIR/unilink-load" bootstrap --base "$BASE" --mail-dir "$WORK/mail" --email "$EMAIL" \
  --password "$PASSWORD")" || die "could not log the fuzzing user in"
[[ -n "$TOKEN" ]] || die "no access token"

# Real ids, so operations that take one get past their 404 too: another
# user (viewed, blocked, reported; deactivated last) and a report on them.
sleep 1.2
PEER_TOKEN="$("$BIN_DIR/unilink-load" bootstrap --base "$BASE" --mail-dir "$WORK/mail" \
  --email "peer@kiit.ac.in" --password "$PASSWORD")" || die "could not sign the second user up"
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)'"$1"')'; }
PEER_ID="$(curl -fsS -H "Authorization: Bearer $PEER_TOKEN" "$BASE/users/me" | json_field '["id"]')" ||
  die "could not read the second user's id"
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
  -d '{"reason": "spam"}' "$BASE/users/report/$PEER_ID" || die "could not report the second user"
REPORT_ID="$(curl -fsS -H "Authorization: Bearer $TOKEN" "$BASE/admin/reports" | json_field '["reports"][0]["id"]')" ||
  die "could not read the report's id"
# schemathesis reads schemathesis.toml from its working directory.
cat >"$WORK/schemathesis.toml" <<EOF
[[operations]]
include-operation-id = ["getUser", "blockUser", "unblockUser", "reportUser", "deactivateUser"]
parameters = { "path.id" = "$PEER_ID" }

[[operations]]
include-operation-id = ["resolveReport"]
parameters = { "path.id" = "$REPORT_ID" }
EOF

# ------------------------------------------------------------------- fuzz --

log "schemathesis $SCHEMATHESIS_VERSION: $MAX_EXAMPLES examples per operation, seed $SEED, at most ${FUZZ_TIMEOUT}s"
started=$SECONDS
deadline=$((SECONDS + FUZZ_TIMEOUT))
# fuzz NAME ARGS... — one schemathesis run within what is left of the budget.
fuzz() {
  local name="$1" left=$((deadline - SECONDS)) rc=0
  shift
  ((left > 0)) || die "no time left for the $name run (FUZZ_TIMEOUT=${FUZZ_TIMEOUT}s)"
  # From the temporary folder: schemathesis keeps a cache in the working directory.
  (cd "$WORK" && timeout --kill-after=10 "$left" "$VENV/bin/st" run "$BASE/openapi.json" \
    --url "$BASE" \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --generation-database none \
    --workers 1 \
    --request-timeout 10 \
    --no-color \
    --report junit,ndjson --report-dir "$OUT_DIR/$name" "$@") || rc=$?
  case $rc in
    0) ;;
    124 | 137) die "schemathesis ($name) did not finish within the ${FUZZ_TIMEOUT}s budget" ;;
    *) die "schemathesis ($name) found server errors (exit $rc); reports in $OUT_DIR/$name" ;;
  esac
}
# Everything but what ends the session (schemathesis feeds ids it has seen,
# the caller's own included, into every operation that takes one)...
fuzz main --exclude-operation-id logout --exclude-operation-id deleteMe \
  --exclude-operation-id deactivateUser
# ...then those, last.
fuzz terminal --include-operation-id deactivateUser --include-operation-id deleteMe \
  --include-operation-id logout
took=$((SECONDS - started))
if grep -q '"level": *"ERROR"\|"level":"ERROR"' "$LOG_DIR"/*.log 2>/dev/null; then
  warn "services logged errors during the run (see $LOG_DIR):"
  grep -h '"level": *"ERROR"\|"level":"ERROR"' "$LOG_DIR"/*.log | head -n 5 >&2 || true
fi
for svc in "${BACKENDS[@]}" gateway; do
  kill -0 "${PIDS[$svc]}" 2>/dev/null || die "unilink-$svc died during the run; see $LOG_DIR/$svc.log"
done
log "no server error in ${took}s; reports in $OUT_DIR"
