#!/bin/sh
# Container HEALTHCHECK for every UniLink image: GET /livez on the port of
# HTTP_ADDR (the process's own HTTP listener). Liveness only: it never
# depends on PostgreSQL or Redis. Override the port with HEALTHCHECK_PORT.
set -eu
addr="${HTTP_ADDR:-0.0.0.0:8000}"
port="${HEALTHCHECK_PORT:-${addr##*:}}"
exec curl --fail --silent --show-error --max-time 2 --output /dev/null \
  "http://127.0.0.1:${port}/livez"
