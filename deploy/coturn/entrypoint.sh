#!/bin/sh
# deploy/coturn/entrypoint.sh — starts coturn with UniLink's configuration.
#
# Writes the running configuration (mode 0600) to $TURN_RUN_DIR/turnserver.conf:
# the shipped file, then what differs per host, and execs turnserver with it
# and any further arguments. Used by the image (deploy/coturn/Dockerfile: docker
# compose and k8s/turn) and by scripts/e2e.sh, so the test runs what ships.
#
# Environment:
#   TURN_SECRET        required: the TURN REST shared secret, the same value
#                      signaling mints credentials with (32+ characters)
#   TURN_CONFIG        the shipped settings [/etc/coturn/unilink.conf]
#   TURN_RUN_DIR       a writable directory [/tmp]
#   TURN_LISTENING_IP  the one address to listen on and relay from (k8s: the
#                      node's, from status.hostIP); unset: every interface
#   TURN_EXTERNAL_IPS  for hosts behind 1:1 NAT (cloud VMs): comma-separated
#                      "public/private" pairs, one per TURN host; the pair
#                      whose private part is TURN_LISTENING_IP is used (all of
#                      them when TURN_LISTENING_IP is unset). A bare "public"
#                      maps to TURN_LISTENING_IP. Browsers are told the public
#                      address as the relay address.
set -eu

die() {
  echo "unilink-coturn: $*" >&2
  exit 64
}

conf_in="${TURN_CONFIG:-/etc/coturn/unilink.conf}"
run_dir="${TURN_RUN_DIR:-/tmp}"
listening="${TURN_LISTENING_IP:-}"
external="${TURN_EXTERNAL_IPS:-}"

[ -r "$conf_in" ] || die "cannot read TURN_CONFIG $conf_in"
[ -n "${TURN_SECRET:-}" ] || die "TURN_SECRET is not set (the secret signaling mints TURN credentials with)"
[ "${#TURN_SECRET}" -ge 32 ] || die "TURN_SECRET is shorter than 32 characters"
case "$TURN_SECRET" in
  CHANGE-ME*) die "TURN_SECRET is still the CHANGE-ME placeholder" ;;
esac
# One line of configuration: a line break or a quote would break out of it.
case "$TURN_SECRET" in
  *"
"* | *'"'* | *' '*) die "TURN_SECRET must not contain spaces, quotes or line breaks" ;;
esac

mapped=""
if [ -n "$external" ]; then
  old_ifs="$IFS"
  IFS=,
  for pair in $external; do
    case "$pair" in
      */*)
        if [ -z "$listening" ] || [ "${pair#*/}" = "$listening" ]; then
          mapped="$mapped$pair
"
        fi
        ;;
      "") ;;
      *)
        [ -n "$listening" ] || die "TURN_EXTERNAL_IPS entry '$pair' has no /private part and TURN_LISTENING_IP is unset"
        mapped="$mapped$pair/$listening
"
        ;;
    esac
  done
  IFS="$old_ifs"
  # A host missing from the list would hand browsers its private address.
  [ -n "$mapped" ] || die "TURN_EXTERNAL_IPS has no pair for this host ($listening)"
fi

mkdir -p "$run_dir"
conf="$run_dir/turnserver.conf"
umask 077
{
  cat "$conf_in"
  echo
  echo "# ---- added by entrypoint.sh ----"
  printf 'static-auth-secret=%s\n' "$TURN_SECRET"
  printf 'pidfile=%s/turnserver.pid\n' "$run_dir"
  # TURN REST needs no user database; an empty one here, not the package's.
  printf 'userdb=%s/turndb\n' "$run_dir"
  if [ -n "$listening" ]; then
    printf 'listening-ip=%s\nrelay-ip=%s\n' "$listening" "$listening"
  fi
  printf '%s' "$mapped" | while IFS= read -r pair; do
    if [ -n "$pair" ]; then printf 'external-ip=%s\n' "$pair"; fi
  done
} >"$conf"

echo "unilink-coturn: listening on ${listening:-every interface}; external addresses: $(printf '%s' "${mapped:-none}" | tr '\n' ' ')" >&2
exec turnserver -c "$conf" "$@"
