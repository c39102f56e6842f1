#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs pytest (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
