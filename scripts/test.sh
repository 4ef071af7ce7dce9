#!/usr/bin/env bash
# scripts/test.sh — run every check and test of the UniLink workspace (see --help).
set -euo pipefail

LOG_TAG="test"
# shellcheck source=scripts/lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"

usage() {
  cat <<'EOF'
Usage: scripts/test.sh [--help] [--] [TEST-RUNNER ARGS...]

Runs all checks and tests, in order, stopping at the first failure:
  1. cargo fmt --all -- --check
  2. cargo clippy --workspace --all-targets -- -D warnings
  3. cargo nextest run --workspace [ARGS...]   (if cargo-nextest is installed)
     + cargo test --workspace --doc            (doc tests; nextest skips them)
     or, without nextest: cargo test --workspace [ARGS...]
  4. scripts/test-extra.sh, if that file exists (hook for extra validation)

Before that it makes sure PostgreSQL (TEST_DATABASE_URL) and Redis
(TEST_REDIS_URL) answer — on a local host with nothing listening it installs
them with apt-get if needed and starts private instances under .dev/ (left
running afterwards; stop them with `scripts/dev.sh --stop-deps`) — exports
both URLs for the tests, and drops stale `unilink_test_%` databases left
over by earlier runs. The fleet fault tests (services/gateway/tests/fleet/
fleet_faults.rs) also need redis-server and nginx binaries: installed with
apt-get when missing.

Extra arguments are passed to the test runner (e.g. a test-name filter).
Prints a timing line per step and a summary; exits with the failing step's
status.

Environment (defaults in brackets):
  TEST_DATABASE_URL  ADMIN url; tests create one database per test
                     [postgres://postgres@127.0.0.1:5432/postgres]
  TEST_REDIS_URL     [redis://127.0.0.1:6379]
  CI                 when "true": CARGO_TERM_COLOR=never
  RUST_BACKTRACE     [1]
EOF
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  --) shift ;;
esac

ROOT="$(repo_root)"
cd "$ROOT"

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
if [[ "${CI:-}" == "true" ]]; then
  export CARGO_TERM_COLOR=never
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH (install Rust via rustup)"

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

ensure_postgres "$TEST_DATABASE_URL"
ensure_redis "$TEST_REDIS_URL"
ensure_psql
# The fleet fault tests run a private redis-server and nginx as the balancer.
_redis_server_bin >/dev/null || apt_install redis-server
ensure_nginx
# The Redis failover test runs Sentinels (redis-server --sentinel, the
# binary Debian's redis-sentinel links to); the TLS tests make certificates
# with openssl and run a PostgreSQL cluster of their own (initdb, postgres,
# pg_isready from the server package; setpriv to drop root).
command -v openssl >/dev/null 2>&1 || apt_install openssl
command -v setpriv >/dev/null 2>&1 || apt_install util-linux
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || apt_install postgresql

# --------------------------------------------------- stale test databases --

drop_stale_test_databases() {
  local dbs db n=0
  dbs="$(PGCONNECT_TIMEOUT=5 psql -X -q -tA -v ON_ERROR_STOP=1 -d "$TEST_DATABASE_URL" \
    -c "SELECT datname FROM pg_database WHERE datname LIKE 'unilink\_test\_%'")" ||
    die "could not list databases via TEST_DATABASE_URL (is it an admin URL the tests can use?)"
  while IFS= read -r db; do
    [[ -n "$db" ]] || continue
    db="${db//\"/\"\"}"
    PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -d "$TEST_DATABASE_URL" \
      -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" ||
      die "could not drop stale test database '$db'"
    n=$((n + 1))
  done <<<"$dbs"
  log "dropped $n stale unilink_test_% database(s)"
}
drop_stale_test_databases

# ------------------------------------------------------------------ steps --

SUMMARY=()
TOTAL_START=$SECONDS

_now() { date +%s.%N; }
_elapsed() { awk -v a="$1" -v b="$(_now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME CMD... — run one step, print its timing, stop on failure.
step() {
  local name="$1" start rc=0 took
  shift
  printf '\n' >&2
  log "==> $name: $*"
  start="$(_now)"
  "$@" || rc=$?
  took="$(_elapsed "$start")"
  if [[ $rc -ne 0 ]]; then
    SUMMARY+=("FAIL  ${took}s  $name")
    log "<== $name FAILED (exit $rc) in ${took}s"
    print_summary
    exit "$rc"
  fi
  SUMMARY+=("ok    ${took}s  $name")
  log "<== $name ok in ${took}s"
}

print_summary() {
  local line
  printf '\n' >&2
  log "summary:"
  for line in "${SUMMARY[@]}"; do
    log "  $line"
  done
  log "total: $((SECONDS - TOTAL_START))s"
}

# The extra checks' tools (apt, npm, PyPI) install in the background while
# the workspace builds and tests: downloads overlap the compiler.
EXTRA="$ROOT/scripts/test-extra.sh"
PREPARE_LOG="$ROOT/target/test-extra-prepare.log"
PREPARE_PID=""
if [[ -e "$EXTRA" ]]; then
  mkdir -p "$ROOT/target"
  bash "$EXTRA" --prepare >"$PREPARE_LOG" 2>&1 &
  PREPARE_PID=$!
  log "installing the extra checks' tools in the background (log: $PREPARE_LOG)"
fi
# Waits for that; a failure is reported and left to test-extra itself.
wait_prepared() {
  [[ -n "$PREPARE_PID" ]] || return 0
  if wait "$PREPARE_PID"; then
    log "extra checks' tools ready"
  else
    warn "installing the extra checks' tools failed; test-extra tries again. Its log:"
    cat "$PREPARE_LOG" >&2 || true
  fi
  PREPARE_PID=""
}
trap '[[ -z "$PREPARE_PID" ]] || kill "$PREPARE_PID" 2>/dev/null || true' EXIT

step "fmt" cargo fmt --all -- --check
step "clippy" cargo clippy --workspace --all-targets -- -D warnings
if command -v cargo-nextest >/dev/null 2>&1; then
  step "test (nextest)" cargo nextest run --workspace --no-tests=warn "$@"
  step "doctest" cargo test --workspace --doc
else
  step "test" cargo test --workspace "$@"
fi

wait_prepared
if [[ -x "$EXTRA" ]]; then
  step "test-extra" "$EXTRA"
elif [[ -e "$EXTRA" ]]; then
  warn "$EXTRA exists but is not executable; running it with bash (chmod +x it)"
  step "test-extra" bash "$EXTRA"
fi

print_summary
log "all checks passed"
