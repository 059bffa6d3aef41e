"""The full-size student at 512 x 512 on one GPU: frames per second and first-frame latency of the engine's
per-chunk work (``scripts/gpu_bench.sh`` runs it in one device call of at most 5 minutes).

    python -m scripts.gpu_bench --out $OUT/gpu_bench.json [--seconds 240] [--compile]

Speed does not depend on the weights, so everything is random: the LatentSync 1.6 U-Net + guidance
embedding (1.27 B parameters, bf16), the SD VAE decoder (AutoencoderKL, sd-vae-ft-mse architecture) and a
TAESD-architecture decoder (diffusers ``AutoencoderTiny``). Per chunk of C = 4 new frames with K = 4
context frames (the engine's ``latentsync-512`` preset): gather the cached avatar latents on the GPU, the
LCM sampler (1 or 2 student calls), decode the 4 new frames, composite inside the mask and paste back into
1280 x 720 frames with one batched ``grid_sample`` warp (``teacher.conditioning.paste_faces_torch``), all on
the GPU; the streaming Whisper features are not included (Whisper-tiny on a 4 s window, ~0.1 ms a frame).
First-frame latency = 120 ms lookahead + C frames of audio (160 ms) + the first chunk's compute.
Needs torch, diffusers and PyYAML only (no omegaconf, numpy-version independent). ``--small`` runs the
same code with a tiny model on the CPU (a smoke test for CI machines).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def model_config(small: bool) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "teacher" / "latentsync-1.6.yaml").read_text())["model"]
    if small:
        cfg.update(block_out_channels=[32, 64, 64, 64], layers_per_block=1, norm_num_groups=8, sample_size=8)
    return cfg


def build(small: bool, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, AutoencoderTiny

    from student.denoiser import StudentDenoiser
    from student.model import StudentUNet
    from teacher.unet import LatentSyncUNet

    torch.manual_seed(0)
    unet = LatentSyncUNet(**model_config(small))
    student = StudentUNet(unet).to(device, dtype).eval().requires_grad_(False)
    widths = [8, 16, 16, 16] if small else [128, 256, 512, 512]
    vae = AutoencoderKL(block_out_channels=widths, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1 if small else 2,
                        latent_channels=4, norm_num_groups=4 if small else 32)  # fmt: skip
    taesd = AutoencoderTiny()
    return StudentDenoiser(student).to(device), vae.to(device, dtype).eval(), taesd.to(device, dtype).eval()


def chunk_fn(den, decoder_name, vae, taesd, steps, cache, c, k, w=1.5):
    """One engine chunk on the GPU; returns the pasted frames [C, 3, H, W]."""
    from student.sampler import lcm_timesteps, sample_lcm
    from teacher.conditioning import composite, paste_faces_torch

    ts = lcm_timesteps(steps)
    g = torch.Generator(device=cache["noise"].device).manual_seed(0)
    f = c + k
    lat = [cache[n][:, :, :f] for n in ("noise", "mask", "masked", "ref")]
    x0 = sample_lcm(den, ts, *lat, cache["audio"][:, :f], w=w, generator=g)[:, :, k:]
    z = x0[0].permute(1, 0, 2, 3)  # [C, 4, h, w]
    if decoder_name == "vae":
        pixels = vae.decode(z / 0.18215).sample
    else:
        pixels = taesd.decode(z / 0.18215).sample * 2 - 1  # TAESD decodes to [0, 1]
    faces = composite(pixels.float(), cache["crops"][:c], cache["mask_px"])
    return paste_faces_torch(cache["frames"][:c], faces, cache["matrices"][:c])


def make_cache(res: int, c: int, k: int, device: str, dtype: torch.dtype, frame_hw=(720, 1280)):
    from teacher.conditioning import face_mask

    h, f = res // 8, c + k
    g = torch.Generator(device="cpu").manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    mask = face_mask(res).to(device)
    scale = res / (0.6 * frame_hw[0])  # a face about 60% of the frame height
    m = torch.tensor([[scale, 0.0, -scale * (frame_hw[1] - 0.6 * frame_hw[0]) / 2], [0.0, scale, -scale * 0.2 *
                      frame_hw[0]]]).expand(c, 2, 3).to(device)  # fmt: skip
    return {
        "noise": rnd(1, 4, 1, h, h).expand(-1, -1, f, -1, -1), "masked": rnd(1, 4, f, h, h), "ref": rnd(1, 4, f, h, h),
        "mask": torch.nn.functional.interpolate(mask[None, None], size=(h, h))[:, :, None].expand(1, 1, f, h, h)
        .to(dtype),
        "audio": rnd(1, f, 50, 384), "crops": torch.rand(c, 3, res, res, generator=g).to(device) * 2 - 1,
        "mask_px": mask[None, None], "frames": torch.rand(c, 3, *frame_hw, generator=g).to(device) * 2 - 1,
        "matrices": m,
    }  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn, device: str, budget_s: float, min_iters: int = 3) -> tuple[float, int]:
    """Mean seconds per call after 2 warm-up calls, within ``budget_s``."""
    for _ in range(2):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or (time.perf_counter() - t0 < budget_s and n < 200):
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=200.0, help="total time budget")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (time-boxed)")
    p.add_argument("--small", action="store_true", help="tiny model on the CPU (smoke test)")
    args = p.parse_args(argv)
    device = "cpu" if args.small or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    res, c, k = (64, 4, 4) if args.small else (512, 4, 4)
    t_start = time.perf_counter()
    den, vae, taesd = build(args.small, device, dtype)
    if args.compile:
        den.net.unet = torch.compile(den.net.unet, mode="max-autotune-no-cudagraphs")
    cache = make_cache(res, c, k, device, dtype, (72, 128) if args.small else (720, 1280))
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "resolution": res, "chunk": c, "context": k, "dtype": str(dtype), "compile": args.compile,
              "build_seconds": time.perf_counter() - t_start, "runs": {}}  # fmt: skip
    combos = [(1, "taesd"), (1, "vae"), (2, "taesd"), (2, "vae")]
    per = max(2.0, (args.seconds - (time.perf_counter() - t_start)) / (len(combos) + 1))
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        chunk_fn(den, "vae", vae, taesd, 1, cache, c, k)  # cold first chunk (includes any lazy init)
        sync(device)
        report["first_chunk_cold_ms"] = 1000 * (time.perf_counter() - t0)
        for steps, dec in combos:
            sec, n = measure(lambda s=steps, d=dec: chunk_fn(den, d, vae, taesd, s, cache, c, k), device, per)
            report["runs"][f"{steps}step_{dec}"] = {"ms_per_chunk": 1000 * sec, "fps": c / sec, "chunks_timed": n,
                                                    "first_frame_latency_ms": 120 + 40 * c + 1000 * sec}  # fmt: skip
            print(f"{steps} step, {dec:5s}: {c / sec:7.1f} fps, {1000 * sec:7.1f} ms a chunk of {c}", flush=True)
        unet_only, _ = measure(lambda: den(cache["noise"][:, :, : c + k], torch.tensor(999, device=device),
                                           torch.cat([cache["mask"], cache["masked"], cache["ref"]], 1)[:, :, : c + k],
                                           cache["audio"][:, : c + k], 1.5), device, per)  # fmt: skip
        report["unet_call_ms"] = 1000 * unet_only
    if device == "cuda":
        report["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    report["total_seconds"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
