#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): training speed, float32/float16 export, CUDA-vs-CPU agreement
# and serving throughput on the CUDA provider, in one command of at most 8 minutes, one JSON of
# figures in $OUT (else ./gpu-check). On a GPU host with network: pip install -e '.[gpu,train,dev]'
# first. On the borrowed GPU machine (no network): the pieces scripts/gpu-wheels.sh made, gathered
# in $RESCAM_GPU_PIECES (default /tmp/rescam-gpu), are installed first. BENCHMARKS.md, GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
pieces=${RESCAM_GPU_PIECES:-/tmp/rescam-gpu}
mkdir -p "$out"
py=.venv/bin/python
[ -x "$py" ] || py=python3
if compgen -G "$pieces/piece-*" > /dev/null; then
    (cd "$pieces" && if [ -f SHA256SUMS ]; then sha256sum -c --quiet SHA256SUMS; fi)
    rm -rf /tmp/rescam-wheels /tmp/rescam-site && mkdir -p /tmp/rescam-wheels
    cat "$pieces"/piece-* | tar -xf - -C /tmp/rescam-wheels
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/rescam-site /tmp/rescam-wheels/wheels/*.whl
    export PYTHONPATH=/tmp/rescam-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
export PYTHONUNBUFFERED=1
timeout 480 "$py" bench/gpu_check.py --out "$out" --budget-s "${RESCAM_GPU_CHECK_BUDGET_S:-450}" "$@" 2>&1 | tee "$out/gpu-check.log"
