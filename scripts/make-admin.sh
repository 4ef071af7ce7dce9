#!/usr/bin/env bash
# scripts/make-admin.sh — give an existing UniLink account the admin role.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/make-admin.sh EMAIL

Gives the account with EMAIL (case-insensitive) the `admin` role, in the auth
service's schema of the database at DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/unilink). The account must exist (sign up
first). The role is part of the access token: the user logs in again to get
an admin token. This is how the first administrator is made; after that the
same command is the audited way to add more.
TXT
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  "")
    usage >&2
    exit 2
    ;;
esac

email="$1"
url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/unilink}"
command -v psql >/dev/null 2>&1 || {
  echo "make-admin: psql not found (apt-get install postgresql-client)" >&2
  exit 1
}
updated="$(psql -X -q -tA -v ON_ERROR_STOP=1 -v email="$email" -d "$url" <<'SQL'
UPDATE auth.accounts SET role = 'admin', updated_at = now() WHERE lower(email) = lower(:'email') RETURNING id;
SQL
)"
if [[ -z "$updated" ]]; then
  echo "make-admin: no account with email $email" >&2
  exit 1
fi
echo "make-admin: $email ($updated) is now an admin; they must log in again"
