#!/usr/bin/env bash
# Issue 13's loss arms (scripts/bench_losses.py) on one GPU, in one device call of at most 10 minutes:
#   here, once:   bash scripts/gpu_losses.sh --pack     (wheels + the toy world's shards into .gpu/, ~25 MB; builds
#                 the shards first when runs/ lacks them)
#   device run:   bash scripts/gpu_losses.sh [TRAIN_SECONDS]      (carry: .gpu; default 330 s of training)
# The device image has torch / transformers / accelerate / opencv but not diffusers, omegaconf, lpips, PyAV or
# decord; PyAV's wheel does not fit the transfer, so the shards' faces.mp4 are read with OpenCV there
# (scripts/gpu_site: bit-exact with PyAV, `python -m scripts.gpu_site.check runs/losses_world`). The latent caches
# are encoded there (the toy VAE on the GPU). First a 1-step smoke run of every arm (fails fast), then every arm
# x 2 seeds (the issue's count) side by side (--jobs 8) with the step count fitted to TRAIN_SECONDS by a 20-step
# pilot, then the evaluation on the GPU; if time is left, the full-size engine speed (scripts/gpu_bench.py, 60 s).
# A failed run's error in console.log ends with the last lines of its train.log (runs.tar.gz holds the whole logs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--pack" ]; then
  mkdir -p .git/info .gpu/whl
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
  plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64"
  python3 -m pip download -q --no-deps $plat -d .gpu/whl diffusers==0.42.1 omegaconf==2.4.0 lpips==0.1.4
  python3 -m pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3
  # the toy world's 16 training clips and the held-out clips (as bench_losses builds them), when absent (~3 min);
  # HELDOUT_CLIPS (default 8, 40 windows: BENCHMARKS 15 found the 3 clips' 15 windows too few to rank students)
  # must be the same here and in the device run
  python3 - <<'PY'
import configs
from distill import recipe
from scripts.bench_distill import heldout
cfg = configs.load("distill/losses_all")
tcfg = recipe.teacher_config(cfg)
recipe.ensure_data(cfg, tcfg, configs.instantiate(tcfg.vae))
heldout(__import__("pathlib").Path("runs/bench_losses/heldout"), int(__import__("os").environ.get("HELDOUT_CLIPS", "8")),
        1.6, 1000, int(cfg.data.num_frames))
PY
  tar cJf .gpu/losses_data.tar.xz --exclude=latents.npz --exclude=synthetic_src --exclude=src \
    runs/losses_world runs/bench_losses/heldout
  du -sh .gpu
  exit 0
fi
TRAIN=${1:-330}
HELDOUT_CLIPS=${HELDOUT_CLIPS:-8}
DEV=${DEV:-cuda} SEEDS=${SEEDS:-0 1} JOBS=${JOBS:-8} PILOT=${PILOT:-20}   # DEV=cpu SEEDS=0 JOBS=2 PILOT=2: a local dry run
# extra rows beside the 4 contract arms, as bench_losses --arms NAME=ARM:key=value (e.g. LatentSync's absolute sync
# reward instead of the presets' relative one: EXTRA_ARMS=sync_adv_abs=sync_adv:distill.aux.sync.inputs.real_frames=null)
EXTRA_ARMS=${EXTRA_ARMS:-}
OUT=${OUT:-runs/gpu_losses_out}
mkdir -p "$OUT"
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=$PWD/scripts/gpu_site:$PWD:/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") | tee "$OUT/console.log"
mkdir -p runs/gpu_losses runs/gpu_smoke
tar xJf .gpu/losses_data.tar.xz
cp -r runs/bench_losses/heldout runs/gpu_losses/ && cp -r runs/bench_losses/heldout runs/gpu_smoke/
DEV=$DEV python3 - <<'PY' 2>&1 | tee -a "$OUT/console.log"
import os
import configs
from distill.data.dataset import encode_latents
from teacher.loading import freeze
vae = freeze(configs.instantiate(configs.load("teacher/toy").vae)).to(os.environ["DEV"])
print("encoded latents of", encode_latents("runs/losses_world", vae), "shards")
PY
pack() { tar czf "$OUT/runs.tar.gz" runs/gpu_losses/*/losses.jsonl runs/gpu_losses/*/train.log runs/gpu_smoke/*/train.log \
  runs/gpu_losses/pilot.log 2>/dev/null || true; }
trap pack EXIT
echo "== smoke: 1 step of every arm ($(($(date +%s) - T0)) s)" | tee -a "$OUT/console.log"
python3 -m scripts.bench_losses --steps 1 --seeds 0 --jobs 4 --draws 1 --clips "$HELDOUT_CLIPS" --seconds 1.6 --no-cost \
  --device "$DEV" --out runs/gpu_smoke 2>&1 | tail -12 | tee -a "$OUT/console.log"
echo "== arms x seeds ($SEEDS), ${TRAIN} s of training ($(($(date +%s) - T0)) s)" | tee -a "$OUT/console.log"
python3 -m scripts.bench_losses --train-seconds "$TRAIN" --pilot-steps "$PILOT" --steps 5000 --seeds $SEEDS --jobs "$JOBS" \
  --arms plain sync sync_adv all $EXTRA_ARMS \
  --draws 3 --clips "$HELDOUT_CLIPS" --seconds 1.6 --no-cost --device "$DEV" --out runs/gpu_losses --json "$OUT/bench_losses.json" \
  2>&1 | tee runs/gpu_losses/pilot.log | tail -30 | tee -a "$OUT/console.log"
ELAPSED=$(($(date +%s) - T0))
echo "== done at ${ELAPSED} s" | tee -a "$OUT/console.log"
if [ "$ELAPSED" -lt 470 ] && [ "$DEV" = cuda ]; then
  timeout 100 python3 -m scripts.gpu_bench --out "$OUT/gpu_bench.json" --seconds 60 2>&1 | tail -20 | tee -a "$OUT/console.log" || true
fi
