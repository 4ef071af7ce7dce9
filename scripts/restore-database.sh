#!/usr/bin/env bash
# scripts/restore-database.sh — restore a backup made by backup-database.sh (see --help).
set -euo pipefail

PROG="restore-database"
log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/restore-database.sh [--drop-existing] FILE
       scripts/restore-database.sh --help

Restores FILE (a .sql.gz written by scripts/backup-database.sh, or a plain
.sql dump) into the database named by DATABASE_URL, in one transaction with
ON_ERROR_STOP: either everything is restored or nothing changes.

The target database must exist. The schemas created by the dump must not
exist in it yet (restore into a fresh database, or into one that lacks the
schema of a per-schema backup) unless --drop-existing is given.

Options:
  --drop-existing   DROP SCHEMA ... CASCADE every schema the dump creates,
                    inside the same transaction, before restoring. Destroys
                    the data now in those schemas.
  -h, --help        show this help

Environment:
  DATABASE_URL      postgres://user:password@host:port/dbname (required):
                    the database to restore INTO
EOF_USAGE
}

drop_existing=0
file=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --drop-existing)
      drop_existing=1
      shift
      ;;
    --)
      shift
      [[ $# -eq 1 ]] || die "expected exactly one FILE (see --help)"
      file="$1"
      shift
      ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      [[ -z "$file" ]] || die "expected exactly one FILE (see --help)"
      file="$1"
      shift
      ;;
  esac
done

[[ -n "$file" ]] || die "missing FILE argument (see --help)"
[[ -f "$file" && -r "$file" ]] || die "backup file '$file' does not exist or is not readable"
[[ -n "${DATABASE_URL:-}" ]] || die "DATABASE_URL is not set (the database to restore into)"
[[ "$DATABASE_URL" == postgres://* || "$DATABASE_URL" == postgresql://* ]] ||
  die "DATABASE_URL must start with postgres:// or postgresql://"
command -v psql >/dev/null 2>&1 || die "psql not found (apt-get install postgresql-client)"

case "$file" in
  *.gz)
    command -v gzip >/dev/null 2>&1 || die "gzip not found"
    gzip -t "$file" || die "'$file' is not a valid gzip file (truncated or corrupt backup?)"
    reader=(gzip -dc -- "$file")
    ;;
  *) reader=(cat -- "$file") ;;
esac

dbname="$(PGCONNECT_TIMEOUT=10 psql -X -q -tA -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -c 'SELECT current_database()')" ||
  die "cannot connect to the database in DATABASE_URL (does it exist? create it first)"

# Schemas the dump creates (pg_dump writes CREATE SCHEMA "name";).
mapfile -t dump_schemas < <("${reader[@]}" | sed -n -E 's/^CREATE SCHEMA "?([^" ;]+)"?;$/\1/p' | sort -u)
[[ ${#dump_schemas[@]} -gt 0 ]] || log "note: the dump creates no schema (public only?)"

pre_sql=""
for s in "${dump_schemas[@]}"; do
  [[ "$s" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "unexpected schema name '$s' in the dump"
  exists="$(psql -X -q -tA -v ON_ERROR_STOP=1 -d "$DATABASE_URL" \
    -c "SELECT count(*) FROM pg_namespace WHERE nspname = '$s'")" || die "could not look up schema '$s'"
  if [[ "$exists" == "1" ]]; then
    if [[ $drop_existing -eq 1 ]]; then
      log "schema '$s' exists in '$dbname': dropping it first (--drop-existing)"
      pre_sql+="DROP SCHEMA \"$s\" CASCADE;"$'\n'
    else
      die "schema '$s' already exists in database '$dbname'; restore into a fresh database or pass --drop-existing"
    fi
  fi
done

log "restoring $file into database '$dbname' (schemas: ${dump_schemas[*]:-none})"
start=$SECONDS
if ! { printf '%s' "$pre_sql"; "${reader[@]}"; } |
  PGOPTIONS='--client-min-messages=warning' psql -X -q -v ON_ERROR_STOP=1 --single-transaction \
    -d "$DATABASE_URL" >/dev/null; then
  die "restore failed; the transaction was rolled back and '$dbname' is unchanged"
fi
log "restored in $((SECONDS - start))s"
