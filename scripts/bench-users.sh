#!/usr/bin/env bash
# scripts/bench-users.sh — print the ids of seeded users for the WebSocket benchmarks.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/bench-users.sh COUNT [OFFSET]

Prints COUNT user ids (one a line), skipping the first OFFSET (default 0),
of the users scripts/bench-seed.sh created in the database at DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/unilink): verified, active
profiles with usernames, so they can ring and be rung. Fails when there are
fewer than COUNT.

They are taken in descending username order, the other end of the users
bench-seed.sh marks online, so the /calls/available benchmark keeps its
online users as long as COUNT + OFFSET <= USERS - ONLINE. (A user whose
presence socket closes is no longer online; run bench-seed.sh again after
presence-idle with every seeded user.)

Turn the ids into the --users file of unilink-load with
`unilink-load mint-tokens --ids-file IDS --out USERS`.
TXT
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
esac

count="${1:-}"
offset="${2:-0}"
[[ "$count" =~ ^[0-9]+$ && "$offset" =~ ^[0-9]+$ ]] || {
  usage >&2
  exit 2
}
db="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/unilink}"
command -v psql >/dev/null 2>&1 || {
  echo "bench-users: psql not found" >&2
  exit 1
}

ids="$(psql -X -q -tA -v ON_ERROR_STOP=1 -d "$db" -c "
  SELECT user_id FROM profile.profiles
  WHERE username LIKE 'seed%' AND is_verified AND is_active
  ORDER BY username DESC
  LIMIT $count OFFSET $offset")"
found=0
[[ -n "$ids" ]] && found="$(printf '%s\n' "$ids" | wc -l)"
if ((found < count)); then
  echo "bench-users: only $found seeded users after offset $offset, $count wanted (run scripts/bench-seed.sh with more users)" >&2
  exit 1
fi
printf '%s\n' "$ids"
