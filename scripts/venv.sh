#!/usr/bin/env bash
# Creates .venv and installs rescam (editable, with its training and test extras) into it.
# Sourced by serve.sh and test.sh; a second run with nothing changed returns in a second.
#
# torch is installed first, from RESCAM_TORCH (default torch==2.13.0):
#   - with pip's own sources that is PyPI's build, which carries CUDA: right for a GPU machine;
#   - a CPU-only machine avoids the multi-GB CUDA build with
#       RESCAM_TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   - a machine whose pip already finds a local CPU wheel (find-links) takes that one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_SPEC="${RESCAM_TORCH:-torch==2.13.0}"
TORCH_INDEX="${RESCAM_TORCH_INDEX:-}"
STAMP="$VENV/.rescam-install"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $TORCH_SPEC $TORCH_INDEX"

if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "rescam: installing into $VENV ($TORCH_SPEC)" >&2
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    if [ -n "$TORCH_INDEX" ]; then
        "${PIP[@]}" --index-url "$TORCH_INDEX" "$TORCH_SPEC"
    else
        "${PIP[@]}" "$TORCH_SPEC"
    fi
    "${PIP[@]}" -e "$ROOT[train,dev]"
    echo "$WANT" > "$STAMP"
fi
