#!/usr/bin/env bash
# scripts/backup-database.sh — gzipped pg_dump of the UniLink database (see --help).
set -euo pipefail

PROG="backup-database"
log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/backup-database.sh [--schema NAME] [--dir DIR] [--retention-days N]
       scripts/backup-database.sh --help

Dumps the database named by DATABASE_URL with pg_dump (plain SQL, without
owners or grants, so it restores into any database), compresses it with gzip
and writes it to DIR as

    unilink_<database>[_<schema>]_<UTC timestamp>.sql.gz

then deletes this script's backups in DIR older than the retention period.
The dump is written to a temporary file and renamed only once pg_dump and
gzip both succeeded and the archive tests good, so a failed run never leaves a
truncated backup behind. Prints the path of the new backup on stdout.

Options:
  --schema NAME        dump only this schema (one service's data: auth,
                       profile, signaling, notification); repeatable.
                       Default: the whole database.
  --dir DIR            backup directory [$BACKUP_DIR or ./backups]
  --retention-days N   delete unilink_*.sql.gz in DIR older than N days [30]
  -h, --help           show this help

Environment:
  DATABASE_URL         postgres://user:password@host:port/dbname (required)
  BACKUP_DIR           default for --dir

Restore with scripts/restore-database.sh FILE.
EOF_USAGE
}

schemas=()
dir="${BACKUP_DIR:-./backups}"
retention=30

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --schema)
      [[ $# -ge 2 && -n "$2" ]] || die "--schema needs a schema name"
      schemas+=("$2")
      shift 2
      ;;
    --schema=*)
      [[ -n "${1#*=}" ]] || die "--schema needs a schema name"
      schemas+=("${1#*=}")
      shift
      ;;
    --dir)
      [[ $# -ge 2 && -n "$2" ]] || die "--dir needs a directory"
      dir="$2"
      shift 2
      ;;
    --dir=*)
      dir="${1#*=}"
      shift
      ;;
    --retention-days)
      [[ $# -ge 2 ]] || die "--retention-days needs a number"
      retention="$2"
      shift 2
      ;;
    --retention-days=*)
      retention="${1#*=}"
      shift
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -n "${DATABASE_URL:-}" ]] || die "DATABASE_URL is not set (postgres://user:password@host:port/dbname)"
[[ "$DATABASE_URL" == postgres://* || "$DATABASE_URL" == postgresql://* ]] ||
  die "DATABASE_URL must start with postgres:// or postgresql://"
[[ "$retention" =~ ^[0-9]+$ && "$retention" -ge 1 ]] || die "--retention-days must be a whole number >= 1 (got '$retention')"
for s in "${schemas[@]}"; do
  [[ "$s" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "invalid schema name '$s'"
done
command -v pg_dump >/dev/null 2>&1 || die "pg_dump not found (apt-get install postgresql-client)"
command -v psql >/dev/null 2>&1 || die "psql not found (apt-get install postgresql-client)"
command -v gzip >/dev/null 2>&1 || die "gzip not found"

# Database name for the file name (ask the server: the URL may omit it).
dbname="$(PGCONNECT_TIMEOUT=10 psql -X -q -tA -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -c 'SELECT current_database()')" ||
  die "cannot connect to the database in DATABASE_URL"
for s in "${schemas[@]}"; do
  found="$(psql -X -q -tA -v ON_ERROR_STOP=1 -d "$DATABASE_URL" \
    -c "SELECT count(*) FROM pg_namespace WHERE nspname = '$s'")" ||
    die "could not look up schema '$s'"
  [[ "$found" == "1" ]] || die "schema '$s' does not exist in database '$dbname'"
done

mkdir -p "$dir" || die "cannot create backup directory '$dir'"
[[ -w "$dir" ]] || die "backup directory '$dir' is not writable"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
label="$dbname"
if [[ ${#schemas[@]} -gt 0 ]]; then
  label="${dbname}_$(IFS=-; printf '%s' "${schemas[*]}")"
fi
file="$dir/unilink_${label}_${stamp}.sql.gz"
tmp="$file.partial"
trap 'rm -f "$tmp"' EXIT

args=(--no-owner --no-privileges --quote-all-identifiers --format=plain)
for s in "${schemas[@]}"; do
  args+=(--schema="$s")
done

log "dumping database '$dbname'${schemas[*]:+ (schemas: ${schemas[*]})} to $file"
start=$SECONDS
if ! pg_dump "${args[@]}" --dbname="$DATABASE_URL" | gzip -6 >"$tmp"; then
  die "pg_dump failed; no backup written"
fi
gzip -t "$tmp" || die "the compressed dump does not test good; no backup written"
mv -f "$tmp" "$file"
trap - EXIT
log "done in $((SECONDS - start))s, $(du -h "$file" | cut -f1)"

# Retention: only files this script writes.
deleted=0
while IFS= read -r -d '' old; do
  rm -f -- "$old"
  deleted=$((deleted + 1))
done < <(find "$dir" -maxdepth 1 -type f -name 'unilink_*.sql.gz' -mtime +"$retention" -print0)
log "retention ${retention}d: deleted $deleted old backup(s)"

printf '%s\n' "$file"
