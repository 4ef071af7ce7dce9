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
       scripts/setup-ssl.sh --help

Gets a Let's Encrypt certificate for DOMAIN with certbot (EMAIL receives
expiry notices) and installs it where deploy/nginx expects it:
CERT_DIR/fullchain.pem and CERT_DIR/privkey.pem. certbot's own renewal
(systemd timer or cron) keeps it fresh; a deploy hook copies renewed files
into CERT_DIR and reloads nginx.

Challenge modes (HTTP-01, port 80 must reach this host from the internet):
  default        --standalone: certbot listens on port 80 itself (nginx
                 must not be running yet, e.g. the first install)
  --webroot DIR  certbot writes the challenge into DIR, which the running
                 nginx serves at /.well-known/acme-challenge/ (compose volume
                 certbot-webroot mounted at /var/www/certbot)

Options:
  --cert-dir DIR   where nginx reads the certificate [deploy/nginx/certs]
  --webroot DIR    use the webroot challenge (see above)
  --staging        Let's Encrypt staging CA (testing; untrusted certificates)
  --dry-run        certbot --dry-run: test issuance, install nothing
  --reload-cmd CMD command run after installing/renewing
                   [docker compose -f deploy/docker-compose.yml exec nginx nginx -s reload]
  --self-signed    no certbot: make a self-signed certificate for DOMAIN
                   (local compose stacks and offline checks; EMAIL optional)
  --days N         validity of a self-signed certificate [30]
  -h, --help       show this help
EOF_USAGE
}

cert_dir="$ROOT/deploy/nginx/certs"
webroot=""
staging=0
dry_run=0
self_signed=0
days=30
reload_cmd="docker compose -f $ROOT/deploy/docker-compose.yml exec nginx nginx -s reload"
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

[[ -n "$email" ]] || die "missing EMAIL (Let's Encrypt sends expiry notices there; see --help)"
[[ "$email" =~ ^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$ ]] || die "'$email' is not a valid email address"
command -v certbot >/dev/null 2>&1 ||
  die "certbot not found: install it first (Debian/Ubuntu: apt-get install certbot)"
if [[ $EUID -ne 0 ]]; then
  die "certbot needs root (it writes /etc/letsencrypt); run with sudo"
fi

args=(certonly --non-interactive --agree-tos --email "$email" -d "$domain" --keep-until-expiring)
if [[ -n "$webroot" ]]; then
  mkdir -p "$webroot" || die "cannot create webroot '$webroot'"
  args+=(--webroot -w "$webroot")
else
  args+=(--standalone --preferred-challenges http)
fi
[[ $staging -eq 1 ]] && args+=(--staging)
if [[ $dry_run -eq 1 ]]; then
  args+=(--dry-run)
else
  # Renewals copy the new files into place and reload nginx. The hook runs
  # under certbot's shell: quote the paths for it.
  hook="install -m 0644 /etc/letsencrypt/live/$domain/fullchain.pem '$cert_dir/fullchain.pem'"
  hook+=" && install -m 0600 /etc/letsencrypt/live/$domain/privkey.pem '$cert_dir/privkey.pem'"
  hook+=" && ($reload_cmd || true)"
  args+=(--deploy-hook "$hook")
fi

mode="standalone"
[[ -n "$webroot" ]] && mode="webroot $webroot"
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
