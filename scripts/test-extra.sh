#!/usr/bin/env bash
# scripts/test-extra.sh — extra validation run by scripts/test.sh at its end:
# every deployment artifact, offline (scripts/validate-deploy.sh).
set -euo pipefail
if [[ "${UNILINK_SKIP_DEPLOY_VALIDATION:-}" == "true" ]]; then
  echo "[test-extra] UNILINK_SKIP_DEPLOY_VALIDATION=true: deployment validation skipped" >&2
  exit 0
fi
exec "$(dirname "${BASH_SOURCE[0]}")/validate-deploy.sh" "$@"
