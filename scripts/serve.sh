#!/usr/bin/env bash
# The main job: sets up .venv, trains and deploys the default model if the registry has none
# (the embedded synthetic data set, a few minutes on a CPU), then serves it on port 8000.
# Extra arguments go to `rescam serve` (e.g. --host 0.0.0.0 --port 9000 --workers 2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$ROOT"
"$VENV/bin/rescam" bootstrap
exec "$VENV/bin/rescam" serve "$@"
