#!/bin/sh
# Alertmanager's entrypoint in deploy/docker-compose.yml: renders
# alertmanager.yml with the environment (render.awk) into a file outside the
# read-only mounts, then runs Alertmanager on it. Refuses to start while a
# receiver or the mail server is unset or still a CHANGE-ME placeholder:
# alerts nobody receives are worse than a container that does not start.
set -eu

dir="${ALERTMANAGER_TEMPLATE_DIR:-/etc/alertmanager}"
out="${ALERTMANAGER_CONFIG_OUT:-/tmp/alertmanager.yml}"
bin="${ALERTMANAGER_BIN:-/bin/alertmanager}"

for var in ALERT_EMAIL_TO ALERT_WEBHOOK_URL SMTP_SERVER SMTP_PORT EMAIL_FROM; do
  value="$(printenv "$var" || true)"
  case "$value" in
    "")
      echo "alertmanager: $var is not set (deploy/.env)" >&2
      exit 1
      ;;
    *[Cc][Hh][Aa][Nn][Gg][Ee][-_][Mm][Ee]* | *[Cc][Hh][Aa][Nn][Gg][Ee][Mm][Ee]*)
      echo "alertmanager: $var still holds a CHANGE-ME placeholder (deploy/.env)" >&2
      exit 1
      ;;
  esac
done

umask 077
awk -f "$dir/render.awk" "$dir/alertmanager.yml" >"$out"
exec "$bin" --config.file="$out" "$@"
