"""Per-frame cost of each stage of the teacher path on this machine; prints a table, writes JSON.

    python -m scripts.bench_components [--out runs/bench_components.json] [--repeats 5]

Stages: synthetic clip rendering, mediapipe face alignment (stateless align, exact and single-warp
resampling), paste-back, Whisper-tiny features (random weights, same cost as the real ones),
the toy teacher U-Net per step (16x16 latents, 8 frames, batch 2 as in guided sampling) and
its VAE decode. Ratios are computed within one run (machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench_components.json"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    from omegaconf import OmegaConf

    import configs
    from distill.synthworld import make_clip
    from teacher.audio import load_whisper, whisper_features
    from teacher.face import FaceAligner
    from teacher.unet import LatentSyncUNet
    from teacher.vae import load_vae

    r = args.repeats
    res: dict[str, float] = {}
    clip = make_clip(0, resolution=256, seconds=2.0)
    res["synth_render_256_ms_per_frame"] = best_ms(lambda: make_clip(0, resolution=256, seconds=2.0), r) / 50
    frame = clip.frames[10]
    for exact in (True, False):
        aligner = FaceAligner(resolution=256, exact_resampling=exact)
        key = "exact" if exact else "single_warp"
        res[f"align_256_{key}_ms_per_frame"] = best_ms(lambda a=aligner: a.align(frame), r)
    aligner = FaceAligner(resolution=256)
    aligned = aligner.align(frame)
    res["restore_256_ms_per_frame"] = best_ms(lambda: aligner.restore(frame, aligned.crop, aligned), r)
    whisper = load_whisper(None)
    res["whisper_ms_per_frame"] = best_ms(lambda: whisper_features(clip.audio, whisper), r) / 50

    cfg = configs.load("teacher/toy")
    unet = LatentSyncUNet(**OmegaConf.to_container(cfg.model)).eval()
    vae = load_vae(None)
    x = torch.randn(2, 13, 8, 16, 16)
    a = torch.randn(2, 8, 50, 384)
    with torch.no_grad():
        res["toy_unet_guided_step_ms_per_frame"] = best_ms(lambda: unet(x, 500, a), r) / 8
        res["toy_unet_single_step_ms_per_frame"] = best_ms(lambda: unet(x[:1], 500, a[:1]), r) / 8
        z = torch.randn(1, 4, 8, 16, 16)
        res["tiny_vae_decode_128_ms_per_frame"] = best_ms(lambda: vae.decode(z), r) / 8
    res["guided_over_single_step_ratio"] = (
        res["toy_unet_guided_step_ms_per_frame"] / res["toy_unet_single_step_ms_per_frame"]
    )
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "results": {k: round(v, 3) for k, v in res.items()},
    }
    for k, v in report["results"].items():
        print(f"{k:45s} {v:10.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
