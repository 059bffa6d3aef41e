"""Train the toy teacher on the synthetic world and write it to ``assets/toy_teacher/``.

    python -m scripts.train_toy_teacher --out assets/toy_teacher [--clips 48] [--unet-steps 4000] ...

Steps: synthesise clips -> prepare (128 px aligned faces, Whisper steps) -> fit the toy VAE ->
train the LatentSync-architecture U-Net -> evaluate mouth sync on held-out clips -> save.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("assets/toy_teacher"))
    p.add_argument("--work", type=Path, default=Path("runs/toy_world"))
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-from", type=Path, default=None, help="reuse a trained toy VAE folder instead of fitting one")
    p.add_argument("--unet-from", type=Path, default=None,
                   help="continue from a toy U-Net (unet.safetensors) with a fresh optimizer and LR schedule")
    p.add_argument("--unet-lr", type=float, default=3e-4)
    p.add_argument("--x0-weight", type=float, default=None,
                   help="x0-space mouth loss weight (distill.toy.diffusion_loss); default ToyConfig.x0_weight")
    p.add_argument("--keep-latents", action="store_true",
                   help="with --vae-from: keep its latent scale and the latents already cached under --work")
    args = p.parse_args(argv)
    if args.keep_latents and args.vae_from is None:
        p.error("--keep-latents needs --vae-from (the VAE the cached latents were encoded with)")
    command = "python -m scripts.train_toy_teacher " + shlex.join(argv if argv is not None else sys.argv[1:])

    import torch

    from distill.data import ClipDataset, PrepareConfig, encode_latents, prepare
    from distill.synthworld import synth_dataset
    from distill.toy import ToyConfig, calibrate_scaling, face_frames, save_toy, train_teacher, train_vae

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = ToyConfig(vae_steps=args.vae_steps, unet_steps=args.unet_steps, seed=args.seed, unet_lr=args.unet_lr)
    if args.x0_weight is not None:
        cfg.x0_weight = args.x0_weight
    t0 = time.time()
    src = args.work / "src"
    if not (src / f"clip_{args.clips - 1:05d}.mp4").is_file():
        synth_dataset(src, clips=args.clips, resolution=256, seconds=args.seconds, seed=args.seed, workers=args.workers)
    report = prepare(src, args.work, PrepareConfig(resolution=cfg.resolution, min_frames=cfg.num_frames,
                                                  workers=args.workers))  # fmt: skip
    print(report.summary(), flush=True)
    frames = None if args.keep_latents else face_frames(args.work)
    if args.vae_from is not None:
        from teacher.vae import VideoVAE

        vae = VideoVAE.from_pretrained(args.vae_from, torch_dtype=torch.float32)
    else:
        frames = face_frames(args.work) if frames is None else frames
        vae = train_vae(frames, cfg, log=lambda m: print(m, flush=True))
    if not args.keep_latents:
        calibrate_scaling(vae, frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))[:512]])
        for cache in args.work.glob("shards/*/latents.npz"):  # re-encode with this VAE and scale
            cache.unlink()
    print(f"latent scaling factor {vae.scaling_factor:.5f}", flush=True)
    encode_latents(args.work, vae)
    dataset = ClipDataset(args.work, num_frames=cfg.num_frames, stride=cfg.num_frames // 2, latents=True, pixels=False)

    def snapshot(unet, step):  # a usable teacher survives an interrupted run
        save_toy(args.out, unet, vae, cfg, command, extra={"unet_steps_done": step, "partial": True})

    init = None
    if args.unet_from is not None:
        from teacher.loading import read_state_dict

        init, _ = read_state_dict(args.unet_from)
    unet = train_teacher(dataset, cfg, log=lambda m: print(m, flush=True), on_checkpoint=snapshot, init_state=init)
    minutes = (time.time() - t0) / 60
    out = save_toy(args.out, unet, vae, cfg, command, extra={"train_minutes": round(minutes, 1),
                                                            "clips": args.clips, "seconds": args.seconds})  # fmt: skip
    print(json.dumps({"out": str(out), "minutes": round(minutes, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
