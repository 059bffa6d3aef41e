"""``turbosync bench stream``: what the engine costs, measured in one run, and what the full-size model costs.

    turbosync bench stream --out runs/bench_stream.json [--preset engine/toy] [--student DIR] [--seconds 10]

On a synthetic clip (the avatar is prepared beforehand and not timed):

1. throughput: the audio fed in 20 ms pieces as fast as the engine goes, frames written to an mp4:
   frames per second, real-time factor (wall / audio seconds), per-stage ms per frame.
2. isolation: each stage alone on the same inputs (streaming features of the whole audio; the U-Net,
   decode and paste-back of every chunk window of the same grid; writing the same frames to an mp4).
   pipeline overhead = wall of (1) / sum of the isolated stages - 1 (the engine's own cost: gathering,
   queues, conversions).
3. pacing: the audio fed at wall-clock pace (20 ms pieces, sleeping between them), degradation as the
   preset says: first-frame latency (first frame out after the first audio arrived), steady-state latency
   of frame i = when it leaves - when its audio started arriving (mean, p95, p99), frame-pacing jitter
   (standard deviation of that latency), the degradation levels used.
4. peak resident memory (and CUDA memory on a GPU), torch threads, device.
5. analytic FLOPs per 512 x 512 frame of the full-size model (torch's FLOP counter on the meta device):
   LatentSync 1.6 U-Net per step, SD VAE decoder and encoder, TAESD decoder.
"""

from __future__ import annotations

import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.avatar import prepare_avatar
from inference.engine import FRAME_SECONDS, decode, denoise, flush, paste, start, step, window, window_frames
from inference.run import load_engine_config, load_student

PIECE = 320  # 20 ms at 16 kHz


def _feed(state, audio: np.ndarray, paced: bool, on_frames=None):
    """Push ``audio`` in 20 ms pieces (sleeping to keep the wall clock when ``paced``); returns
    (frames, emit times relative to the first push, state)."""
    frames, times = [], []
    t0 = time.perf_counter()
    for s in range(0, len(audio), PIECE):
        if paced:
            delay = t0 + s / 16000 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        out, state = step(state, audio[s : s + PIECE])
        now = time.perf_counter() - t0
        frames += out
        times += [now] * len(out)
        if on_frames is not None:
            on_frames(out)
    out, state = flush(state)
    frames += out
    times += [time.perf_counter() - t0] * len(out)
    if on_frames is not None:
        on_frames(out)
    return frames, np.asarray(times), state


def throughput(bundle, avatar, audio, cfg, decoder, out_mp4: Path) -> dict[str, Any]:
    from teacher.media import VideoWriter

    state = start(avatar, bundle, cfg, tiny_decoder=decoder)
    t0 = time.perf_counter()
    with VideoWriter(out_mp4, 25, sample_rate=16000) as writer:
        writer.write_audio(audio)
        frames, _, state = _feed(state, audio, paced=False, on_frames=lambda fs: [writer.write(f) for f in fs])
    wall = time.perf_counter() - t0
    n = len(frames)
    secs = state.stats["seconds"]
    return {"frames": n, "audio_seconds": len(audio) / 16000, "wall_seconds": wall, "fps": n / wall,
            "real_time_factor": wall / (len(audio) / 16000),
            "in_pipeline_ms_per_frame": {k: 1000 * v / n for k, v in secs.items()}}, frames  # fmt: skip


def isolated(bundle, avatar, audio, cfg, decoder, frames: list[np.ndarray], out_mp4: Path) -> dict[str, float]:
    """Seconds of each stage alone on the same inputs as the pipeline run."""
    from inference.audio_stream import stream_flush, stream_push, stream_start
    from teacher.media import VideoWriter

    out: dict[str, float] = {}
    t = time.perf_counter()
    st = stream_start(bundle.whisper, cfg.audio)
    feats = []
    for s in range(0, len(audio), PIECE):
        f, st = stream_push(st, audio[s : s + PIECE])
        feats.append(f)
    f, st = stream_flush(st)
    out["audio"] = time.perf_counter() - t
    state = start(avatar, bundle, cfg, tiny_decoder=decoder)
    state.feats = torch.cat([x for x in [*feats, f] if len(x)])
    n = len(state.feats)
    out["unet"] = out["decode"] = out["paste"] = 0.0
    for a in range(0, n, cfg.chunk):
        idx, src, k = window_frames(a, min(cfg.chunk, n - a), cfg.context, avatar.num_frames)
        t = time.perf_counter()
        x0 = denoise(state, window(state, idx, src, k))[:, :, k:]
        out["unet"] += time.perf_counter() - t
        t = time.perf_counter()
        faces = decode(state, x0, src[k:])
        out["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        paste(state, faces, src[k:])
        out["paste"] += time.perf_counter() - t
    t = time.perf_counter()
    with VideoWriter(out_mp4, 25, sample_rate=16000) as writer:
        writer.write_audio(audio)
        for fr in frames:
            writer.write(fr)
    out["io"] = time.perf_counter() - t
    return out


def pacing(bundle, avatar, audio, cfg, decoder) -> dict[str, Any]:
    state = start(avatar, bundle, cfg, tiny_decoder=decoder, clock=time.perf_counter)
    frames, times, state = _feed(state, audio, paced=True)
    due = np.arange(len(frames)) * FRAME_SECONDS  # when frame i's audio started arriving
    latency = 1000 * (times - due)
    steady = latency[len(latency) // 5 :] if len(latency) >= 10 else latency
    return {"first_frame_ms": float(latency[0]), "steady_latency_ms": {"mean": float(steady.mean()),
            "p95": float(np.percentile(steady, 95)), "p99": float(np.percentile(steady, 99))},
            "jitter_ms": float(steady.std()), "algorithmic_latency_ms": 120.0 + 1000 * cfg.chunk * FRAME_SECONDS,
            "levels": dict(state.stats["levels"]), "frames": len(frames)}  # fmt: skip


def flops_report() -> dict[str, float]:
    """TFLOP per 512 x 512 frame of the full-size models (meta device: nothing is allocated)."""
    from diffusers import AutoencoderKL, AutoencoderTiny
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode

    import configs
    from teacher.unet import LatentSyncUNet

    def count(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 1e12

    f = 16
    model = OmegaConf.to_container(configs.load("teacher/latentsync-1.6").model, resolve=True)
    with torch.device("meta"), torch.no_grad():
        unet = LatentSyncUNet(**model)
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4)  # fmt: skip
        taesd = AutoencoderTiny()
        return {
            "unet_per_step": count(lambda: unet(torch.randn(1, 13, f, 64, 64), torch.tensor(999),
                                                torch.randn(1, f, 50, 384))) / f,  # fmt: skip
            "sd_vae_decoder": count(lambda: vae.decode(torch.randn(1, 4, 64, 64))),
            "sd_vae_encoder": count(lambda: vae.encode(torch.randn(1, 3, 512, 512))),
            "taesd_decoder": count(lambda: taesd.decode(torch.randn(1, 4, 64, 64))),
        }


def bench_stream(student_dir: str | Path, preset: str = "engine/toy", seconds: float = 10.0, seed: int = 7,
                 device: str = "cpu", tiny_decoder: str | None = None, flops: bool = True,
                 overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """All of the above on one synthetic clip; returns the JSON-ready report."""
    from distill.synthworld import make_clip
    from inference.run import _tiny_decoder, decoder_fallback

    cfg = load_engine_config(preset, overrides)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    bundle = load_student(student_dir, device)
    decoder = _tiny_decoder(tiny_decoder, bundle)
    cfg = decoder_fallback(cfg, decoder)
    clip = make_clip(seed, resolution=256, seconds=seconds)
    with tempfile.TemporaryDirectory(prefix="turbosync-bench-") as tmp:
        avatar = prepare_avatar(clip.frames, Path(tmp) / "avatar", bundle, progress=False)
        audio = clip.audio.astype(np.float32)
        thr, frames = throughput(bundle, avatar, audio, cfg, decoder, Path(tmp) / "a.mp4")
        iso = isolated(bundle, avatar, audio, cfg, decoder, frames, Path(tmp) / "b.mp4")
        pace = pacing(bundle, avatar, audio, cfg, decoder)
    n = thr["frames"]
    report = {
        "preset": preset, "student": str(student_dir), "config": {k: v for k, v in vars(cfg).items() if k != "audio"},
        "throughput": thr,
        "isolated_ms_per_frame": {k: 1000 * v / n for k, v in iso.items()},
        "pipeline_overhead": thr["wall_seconds"] / sum(iso.values()) - 1,
        "pacing": pace,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": {"device": device, "torch_threads": torch.get_num_threads(), "platform": platform.machine(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }  # fmt: skip
    report["config"]["audio"] = vars(cfg.audio)
    if torch.cuda.is_available():
        report["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if flops:
        report["tflop_per_512_frame"] = flops_report()
    return report


def print_report(report: dict[str, Any]) -> None:
    thr, pace = report["throughput"], report["pacing"]
    print(f"{report['preset']}: {thr['frames']} frames, {thr['fps']:.1f} fps, real-time factor "
          f"{thr['real_time_factor']:.3f}, pipeline overhead {100 * report['pipeline_overhead']:.1f}%")  # fmt: skip
    print("ms per frame  in pipeline:", {k: round(v, 2) for k, v in thr["in_pipeline_ms_per_frame"].items()})
    print("              isolated:   ", {k: round(v, 2) for k, v in report["isolated_ms_per_frame"].items()})
    print(f"paced: first frame {pace['first_frame_ms']:.0f} ms, steady latency mean "
          f"{pace['steady_latency_ms']['mean']:.0f} / p95 {pace['steady_latency_ms']['p95']:.0f} / p99 "
          f"{pace['steady_latency_ms']['p99']:.0f} ms, jitter {pace['jitter_ms']:.0f} ms, levels {pace['levels']}")
    print(f"peak RSS {report['peak_rss_mib']:.0f} MiB; threads {report['machine']['torch_threads']}")
    if "tflop_per_512_frame" in report:
        print("TFLOP per 512 px frame:", {k: round(v, 3) for k, v in report["tflop_per_512_frame"].items()})


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    return path
