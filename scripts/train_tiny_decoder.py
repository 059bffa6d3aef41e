"""Train the toy tiny decoder (TAESD at toy scale) on the toy VAE's latents and write it to a folder.

    OMP_NUM_THREADS=1 python -m scripts.train_tiny_decoder --out assets/toy_student/tiny_decoder \\
        --vae assets/toy_teacher/vae --data /work/runs/toy_world [--steps 3000]

Faces: the aligned 128 px crops of the prepared shards under --data (``distill.toy.face_frames``);
the last --holdout-clips shards are held out. Latents: posterior samples of the toy VAE (the
engine decodes samples, not means), --samples draws per frame, encoded once. Loss: L1 to the real
faces, weighted --mouth-weight times inside the generated lower face (``1 - face_mask``). AdamW,
cosine LR. Writes the AutoencoderTiny folder in fp16 and ``train.json`` (command, held-out PSNRs of
the tiny and the toy VAE decoder against the real faces, FLOPs per frame, decode ms per frame).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch


class MouthWeightedL1:
    """Per-sample L1 ``[B]`` with pixel weights ``1 + (w - 1) * mouth``; mouth = 1 - face mask, the generated region."""

    def __init__(self, mouth_weight: float = 4.0):
        self.mouth_weight = mouth_weight

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
        """pred, target ``[B, 3, F, H, W]``, mouth broadcastable (``[B, 1, 1, H, W]`` or ``[H, W]``) -> ``[B]``."""
        weight = 1 + (self.mouth_weight - 1) * mouth.to(pred)
        return ((pred - target).abs() * weight).flatten(1).mean(1)


def train_step(decoder, opt, sched, z: torch.Tensor, x: torch.Tensor, mouth: torch.Tensor, loss_fn) -> dict:
    """One AdamW step on latents ``z [B, 4, F, h, w]``, faces ``x [B, 3, F, H, W]`` and their mouth weights."""
    loss = loss_fn(decoder(z), x, mouth).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return {"loss": loss.item(), "lr": sched.get_last_lr()[0]}


@torch.no_grad()
def encode_samples(vae, frames: torch.Tensor, samples: int, seed: int, batch: int = 64) -> torch.Tensor:
    """Faces ``[N, 3, H, W]`` -> ``samples`` posterior draws ``[S, N, 4, 1, h, w]`` (scaled, as the U-Net sees them)."""
    g = torch.Generator().manual_seed(seed)
    out = [
        torch.cat([vae.encode(chunk.unsqueeze(2), generator=g) for chunk in frames.split(batch)])
        for _ in range(samples)
    ]
    return torch.stack(out)


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of clamped ``pred`` vs ``target`` in [-1, 1] (peak-to-peak 2), over the pixels where mask = 1."""
    err = (pred.clamp(-1, 1) - target).square()
    mse = err.mean() if mask is None else (err * mask).sum() / (mask.sum() * err.numel() / mask.numel())
    return 10 * math.log10(4 / mse.item())


@torch.no_grad()
def evaluate(decoder, vae, z: torch.Tensor, x: torch.Tensor, mouth: torch.Tensor, batch: int = 32) -> dict:
    """Held-out PSNRs: tiny and VAE decoders vs the real faces ``x`` (whole crop and mouth), and tiny vs VAE."""
    tiny = torch.cat([decoder.decode(c) for c in z.split(batch)]).float()
    full = torch.cat([vae.decode(c) for c in z.split(batch)]).float()
    return {
        "tiny_vs_real": psnr(tiny, x),
        "vae_vs_real": psnr(full, x),
        "tiny_vs_real_mouth": psnr(tiny, x, mouth),
        "vae_vs_real_mouth": psnr(full, x, mouth),
        "tiny_vs_vae": psnr(tiny, full.clamp(-1, 1)),
    }


@torch.no_grad()
def decode_ms(module, z: torch.Tensor, repeats: int = 5) -> float:
    """Median wall ms per frame of ``module.decode(z)`` (one warm-up call)."""
    module.decode(z)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        module.decode(z)
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2] / (z.shape[0] * z.shape[2])


def load_faces(root: Path, holdout_clips: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(train, held-out) faces ``[N, 3, R, R]``; the held-out ones are the last ``holdout_clips`` shards."""
    from distill.data import list_shards
    from distill.toy import face_frames

    shards = list_shards(root)
    frames = face_frames(root)
    n_held = sum(s.num_frames for s in shards[-holdout_clips:])
    return frames[:-n_held], frames[-n_held:], [s.path.name for s in shards[-holdout_clips:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("assets/toy_student/tiny_decoder"))
    p.add_argument("--vae", type=Path, default=Path("assets/toy_teacher/vae"))
    p.add_argument("--data", type=Path, default=Path("/work/runs/toy_world"))
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=4, help="whole frames; more small steps beat bigger batches here")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--mouth-weight", type=float, default=4.0)
    p.add_argument("--samples", type=int, default=2, help="posterior draws per training frame")
    p.add_argument("--holdout-clips", type=int, default=4)
    p.add_argument("--eval-frames", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    command = "python -m scripts.train_tiny_decoder " + shlex.join(argv if argv is not None else sys.argv[1:])

    from tqdm import tqdm

    from teacher.conditioning import face_mask
    from teacher.tiny_decoder import TinyDecoder, decoder_flops
    from teacher.vae import load_vae

    torch.manual_seed(args.seed)
    t0 = time.time()
    vae = load_vae(args.vae, torch_dtype=torch.float32).eval().requires_grad_(False)
    train_x, held_x, held_names = load_faces(args.data, args.holdout_clips)
    held_x = held_x[torch.linspace(0, len(held_x) - 1, min(args.eval_frames, len(held_x))).long()]
    print(f"{len(train_x)} training frames, {len(held_x)} held-out frames from {held_names}", flush=True)
    train_z = encode_samples(vae, train_x, args.samples, args.seed)  # [S, N, 4, 1, h, w]
    held_z = encode_samples(vae, held_x, 1, args.seed + 1)[0]
    train_x, held_x = train_x.unsqueeze(2), held_x.unsqueeze(2)  # [N, 3, 1, R, R]
    print(f"encoded in {time.time() - t0:.0f} s", flush=True)

    mouth = 1 - face_mask(train_x.shape[-1])
    loss_fn = MouthWeightedL1(args.mouth_weight)
    decoder = TinyDecoder.tiny(seed=args.seed).train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    g = torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.steps), desc="tiny decoder", unit="step", mininterval=5)
    for _ in bar:
        s = torch.randint(args.samples, (args.batch,), generator=g)
        i = torch.randint(len(train_x), (args.batch,), generator=g)
        log = train_step(decoder, opt, sched, train_z[s, i], train_x[i], mouth, loss_fn)
        bar.set_postfix(loss=f"{log['loss']:.4f}", refresh=False)

    decoder.eval().half().save_pretrained(args.out)
    saved = TinyDecoder.from_pretrained(args.out, torch_dtype=torch.float32).eval()  # score the fp16 weights
    metrics = evaluate(saved, vae, held_z, held_x, mouth)
    flops = {"tiny": decoder_flops(saved, held_z.shape[-1]), "vae": decoder_flops(vae, held_z.shape[-1])}
    bench_z = held_z[:8].permute(2, 1, 0, 3, 4)  # [1, 4, 8, h, w]
    report = {
        "command": command,
        "psnr_db": {k: round(v, 2) for k, v in metrics.items()},
        "flops_per_frame": {**flops, "ratio": round(flops["tiny"] / flops["vae"], 4)},
        "decode_ms_per_frame": {
            "tiny": round(decode_ms(saved, bench_z), 2),
            "vae": round(decode_ms(vae, bench_z), 2),
            "threads": torch.get_num_threads(),
            "resolution": int(train_x.shape[-1]),
        },
        "params": sum(p.numel() for p in saved.tae.decoder.parameters()),
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "mouth_weight": args.mouth_weight,
        "posterior_samples": args.samples, "train_frames": len(train_x), "heldout_frames": len(held_x),
        "heldout_clips": held_names, "minutes": round((time.time() - t0) / 60, 1),
        "psnr_note": "clamped decode vs real faces on held-out clips, one posterior sample each; mouth = 1 - face_mask",
    }  # fmt: skip
    (args.out / "train.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
