#!/usr/bin/env bash
# scripts/test-extra.sh — extra validation run by scripts/test.sh at its end:
#   1. every deployment artifact, offline (scripts/validate-deploy.sh);
#   2. a real call between two headless Chromiums through the fleet
#      (scripts/e2e.sh: two gateways behind nginx, two signaling replicas,
#      one of them killed mid set-up);
#   3. schemathesis against the gateway's /openapi.json, zero server errors
#      allowed (scripts/fuzz-api.sh).
# Each can be skipped with UNILINK_SKIP_DEPLOY_VALIDATION=true,
# UNILINK_SKIP_E2E=true or UNILINK_SKIP_FUZZ=true.
# With --prepare, each only installs what it needs and exits (scripts/test.sh
# runs that in the background while it builds and tests).
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"

if [[ "${1:-}" == "--prepare" ]]; then
  [[ "${UNILINK_SKIP_DEPLOY_VALIDATION:-}" == "true" ]] || "$here/validate-deploy.sh" --prepare
  [[ "${UNILINK_SKIP_E2E:-}" == "true" ]] || "$here/e2e.sh" --prepare
  [[ "${UNILINK_SKIP_FUZZ:-}" == "true" ]] || "$here/fuzz-api.sh" --prepare
  exit 0
fi

if [[ "${UNILINK_SKIP_DEPLOY_VALIDATION:-}" == "true" ]]; then
  echo "[test-extra] UNILINK_SKIP_DEPLOY_VALIDATION=true: deployment validation skipped" >&2
else
  "$here/validate-deploy.sh" "$@"
fi

if [[ "${UNILINK_SKIP_E2E:-}" == "true" ]]; then
  echo "[test-extra] UNILINK_SKIP_E2E=true: browser end-to-end test skipped" >&2
else
  "$here/e2e.sh"
fi

if [[ "${UNILINK_SKIP_FUZZ:-}" == "true" ]]; then
  echo "[test-extra] UNILINK_SKIP_FUZZ=true: API fuzzing skipped" >&2
else
  "$here/fuzz-api.sh"
fi
