#!/usr/bin/env bash
# The full-size student at 512 x 512 on one GPU, in one device call of at most 5 minutes:
#   device run: bash scripts/gpu_bench.sh      (carry: .whl, holding the diffusers wheel)
# Prepare the wheel here once (the device image has torch, PyYAML, safetensors, transformers, not diffusers):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_bench}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
timeout 280 python3 -m scripts.gpu_bench --out "$OUT/gpu_bench.json" --seconds 200 "$@"
