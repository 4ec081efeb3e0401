#!/usr/bin/env bash
# The main job on this machine: install, start the local stack, apply topics, run a worker,
# emit sample events, and print where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/stackstream demo "$@"
