# shellcheck shell=bash
# shellcheck disable=SC2016,SC2034  # bash -c snippets use $0/$1 on purpose; DEPS_* flags are read by callers
#
# scripts/lib/deps.sh — shared helpers for UniLink's dev/test scripts.
#
# This file is meant to be SOURCED (by scripts/dev.sh, scripts/test.sh, ...),
# never executed. It defines:
#
#   log / warn / die          logging helpers (all output goes to stderr)
#   repo_root                 absolute path of the repository root
#   url_host / url_port / url_user / url_dbname / url_admin
#                             tiny URL parsers for postgres:// and redis:// URLs
#   tcp_open HOST PORT        true if something accepts TCP connections there
#   redis_ping HOST PORT      true if a Redis server answers PING there
#   ensure_postgres URL       make sure PostgreSQL answers at URL's host:port
#   ensure_redis URL          make sure Redis answers at URL's host:port
#   ensure_database URL       create URL's database if it does not exist
#   ensure_psql               make sure the psql client is installed
#   stop_private_deps         stop the private PostgreSQL/Redis under .dev/
#
# ensure_postgres / ensure_redis logic: if a server already answers at the
# URL's host:port it is used as-is (and never stopped by our scripts).
# Otherwise, when the host is local (127.0.0.1 / localhost), the server
# packages are installed with apt-get if missing and a PRIVATE instance is
# started with its data under <repo>/.dev/ (.dev/pg, .dev/redis). A private
# instance left over from a previous run is simply started again. For a
# non-local host the functions fail with a clear message.
#
# All functions are idempotent.

if [[ -n "${UNILINK_DEPS_SH_LOADED:-}" ]]; then
  return 0
fi
UNILINK_DEPS_SH_LOADED=1

# Set to 1 by ensure_postgres / ensure_redis when they (re)started a private
# instance under .dev/ during this shell's lifetime.
DEPS_STARTED_PRIVATE_PG=0
DEPS_STARTED_PRIVATE_REDIS=0
_DEPS_APT_UPDATED=0

# ---------------------------------------------------------------- logging --

log() {
  printf '[%s] %s\n' "${LOG_TAG:-unilink}" "$*" >&2
}

warn() {
  printf '[%s] WARNING: %s\n' "${LOG_TAG:-unilink}" "$*" >&2
}

die() {
  printf '[%s] ERROR: %s\n' "${LOG_TAG:-unilink}" "$*" >&2
  exit 1
}

# ------------------------------------------------------------------ paths --

_DEPS_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Absolute path of the repository root (scripts/lib/../..).
repo_root() {
  (cd "$_DEPS_LIB_DIR/../.." && pwd)
}

_dev_dir() {
  printf '%s/.dev' "$(repo_root)"
}

# ------------------------------------------------------------ URL parsing --
# Supported shape: scheme://[user[:password]@]host[:port][/path][?query]
# (IPv6 literals in brackets are accepted: scheme://[::1]:5432/db)

# Prints "host port" pieces of the authority part, without userinfo.
_url_hostport() {
  local url="$1" rest
  [[ "$url" == *://* ]] || die "not a URL (missing scheme://): '$url'"
  rest="${url#*://}"
  rest="${rest%%[/?#]*}"   # cut path/query
  rest="${rest##*@}"       # cut userinfo
  printf '%s' "$rest"
}

url_host() {
  local hp host
  hp="$(_url_hostport "$1")"
  if [[ "$hp" == \[* ]]; then
    host="${hp#[}"
    host="${host%%]*}"
  else
    host="${hp%%:*}"
  fi
  [[ -n "$host" ]] || host="127.0.0.1"
  printf '%s' "$host"
}

# url_port URL DEFAULT_PORT
url_port() {
  local hp port=""
  hp="$(_url_hostport "$1")"
  if [[ "$hp" == \[* ]]; then
    [[ "$hp" == *\]:* ]] && port="${hp##*]:}"
  elif [[ "$hp" == *:* ]]; then
    port="${hp##*:}"
  fi
  [[ -n "$port" ]] || port="$2"
  [[ "$port" =~ ^[0-9]+$ ]] || die "invalid port '$port' in URL '$1'"
  printf '%s' "$port"
}

# Userinfo ("user" or "user:password"), empty if none.
url_userinfo() {
  local rest="${1#*://}"
  rest="${rest%%[/?#]*}"
  if [[ "$rest" == *@* ]]; then
    printf '%s' "${rest%@*}"
  fi
}

# Database name (first path segment), empty if none.
url_dbname() {
  local rest="${1#*://}" path
  [[ "$rest" == */* ]] || return 0
  path="${rest#*/}"
  path="${path%%[?#]*}"
  path="${path%%/*}"
  printf '%s' "$path"
}

# Same server/credentials as a postgres URL, but pointing at database
# "postgres" (the maintenance DB). Query parameters are kept.
url_admin() {
  local url="$1" scheme rest auth query=""
  scheme="${url%%://*}"
  rest="${url#*://}"
  [[ "$rest" == *\?* ]] && query="?${rest#*\?}"
  auth="${rest%%[/?#]*}"
  printf '%s://%s/postgres%s' "$scheme" "$auth" "$query"
}

_is_local_host() {
  case "$1" in
    127.0.0.1 | localhost | ::1) return 0 ;;
    *) return 1 ;;
  esac
}

# ---------------------------------------------------------------- probing --

# healthy BASE_URL — true if BASE_URL/health answers 2xx within 2 s.
healthy() {
  curl -fsS -o /dev/null --max-time 2 "$1/health" 2>/dev/null
}

# number OPTION VALUE — prints VALUE if it is a whole number, else dies
# naming OPTION (for option parsing: `N="$(number "$1" "${2:-}")"`).
number() {
  [[ "${2:-}" =~ ^[0-9]+$ ]] || die "$1 needs a number, got '${2:-}'"
  printf '%s' "$2"
}

# vacuum_calls DATABASE_URL — VACUUM ANALYZE the tables every call set-up
# inserts into and deletes from (when psql is there). A benchmark repeats
# calls between the same few users; on a server running with autovacuum off
# (as some CI machines do) their dead rows pile up, and every insert into
# busy_users walks them in the unique index, so a later run measures bloat.
vacuum_calls() {
  command -v psql >/dev/null 2>&1 || return 0
  local table
  for table in signaling.calls signaling.busy_users signaling.outbox; do
    psql "$1" -qc "VACUUM ANALYZE $table" >/dev/null 2>&1 || warn "could not VACUUM $table"
  done
}

# tcp_open HOST PORT — true if a TCP connection can be established (2 s).
tcp_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# redis_ping HOST PORT — true if a Redis server answers PING (+PONG). A
# password-protected server answering -NOAUTH also counts as "up".
redis_ping() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "PING\r\n" >&3
    IFS= read -r line <&3 || exit 1
    [[ "$line" == +PONG* || "$line" == -NOAUTH* ]]
  ' "$1" "$2" 2>/dev/null
}

# wait_until SECONDS CMD... — retry CMD every 0.5 s until it succeeds.
wait_until() {
  local timeout_s="$1" deadline
  shift
  deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    if "$@"; then
      return 0
    fi
    sleep 0.5
  done
  "$@"
}

# ------------------------------------------------------------ installing --

_as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@" || die "'$*' needs root and passwordless sudo is not available"
  else
    die "'$*' needs root privileges (run as root or install the packages manually)"
  fi
}

# apt_install PKG... — installs Debian packages (apt-get update once).
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "apt-get not found; please install these packages manually: $*"
  log "installing packages: $* (apt-get)"
  if [[ $_DEPS_APT_UPDATED -eq 0 ]]; then
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
      die "apt-get update failed"
    _DEPS_APT_UPDATED=1
  fi
  # Keep package maintainer scripts from auto-starting system services on
  # the default ports: we start private instances ourselves. policy-rc.d is
  # only created (and removed again) if the machine does not already have one.
  local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
  if [[ ! -e $policy ]]; then
    if _as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"; then
      created_policy=1
    fi
  fi
  _as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" || rc=$?
  if [[ $created_policy -eq 1 ]]; then
    _as_root rm -f "$policy" || true
  fi
  [[ $rc -eq 0 ]] || die "apt-get install $* failed (exit $rc)"
}

# ensure_nginx — nginx on PATH or in /usr/sbin (the fleet fault tests put it
# in front of the gateways); installs nginx-light if missing.
ensure_nginx() {
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || apt_install nginx-light
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || die "nginx still not found after installing nginx-light"
}

ensure_psql() {
  if ! command -v psql >/dev/null 2>&1 || ! psql --version >/dev/null 2>&1; then
    apt_install postgresql-client
    command -v psql >/dev/null 2>&1 || die "psql still not found after installing postgresql-client"
  fi
}

# Directory holding initdb/pg_ctl/postgres (newest installed major version).
_pg_bindir() {
  local d best=""
  best="$(for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && printf '%s\n' "$d"
  done | sort -V | tail -n 1)"
  if [[ -n "$best" ]]; then
    printf '%s' "$best"
  elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    return 1
  fi
}

_ensure_postgres_user() {
  [[ $EUID -eq 0 ]] || return 0
  if ! id -u postgres >/dev/null 2>&1; then
    log "creating system user 'postgres'"
    useradd --system --user-group --home-dir /var/lib/postgresql \
      --shell /bin/bash postgres || die "could not create OS user 'postgres'"
  fi
}

# Run a PostgreSQL server binary: as the 'postgres' OS user when we are root
# (initdb/postgres refuse to run as root), directly otherwise.
_as_pg() {
  if [[ $EUID -eq 0 ]]; then
    # cd / : the caller's cwd may not be accessible to the postgres user
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Serialize private-instance setup between concurrent dev.sh/test.sh runs.
# Daemons started while holding it must be started with fd 9 closed.
_with_dev_lock() {
  local lockfile
  lockfile="$(_dev_dir)/.deps.lock"
  mkdir -p "$(_dev_dir)"
  if command -v flock >/dev/null 2>&1; then
    (
      flock -w 180 9 || die "timed out waiting for lock $lockfile"
      "$@"
    ) 9>"$lockfile"
  else
    "$@"
  fi
}

# ------------------------------------------------------------- PostgreSQL --

_pg_ready() {
  local host="$1" port="$2"
  tcp_open "$host" "$port" || return 1
  if command -v pg_isready >/dev/null 2>&1 && pg_isready --version >/dev/null 2>&1; then
    pg_isready -q -h "$host" -p "$port" -t 2 >/dev/null 2>&1 || return 1
  fi
  return 0
}

_start_private_postgres() {
  local host="$1" port="$2" dev pgdir data sock logf bindir
  dev="$(_dev_dir)"
  pgdir="$dev/pg"
  data="$pgdir/data"
  sock="$pgdir/run"
  logf="$pgdir/postgres.log"

  # Another process may have started it while we waited for the lock.
  if _pg_ready "$host" "$port"; then
    return 0
  fi

  if ! bindir="$(_pg_bindir)"; then
    apt_install postgresql
    bindir="$(_pg_bindir)" || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin after install"
  fi
  _ensure_postgres_user

  mkdir -p "$pgdir" "$sock"
  if [[ $EUID -eq 0 ]]; then
    chown -R postgres: "$pgdir" || die "could not chown $pgdir to postgres"
    runuser -u postgres -- test -w "$pgdir" ||
      die "OS user 'postgres' cannot write to $pgdir (is a parent directory of the repo not world-searchable? e.g. chmod o+x on it)"
  fi

  if [[ ! -s "$data/PG_VERSION" ]]; then
    log "initializing private PostgreSQL cluster in $data"
    rm -rf "$data"
    _as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust \
      --encoding=UTF8 --no-locale >"$pgdir/initdb.log" 2>&1 ||
      die "initdb failed; see $pgdir/initdb.log"
    printf "\ninclude_if_exists = 'unilink.conf'\n" >>"$data/postgresql.conf"
  fi

  # (Re)written on every start so host/port follow the current URL.
  local listen="127.0.0.1"
  [[ "$host" == "::1" ]] && listen="::1"
  [[ "$host" == "localhost" ]] && listen="localhost"
  cat >"$data/unilink.conf" <<EOF
# Written by scripts/lib/deps.sh on every start — do not edit.
listen_addresses = '$listen'
port = $port
unix_socket_directories = '$sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  [[ $EUID -eq 0 ]] && chown postgres: "$data/unilink.conf"

  # A previous private server still running (e.g. on another port): restart.
  if _as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "restarting private PostgreSQL in $data"
    _as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi

  log "starting private PostgreSQL on $host:$port (data: $data, log: $logf)"
  # 9>&- : the daemon must not inherit the lock fd (see _with_dev_lock)
  _as_pg "$bindir/pg_ctl" -D "$data" -l "$logf" -w -t 60 start >/dev/null 2>&1 9>&- || {
    tail -n 30 "$logf" >&2 2>/dev/null || true
    die "could not start private PostgreSQL (is port $port taken by something else?); see $logf"
  }
  wait_until 30 _pg_ready "$host" "$port" ||
    die "private PostgreSQL started but does not answer on $host:$port; see $logf"
}

# ensure_postgres URL — make sure a PostgreSQL server answers at URL.
ensure_postgres() {
  local url="${1:?ensure_postgres: URL required}" host port
  host="$(url_host "$url")"
  port="$(url_port "$url" 5432)"
  if _pg_ready "$host" "$port"; then
    log "PostgreSQL is up at $host:$port"
    return 0
  fi
  _is_local_host "$host" ||
    die "PostgreSQL at $host:$port is not reachable, and it is not a local address so it will not be started automatically (check the URL or start the server)"
  _with_dev_lock _start_private_postgres "$host" "$port"
  DEPS_STARTED_PRIVATE_PG=1
  log "PostgreSQL is up at $host:$port (private instance in $(_dev_dir)/pg)"
}

# psql wrapper against the maintenance DB of URL's server.
_psql_admin() {
  local url="$1"
  shift
  PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -d "$(url_admin "$url")" "$@"
}

# ensure_database URL — create the database named in URL if it is missing.
ensure_database() {
  local url="${1:?ensure_database: URL required}" db exists
  db="$(url_dbname "$url")"
  [[ -n "$db" ]] || die "no database name in URL '$url'"
  [[ "$db" =~ ^[A-Za-z0-9_-]+$ ]] || die "unsupported database name '$db' (use [A-Za-z0-9_-])"
  ensure_psql
  exists="$(_psql_admin "$url" -tA -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ||
    die "could not query PostgreSQL at $(url_host "$url"):$(url_port "$url" 5432) with psql"
  if [[ "$exists" == "1" ]]; then
    log "database '$db' exists"
  else
    log "creating database '$db'"
    _psql_admin "$url" -c "CREATE DATABASE \"$db\"" ||
      die "could not create database '$db'"
  fi
}

# ------------------------------------------------------------------ Redis --

_redis_server_bin() {
  if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
  elif [[ -x /usr/bin/redis-server ]]; then
    printf '/usr/bin/redis-server'
  else
    return 1
  fi
}

_start_private_redis() {
  local host="$1" port="$2" dir pidf logf bin oldpid
  dir="$(_dev_dir)/redis"
  pidf="$dir/redis.pid"
  logf="$dir/redis.log"

  if redis_ping "$host" "$port"; then
    return 0
  fi
  if ! bin="$(_redis_server_bin)"; then
    apt_install redis-server
    bin="$(_redis_server_bin)" || die "redis-server not found after installing redis-server"
  fi
  mkdir -p "$dir"

  # A previous private server still running (e.g. on another port): stop it.
  if [[ -s "$pidf" ]]; then
    oldpid="$(cat "$pidf" 2>/dev/null || true)"
    if [[ "$oldpid" =~ ^[0-9]+$ ]] && kill -0 "$oldpid" 2>/dev/null &&
      grep -q redis "/proc/$oldpid/comm" 2>/dev/null; then
      log "stopping stale private Redis (pid $oldpid)"
      kill "$oldpid" 2>/dev/null || true
      wait_until 10 _pid_gone "$oldpid" || kill -9 "$oldpid" 2>/dev/null || true
    fi
    rm -f "$pidf"
  fi

  local bind="127.0.0.1"
  [[ "$host" == "::1" ]] && bind="::1"
  log "starting private Redis on $host:$port (dir: $dir, log: $logf)"
  "$bin" --save "" --appendonly no --daemonize yes --port "$port" \
    --bind "$bind" --dir "$dir" --pidfile "$pidf" --logfile "$logf" 9>&- ||
    die "could not start redis-server; see $logf"
  wait_until 15 redis_ping "$host" "$port" || {
    tail -n 20 "$logf" >&2 2>/dev/null || true
    die "private Redis does not answer PING on $host:$port (port taken by something else?); see $logf"
  }
}

_pid_gone() {
  ! kill -0 "$1" 2>/dev/null
}

# ensure_redis URL — make sure a Redis server answers at URL.
ensure_redis() {
  local url="${1:?ensure_redis: URL required}" host port
  host="$(url_host "$url")"
  port="$(url_port "$url" 6379)"
  if redis_ping "$host" "$port"; then
    log "Redis is up at $host:$port"
    return 0
  fi
  _is_local_host "$host" ||
    die "Redis at $host:$port is not reachable, and it is not a local address so it will not be started automatically (check the URL or start the server)"
  if tcp_open "$host" "$port"; then
    die "something listens on $host:$port but does not answer Redis PING; refusing to start a private Redis there"
  fi
  _with_dev_lock _start_private_redis "$host" "$port"
  DEPS_STARTED_PRIVATE_REDIS=1
  log "Redis is up at $host:$port (private instance in $(_dev_dir)/redis)"
}

# ---------------------------------------------------------------- stopping --

# stop_private_deps — stop the private PostgreSQL/Redis instances under .dev/
# (if running). Never touches system-wide servers.
stop_private_deps() {
  local dev data pidf pid bindir
  dev="$(_dev_dir)"
  data="$dev/pg/data"
  if [[ -f "$data/postmaster.pid" ]]; then
    if bindir="$(_pg_bindir)"; then
      log "stopping private PostgreSQL ($data)"
      _as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 ||
        warn "pg_ctl stop failed for $data"
    else
      warn "cannot stop private PostgreSQL: pg_ctl not found"
    fi
  fi
  pidf="$dev/redis/redis.pid"
  if [[ -s "$pidf" ]]; then
    pid="$(cat "$pidf" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      log "stopping private Redis (pid $pid)"
      kill "$pid" 2>/dev/null || true
      wait_until 10 _pid_gone "$pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
  fi
}
