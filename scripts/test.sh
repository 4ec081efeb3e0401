#!/usr/bin/env bash
# The whole test suite on real servers: install, lint, start the local stack, pytest, stop it.
# Servers named by STACKSTREAM_KAFKA / _ELASTICSEARCH / _CASSANDRA are used instead of local ones.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
. .venv/bin/activate

ruff check . || exit 1
ruff format --check . || exit 1

if [ -z "${STACKSTREAM_KAFKA:-}${STACKSTREAM_ELASTICSEARCH:-}${STACKSTREAM_CASSANDRA:-}" ]; then
  stackstream dev up || { stackstream dev status; exit 1; }
  if [ "${STACKSTREAM_KEEP_STACK:-0}" != 1 ]; then
    trap 'stackstream dev down >/dev/null 2>&1 || true' EXIT
  fi
fi

pytest -p no:cacheprovider -q -ra "$@"
status=$?
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
