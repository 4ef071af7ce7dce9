#!/usr/bin/env bash
# scripts/bench-seed.sh — fill a running dev stack with users for benchmarks.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/bench-seed.sh [USERS] [ONLINE]

Creates USERS (default 10000) verified accounts with profiles directly in the
database at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/unilink)
and marks ONLINE (default 2000) of them online in Redis at REDIS_URL (default
redis://127.0.0.1:6379, key prefix REDIS_KEY_PREFIX, default "unilink:") for
the next hour. Seeded users are named seed<N>@kiit.ac.in and cannot log in
(their password hash is not a hash). Run it against the dev stack
(scripts/dev.sh --release) before `unilink-load`; see BENCHMARKS.md.
TXT
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
esac

users="${1:-10000}"
online="${2:-2000}"
[[ "$users" =~ ^[0-9]+$ && "$online" =~ ^[0-9]+$ ]] || {
  usage >&2
  exit 2
}
db="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/unilink}"
redis_url="${REDIS_URL:-redis://127.0.0.1:6379}"
prefix="${REDIS_KEY_PREFIX:-unilink:}"
hostport="${redis_url#redis://}"
hostport="${hostport%%/*}"
host="${hostport%%:*}"
port="${hostport##*:}"
for tool in psql redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench-seed: $tool not found" >&2
    exit 1
  }
done

psql -X -q -v ON_ERROR_STOP=1 -v users="$users" -d "$db" <<'SQL'
INSERT INTO auth.accounts (id, email, username, full_name, password_hash, is_verified)
SELECT gen_random_uuid(), 'seed' || i || '@kiit.ac.in', 'seed' || i, 'Seed User ' || i, 'seeded-no-login', true
FROM generate_series(1, :users) AS i
ON CONFLICT DO NOTHING;
INSERT INTO profile.profiles (user_id, email, username, full_name, is_verified)
SELECT id, email, username, full_name, true FROM auth.accounts WHERE username LIKE 'seed%'
ON CONFLICT DO NOTHING;
SQL

# Online for the next hour (the score is the last heartbeat, ms): no heartbeat needed during a run.
until_ms=$(( ($(date +%s) + 3600) * 1000 ))
psql -X -q -tA -v online="$online" -d "$db" \
  -c "SELECT user_id FROM profile.profiles WHERE username LIKE 'seed%' ORDER BY username LIMIT $online" |
  awk -v s="$until_ms" -v key="${prefix}presence:online" '
    { printf "ZADD %s %d %s\n", key, s + NR, $1 }' |
  redis-cli -h "$host" -p "$port" >/dev/null
echo "bench-seed: $users users, $online online (prefix $prefix)"
