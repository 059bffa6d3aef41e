"""Can the lip PatchGAN tell the 1-step student's lip crops from the real ones? A probe of the discriminator alone.

    python -m scripts.probe_disc --json docs/probe_disc.json

BENCHMARKS 11-16: in every ``sync_adv`` training the discriminator's hinge loss stayed near chance (2.0) for the
whole run (120-240 steps, lr 2e-4 or 1e-3, trained alone for 60 steps first), so the PatchGAN could not shape the
lips. This probe takes the generator out of the question:

1. Record: build the ``--preset`` run (``distill.recipe.setup``: the student from ``--init``, the preset's data
   and losses) and run ``--record-steps`` real training steps; every step, the (real frames, detached x0 frames,
   mask) the adversarial term gives its discriminator are kept (``[k, 3, F, R, R]`` x2, the 1-step items).
2. Train fresh discriminators offline on those fixed crops, one per ``--variants`` entry and ``--seeds`` seed:
   ``NAME=groups:beta1:lr`` (``losses.adversarial.MultiScalePatchGAN`` as the preset builds it but with that many
   GroupNorm groups; AdamW betas (beta1, 0.99)), ``--iters`` steps cycling over all recorded batches
   but the last ``--held-out`` ones, the hinge ``L_D`` of the held-out batches every ``--every`` steps.

A discriminator that learns drives the held-out hinge from 2.0 (chance: D = 0 everywhere) toward 0; one that only
follows each batch's colour (identity) stays near 2.0 on batches it has not seen. Writes ``--json``: per variant
and seed, the held-out and training hinge traces; per variant the mean final held-out hinge over the seeds.
Dev CPU: ``--record-steps 12`` about 2 min, each variant x seed at ``--iters 200`` about 1 min (one thread).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_VARIANTS = ["before=0:0.0:2e-4", "beta1_05=0:0.5:2e-4", "groupnorm=4:0.0:2e-4", "default=4:0.5:2e-4",
                    "groupnorm_lr1e-3=4:0.0:1e-3"]  # fmt: skip


def parse_variant(spec: str) -> tuple[str, int, float, float]:
    """``NAME=groups:beta1:lr`` -> (name, groups, beta1, lr). Raises SystemExit on a malformed entry."""
    try:
        name, rest = spec.split("=", 1)
        groups, beta1, lr = rest.split(":")
        return name, int(groups), float(beta1), float(lr)
    except ValueError as err:
        raise SystemExit(f"--variants {spec!r}: expected NAME=groups:beta1:lr ({err})") from None


def record(preset: str, init: str, steps: int, out: Path, overrides: list[str]) -> tuple[list, dict]:
    """``steps`` training steps of ``preset``; returns [(real, fake, mask)] as the adversarial term saw them and
    the discriminator's config node (scales, channels, ...)."""
    from omegaconf import OmegaConf

    import configs
    from distill import recipe

    cfg = configs.load(preset, [f"run.output_dir={out}", "run.resume=null", f"run.max_steps={steps}",
                                f"student.init={init}", *overrides])  # fmt: skip
    run = recipe.setup(cfg)
    names = [name for name, term in run.losses.aux.items() if term.adversarial]
    if not names:
        raise SystemExit(f"{preset} has no adversarial term")
    loss = run.losses.aux[names[0]].loss
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    inner = loss.discriminator_loss

    def recording(real, fake, **context):
        mask = context.get("mask")
        seen.append((real.detach().cpu(), fake.detach().cpu(), None if mask is None else mask.detach().cpu()))
        return inner(real, fake, **context)

    loss.discriminator_loss = recording  # this process's own loss object only
    for i in range(steps):
        logs, _ = recipe.train_step(run)
        run.state.step += 1
        print(f"record step {i + 1}/{steps}: disc hinge {logs.get('adv_disc', float('nan')):.3f}", flush=True)
    disc = OmegaConf.to_container(cfg.distill.aux[names[0]].loss.discriminator, resolve=True)
    return seen, disc


def train_offline(batches: list, held_out: int, disc_cfg: dict, groups: int, beta1: float, lr: float, seed: int,
                  iters: int, every: int) -> dict:  # fmt: skip
    """One fresh discriminator on the recorded batches; the held-out and training hinge traces."""
    from losses.adversarial import LipAdversarial, MultiScalePatchGAN

    torch.manual_seed(seed)
    d = MultiScalePatchGAN(**{k: v for k, v in disc_cfg.items() if k != "_target_"} | {"groups": groups})
    adv = LipAdversarial(d)
    opt = torch.optim.AdamW(d.parameters(), lr=lr, betas=(beta1, 0.99), weight_decay=0.0)
    train, test = batches[:-held_out], batches[-held_out:]
    trace = {"step": [], "held_out": [], "train": []}
    recent: list[float] = []
    for it in range(iters + 1):
        if it % every == 0:
            with torch.no_grad():
                h = [float(adv.discriminator_loss(r, f, mask=m).mean()) for r, f, m in test]
            trace["step"].append(it)
            trace["held_out"].append(float(np.mean(h)))
            trace["train"].append(float(np.mean(recent)) if recent else float("nan"))
            recent = []
        if it == iters:
            break
        r, f, m = train[it % len(train)]
        loss = adv.discriminator_loss(r, f, mask=m).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent.append(float(loss.detach()))
    return trace


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="distill/losses_sync_adv")
    p.add_argument("--init", default="assets/toy_student", help="the student the fakes come from (an export)")
    p.add_argument("--record-steps", type=int, default=12)
    p.add_argument("--held-out", type=int, default=2, help="recorded batches kept out of the offline training")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="NAME=groups:beta1:lr")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/probe_disc"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    if args.record_steps <= args.held_out:
        raise SystemExit(f"--record-steps {args.record_steps} must exceed --held-out {args.held_out}")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    batches, disc_cfg = record(args.preset, args.init, args.record_steps, args.out / "run", args.overrides)
    report: dict = {"_setup": {"preset": args.preset, "init": args.init, "record_steps": args.record_steps,
                               "held_out": args.held_out, "iters": args.iters, "seeds": args.seeds,
                               "discriminator": disc_cfg, "crops_per_batch": int(batches[0][0].shape[0]
                                                                                  * batches[0][0].shape[2]),
                               "machine": platform.processor() or platform.machine(), "threads": args.threads,
                               "record_seconds": round(time.time() - t0, 1)}}  # fmt: skip
    for name, groups, beta1, lr in variants:
        runs = {}
        for seed in args.seeds:
            trace = train_offline(batches, args.held_out, disc_cfg, groups, beta1, lr, seed, args.iters, args.every)
            runs[str(seed)] = trace
            print(f"{name} seed {seed}: held-out hinge {' '.join(f'{v:.2f}' for v in trace['held_out'])}", flush=True)
        final = [t["held_out"][-1] for t in runs.values()]
        report[name] = {"groups": groups, "beta1": beta1, "lr": lr, "held_out_final": float(np.mean(final)),
                        "held_out_final_per_seed": final, "traces": runs}  # fmt: skip
    report["_setup"]["seconds"] = round(time.time() - t0, 1)
    print("\nvariant              held-out hinge after", args.iters, "steps (chance 2.0)")
    for name, *_ in variants:
        print(f"{name:20s} {report[name]['held_out_final']:.3f}  per seed {report[name]['held_out_final_per_seed']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
