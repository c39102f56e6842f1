#!/usr/bin/env bash
# Packs what the borrowed GPU machine lacks for scripts/gpu-check.sh: onnxruntime-gpu and the web
# stack as Python 3.12 wheels (it has Python 3.12, torch with CUDA 13 and the CUDA 13 nvidia-*
# wheels, the CPU build of onnxruntime and no network), in pieces of at most 56 MiB, one per
# transfer (a transfer carries 64 MiB, the working tree included). Run here, where pip reaches the
# package index; the pieces land in .gpu/ (ignored by git). How to move them: BENCHMARKS.md, GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
# the versions this checkout runs with, so that the stack there is the one tested here
pins=$("$py" - <<'PY'
from importlib.metadata import PackageNotFoundError, version

for name in ("onnxruntime-gpu", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "pydantic-settings",
             "python-dotenv", "python-multipart", "fastapi-offline", "annotated-types", "annotated-doc",
             "typing-inspection", "typing-extensions", "opentelemetry-api", "isal"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
)
rm -rf .gpu && mkdir -p .gpu/wheels
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels $pins
tar -cf - -C .gpu wheels | split -b 56m -d - .gpu/piece-
rm -rf .gpu/wheels
(cd .gpu && sha256sum piece-* > SHA256SUMS)
ls -l .gpu
