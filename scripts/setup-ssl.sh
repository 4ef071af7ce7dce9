#!/usr/bin/env bash
# scripts/setup-ssl.sh — TLS certificate for the nginx in deploy/ (see --help).
set -euo pipefail

PROG="setup-ssl"
log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$PROG" "$*" >&2
  exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/setup-ssl.sh [OPTIONS] DOMAIN EMAIL
       scripts/setup-ssl.sh --self-signed [--cert-dir DIR] DOMAIN
       scripts/setup-ssl.sh --write-hook FILE [--cert-dir DIR] [--reload-cmd CMD] DOMAIN
       scripts/setup-ssl.sh --help

Gets a Let's Encrypt certificate for DOMAIN with certbot (EMAIL receives
expiry notices) and installs it where deploy/nginx expects it:
CERT_DIR/fullchain.pem and CERT_DIR/privkey.pem. certbot's own renewal
(systemd timer or cron) keeps it fresh: its deploy hook (a script this
command writes to /etc/letsencrypt/unilink/deploy-hook-DOMAIN.sh) copies
the renewed files into CERT_DIR and reloads nginx; a failed reload fails
the hook, so certbot reports it.

Challenge modes (HTTP-01, port 80 must reach this host from the internet):
  default          webroot on the compose volume nginx serves: certbot writes
                   the challenge into volume WEBROOT_VOLUME (mounted in nginx
                   at /var/www/certbot, served at /.well-known/acme-challenge/)
                   while nginx keeps port 80. Before certbot runs, a probe
                   file is fetched through http://127.0.0.1/ to prove nginx
                   serves that directory. First install: nginx needs some
                   certificate to start, so run --self-signed DOMAIN, start
                   the stack, then this.
  --webroot DIR    the same with a directory of your own that nginx serves
  --standalone     certbot listens on port 80 itself (only while nothing
                   else does, i.e. nginx is stopped)

Options:
  --cert-dir DIR     where nginx reads the certificate [deploy/nginx/certs]
  --webroot DIR      use DIR as the webroot (see above)
  --webroot-volume V the compose volume of the default mode
                     [unilink_certbot-webroot]
  --http-url URL     where the probe fetches the challenge [http://127.0.0.1]
  --standalone       certbot's own listener on port 80 (see above)
  --staging          Let's Encrypt staging CA (testing; untrusted certificates)
  --dry-run          certbot --dry-run: test issuance, install nothing
  --reload-cmd CMD   command that reloads nginx after installing/renewing
                     [docker compose -f deploy/docker-compose.yml exec -T nginx nginx -s reload]
  --self-signed      no certbot: make a self-signed certificate for DOMAIN
                     (local compose stacks and offline checks; EMAIL optional)
  --days N           validity of a self-signed certificate [30]
  --write-hook FILE  no certbot: only write the renewal deploy hook to FILE
                     (certbot runs it with RENEWED_LINEAGE set)
  --check-webroot    no certbot: only prove nginx serves the webroot (the
                     probe above) and exit
  -h, --help         show this help
EOF_USAGE
}

cert_dir="$ROOT/deploy/nginx/certs"
webroot=""
# The compose project is "unilink" (deploy/docker-compose.yml `name:`), its
# volume "certbot-webroot": scripts/validate_deploy.py compose checks both.
webroot_volume="unilink_certbot-webroot"
http_url="http://127.0.0.1"
standalone=0
hook_file=""
check_webroot=0
staging=0
dry_run=0
self_signed=0
days=30
reload_cmd="docker compose -f $ROOT/deploy/docker-compose.yml exec -T nginx nginx -s reload"
positional=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --cert-dir)
      need_value "$@"
      cert_dir="$2"
      shift 2
      ;;
    --webroot)
      need_value "$@"
      webroot="$2"
      shift 2
      ;;
    --webroot-volume)
      need_value "$@"
      webroot_volume="$2"
      shift 2
      ;;
    --http-url)
      need_value "$@"
      http_url="${2%/}"
      shift 2
      ;;
    --standalone)
      standalone=1
      shift
      ;;
    --write-hook)
      need_value "$@"
      hook_file="$2"
      shift 2
      ;;
    --check-webroot)
      check_webroot=1
      shift
      ;;
    --reload-cmd)
      need_value "$@"
      reload_cmd="$2"
      shift 2
      ;;
    --days)
      need_value "$@"
      days="$2"
      shift 2
      ;;
    --staging)
      staging=1
      shift
      ;;
    --dry-run)
      dry_run=1
      shift
      ;;
    --self-signed)
      self_signed=1
      shift
      ;;
    --)
      shift
      positional+=("$@")
      break
      ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      positional+=("$1")
      shift
      ;;
  esac
done

domain="${positional[0]:-}"
email="${positional[1]:-}"
[[ ${#positional[@]} -le 2 ]] || die "too many arguments (see --help)"
[[ -n "$domain" ]] || die "missing DOMAIN (see --help)"
# A hostname: labels of letters, digits and hyphens.
[[ "$domain" =~ ^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$ ]] ||
  die "'$domain' is not a valid domain name"

install_pair() { # FULLCHAIN PRIVKEY
  mkdir -p "$cert_dir" || die "cannot create '$cert_dir'"
  install -m 0644 "$1" "$cert_dir/fullchain.pem"
  install -m 0600 "$2" "$cert_dir/privkey.pem"
  log "installed certificate for $domain in $cert_dir"
}

# write_hook FILE: the deploy hook certbot runs after each renewal of DOMAIN
# (RENEWED_LINEAGE = /etc/letsencrypt/live/DOMAIN): install the new pair
# atomically into CERT_DIR, then reload nginx; any failure fails the hook.
write_hook() {
  local file="$1" dir
  dir="$(dirname "$file")"
  mkdir -p "$dir" || die "cannot create '$dir'"
  # shellcheck disable=SC2016  # the hook expands these when it runs
  {
    printf '#!/usr/bin/env bash\n'
    printf '# Written by scripts/setup-ssl.sh for %s: certbot runs it after each renewal.\n' "$domain"
    printf 'set -euo pipefail\n'
    printf 'lineage="${RENEWED_LINEAGE:-/etc/letsencrypt/live/%s}"\n' "$domain"
    printf 'cert_dir=%q\n' "$cert_dir"
    printf '%s\n' \
      'mkdir -p "$cert_dir"' \
      'install -m 0644 "$lineage/fullchain.pem" "$cert_dir/.fullchain.pem.new"' \
      'install -m 0600 "$lineage/privkey.pem" "$cert_dir/.privkey.pem.new"' \
      'mv -f "$cert_dir/.privkey.pem.new" "$cert_dir/privkey.pem"' \
      'mv -f "$cert_dir/.fullchain.pem.new" "$cert_dir/fullchain.pem"' \
      'echo "[setup-ssl hook] installed $lineage into $cert_dir; reloading nginx" >&2'
    printf '%s\n' "$reload_cmd"
  } >"$file.tmp"
  chmod 0755 "$file.tmp"
  mv -f "$file.tmp" "$file"
}

if [[ -n "$hook_file" ]]; then
  write_hook "$hook_file"
  log "wrote the renewal deploy hook for $domain to $hook_file"
  exit 0
fi

if [[ $self_signed -eq 1 ]]; then
  command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
  [[ "$days" =~ ^[0-9]+$ && "$days" -ge 1 ]] || die "--days must be a whole number >= 1"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
    -subj "/CN=$domain" -addext "subjectAltName=DNS:$domain" \
    -keyout "$tmp/privkey.pem" -out "$tmp/fullchain.pem" 2>"$tmp/openssl.log" ||
    die "openssl failed: $(cat "$tmp/openssl.log")"
  install_pair "$tmp/fullchain.pem" "$tmp/privkey.pem"
  log "self-signed, valid $days day(s): browsers will warn; use DOMAIN EMAIL for a real certificate"
  exit 0
fi

# prove_webroot: resolve the webroot (default: the compose volume) and show
# that nginx serves it at /.well-known/acme-challenge/ on HTTP_URL.
prove_webroot() {
  local probe got
  if [[ -z "$webroot" ]]; then
    command -v docker >/dev/null 2>&1 || die "docker not found: give --webroot DIR (or --standalone with nginx stopped)"
    webroot="$(docker volume inspect --format '{{ .Mountpoint }}' "$webroot_volume" 2>/dev/null)" ||
      die "compose volume '$webroot_volume' not found: start the stack first (docker compose -f deploy/docker-compose.yml up -d nginx)"
  fi
  mkdir -p "$webroot/.well-known/acme-challenge" || die "cannot create webroot '$webroot'"
  probe="unilink-probe-$RANDOM$RANDOM"
  printf '%s\n' "$probe" >"$webroot/.well-known/acme-challenge/$probe"
  chmod 0644 "$webroot/.well-known/acme-challenge/$probe"
  got="$(curl -fsS --max-time 5 -H "Host: $domain" "$http_url/.well-known/acme-challenge/$probe" 2>&1)" || got=""
  rm -f "$webroot/.well-known/acme-challenge/$probe"
  [[ "$got" == "$probe" ]] ||
    die "nginx at $http_url does not serve $webroot at /.well-known/acme-challenge/ (is it running? no certificate yet: run --self-signed $domain first)"
  log "nginx at $http_url serves the webroot $webroot"
}

if [[ $check_webroot -eq 1 ]]; then
  prove_webroot
  exit 0
fi

[[ -n "$email" ]] || die "missing EMAIL (Let's Encrypt sends expiry notices there; see --help)"
[[ "$email" =~ ^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$ ]] || die "'$email' is not a valid email address"
command -v certbot >/dev/null 2>&1 ||
  die "certbot not found: install it first (Debian/Ubuntu: apt-get install certbot)"
if [[ $EUID -ne 0 ]]; then
  die "certbot needs root (it writes /etc/letsencrypt); run with sudo"
fi

args=(certonly --non-interactive --agree-tos --email "$email" -d "$domain" --keep-until-expiring)
if [[ $standalone -eq 1 ]]; then
  [[ -z "$webroot" ]] || die "--standalone and --webroot exclude each other"
  args+=(--standalone --preferred-challenges http)
else
  # Prove nginx serves the webroot before asking Let's Encrypt to look.
  prove_webroot
  args+=(--webroot -w "$webroot")
fi
[[ $staging -eq 1 ]] && args+=(--staging)
if [[ $dry_run -eq 1 ]]; then
  args+=(--dry-run)
else
  # Renewals run this hook (certbot keeps its path in the renewal config).
  hook_file="/etc/letsencrypt/unilink/deploy-hook-$domain.sh"
  write_hook "$hook_file"
  args+=(--deploy-hook "$hook_file")
fi

mode="standalone"
[[ $standalone -eq 1 ]] || mode="webroot $webroot"
[[ $staging -eq 1 ]] && mode+=", staging CA"
log "requesting a certificate for $domain ($mode)"
certbot "${args[@]}" || die "certbot failed (is port 80 of $domain reachable from the internet and DNS pointing here?)"

if [[ $dry_run -eq 1 ]]; then
  log "dry run succeeded; nothing installed"
  exit 0
fi

live="/etc/letsencrypt/live/$domain"
[[ -r "$live/fullchain.pem" && -r "$live/privkey.pem" ]] || die "certbot reported success but $live has no certificate"
install_pair "$live/fullchain.pem" "$live/privkey.pem"
if ! bash -c "$reload_cmd" >/dev/null 2>&1; then
  log "note: could not reload nginx with: $reload_cmd (start or reload it yourself)"
fi
