"""Where does the sync reward's gradient move a 1-step output? A probe with no training (issue 13).

    python -m scripts.probe_sync_reward --out runs/probe_sync_reward --json docs/probe_sync_reward.json

BENCHMARKS 12-13: students trained with the sync reward (``losses.SyncLoss`` with the supervising toy SyncNet on
the decoded 1-step x0) score a higher LSE-C with the *held-out* SyncNet than plain students, but a lower
``sync_score`` (the world's own ``measure_mouth`` against the true mouth opening). Training adds noise, EMA and
the other terms; this probe isolates the reward's direction. For each held-out window (as ``scripts/bench_losses``:
3 synthetic clips of 1.6 s, seed 1000, 15 windows of 8 frames at 128 px) it starts from a latent ``z``:

    student   the committed 1-step student's x0 (``assets/toy_student``), what the reward acts on in training
    truth     the VAE encoding of the real frames (the mouth is right: any move is a move away)

and descends the reward itself on ``z`` (Adam, ``--lr``, ``--steps``): ``L = mean_b SyncLoss(decode(z_b), mel_b)``
(each window's own mel, ``-log cos`` with the supervising net), in each of ``--forms``: ``absolute`` (that, the
recipe's ``sync`` term), ``relative`` (``max(0, L(decode(z_b)) - L(real frames_b))``, ``SyncLoss(real_frames=...)``),
``contrastive`` (``+ BCE(cos(v_b, a_{b-1}), 0)``, ``SyncLoss(negatives=True)``), ``candidates``
(``-log(s_0 / (s_0 + sum_k s_k))`` over the window's own mel and 4 off-sync mels of its clip,
``SyncLoss(mel_negatives=...)``). Every ``--every`` steps, on the
decoded and pasted frames (the pipeline's composite, as ``distill.benchmark.evaluate``): the reward (mean over the
windows), ``sync_score``, the held-out net's LSE-C / LSE-D, sharpness and mse_to_ground_truth. ``--syncnets`` runs
the probe once per supervising net (e.g. a retrained one) on the same windows and starts.

If the reward were a mouth reading, descending it from the student would raise ``sync_score``; if it rewards what
the two toy SyncNets share and the mouth opening does not, LSE-C rises while ``sync_score`` falls (BENCHMARKS
section 14: both, one after the other). ``--students NAME=DIR ...`` adds exported students as starts; with
``--steps 0`` they are only measured (e.g. whether a trained student's lower ``sync_loss`` is audio-agnostic).
Writes ``--json`` (every trace) and ``OUT/probe_<net>_<start>_<form>.png`` (the lower half of 4 frames of 3
windows at steps 0, steps/2 and steps).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def load_windows(args):
    """(windows, mel [N, 1, 80, T], toy VAE) on the held-out clips, the bench's encodings and noise."""
    import configs
    from distill.benchmark import make_windows
    from distill.data import ClipDataset
    from scripts.bench_distill import heldout

    cfg = configs.load("teacher/toy")
    f = int(cfg.data.num_frames)
    data = heldout(args.out / "heldout", args.clips, args.seconds, args.heldout_seed, f)
    mel_data = ClipDataset(args.out / "heldout", num_frames=f, reference="same", stride=f, mel=True,
                           mel_negatives=CANDIDATES)  # fmt: skip
    vae = configs.instantiate(cfg.vae).eval().requires_grad_(False)
    windows = make_windows(data, vae, seed=0)
    items = [mel_data[i] for i in range(len(windows))]
    mel = torch.stack([item["mel"] for item in items])
    negatives = torch.stack([item["mel_negatives"] for item in items])
    return windows, mel, negatives, vae


FORMS = ("absolute", "relative", "contrastive", "candidates")
CANDIDATES = 4  # off-sync mel windows per window for the candidates form (as the bench's mel_negatives=4)


def reward_form(net, sync_window, form: str, mel: torch.Tensor, real: torch.Tensor, negatives: torch.Tensor):
    """frames ``[N, 3, F, H, W]`` -> ``[N]``: the supervising net's SyncLoss in one of ``FORMS`` (``absolute``
    as the recipe's ``sync`` term, ``relative`` with ``real_frames``, ``contrastive`` with ``negatives``,
    ``candidates`` with ``mel_negatives``: ``negatives [N, K, 1, 80, T]``, other times of the same clip)."""
    from losses.sync import SyncLoss

    loss = SyncLoss(net, resolution=sync_window.resolution, lower_half=sync_window.lower_half,
                    gradient_checkpointing=False, negatives=form == "contrastive")  # fmt: skip
    if form == "relative":
        return lambda frames: loss(frames, mel, real_frames=real)
    if form == "candidates":
        return lambda frames: loss(frames, mel, mel_negatives=negatives)
    return lambda frames: loss(frames, mel)


def measure(z: torch.Tensor, windows, mel, vae, reward, probe, syncnet, sync_window) -> tuple[dict, list]:
    """Metrics of latents ``z [N, 4, F, h, h]`` (one row per window) from ``distill.benchmark.evaluate`` (pasted
    outputs: sync_score, sharpness, mse_to_ground_truth, LSE-C / LSE-D), plus the descended ``reward``'s mean and the
    supervising net's plain ``-log cos`` (``probe``, a SyncLoss) with each window's own mel (``sync_loss``) and with
    another clip's (``sync_loss_offsync``: the mels rolled by N // 2): a frame change that lowers both alike is
    audio-agnostic. Returns (metrics, pasted outputs ``[F, R, R, 3]`` per window)."""
    from distill.benchmark import evaluate

    row = {id(w): z[i : i + 1] for i, w in enumerate(windows)}
    with torch.no_grad():
        frames = vae.decode(z)
        scores = {"reward": float(reward(frames).mean()), "sync_loss": float(probe(frames, mel).mean()),
                  "sync_loss_offsync": float(probe(frames, mel.roll(len(windows) // 2, 0)).mean())}  # fmt: skip
    results, outputs, _ = evaluate({"z": lambda w: row[id(w)]}, windows, vae, syncnet=syncnet, sync_window=sync_window)
    results["z"].pop("mse_to_teacher20")  # no reference row here
    return scores | results["z"], outputs["z"]


def descend(z0: torch.Tensor, windows, mel, vae, reward, probe, syncnet, sync_window, args):
    """Adam on ``z`` against ``reward`` (frames -> [N]); the metrics every ``args.every`` steps; the outputs at 0,
    steps/2, steps. Returns (trace, {step: outputs})."""
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=args.lr)
    trace, shots = [], {}
    for k in range(args.steps + 1):
        if k % args.every == 0 or k == args.steps:
            row, outs = measure(z.detach(), windows, mel, vae, reward, probe, syncnet, sync_window)
            row["step"] = k
            row["latent_change"] = float((z.detach() - z0).square().mean().sqrt())
            trace.append(row)
            print(f"  step {k:3d}: " + "  ".join(f"{m} {row[m]:.4f}" for m in
                  ("reward", "sync_loss", "sync_loss_offsync", "sync_score", "lse_c", "sharpness",
                   "mse_to_ground_truth")), flush=True)  # fmt: skip
            if k in (0, args.steps // 2 // args.every * args.every, args.steps):
                shots[k] = outs
        if k == args.steps:
            break
        opt.zero_grad()
        reward(vae.decode(z)).mean().backward()
        opt.step()
    return trace, shots


def picture(shots: dict[int, list[torch.Tensor]], truth: list[torch.Tensor], path: Path) -> None:
    from scripts.bench_losses import picture as sheet

    sheet({f"step {k}": v for k, v in shots.items()}, truth, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--syncnets", nargs="+", default=["assets/syncnet_toy_supervise/syncnet.yaml"],
                   help="supervising SyncNet presets / YAMLs (files.syncnet = weights); one probe each")
    p.add_argument("--syncnet", default="assets/syncnet_toy_measure/syncnet.yaml", help="held-out (measuring) net")
    p.add_argument("--student", default="assets/toy_student")
    p.add_argument("--starts", nargs="*", default=["student", "truth"], choices=["student", "truth"])
    p.add_argument("--students", nargs="*", default=[], metavar="NAME=DIR",
                   help="more starts: the 1-step x0 of these exported students (with --steps 0: measure them only)")
    p.add_argument("--forms", nargs="+", default=["absolute"], choices=FORMS,
                   help="the reward's forms to descend: absolute (the recipe's sync term), relative (real_frames), "
                   "contrastive (negatives), candidates (mel_negatives)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.02, help="Adam step on the latents (their std is ~1)")
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.6)
    p.add_argument("--heldout-seed", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/probe_sync_reward"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.steps < 0 or args.every < 1:
        raise SystemExit("--steps must be >= 0 and --every >= 1")
    students = dict(spec.split("=", 1) for spec in args.students if "=" in spec)
    if len(students) != len(args.students):
        raise SystemExit(f"--students takes NAME=DIR, got {args.students}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    import student as student_pkg
    from distill.benchmark import student_method
    from losses.sync import SyncLoss
    from scripts.bench_distill import measuring_syncnet

    t0 = time.perf_counter()
    windows, mel, negatives, vae = load_windows(args)
    syncnet, sync_window = measuring_syncnet(args.syncnet)
    starts = {}
    with torch.no_grad():
        from teacher.loading import freeze

        exported = ({"student": args.student} if "student" in args.starts else {}) | students
        for name, path in exported.items():
            run = student_method(freeze(student_pkg.load(path)), 1)
            starts[name] = torch.cat([run(w) for w in windows])
        if "truth" in args.starts:
            g = torch.Generator().manual_seed(0)
            starts["truth"] = torch.cat([vae.encode(w.frames, generator=g) for w in windows])
    truth = [((w.frames[0].permute(1, 2, 3, 0) + 1) / 2) for w in windows]
    result = {"_setup": {"windows": len(windows), "frames_per_window": int(windows[0].frames.shape[2]),
                         "steps": args.steps, "lr": args.lr, "every": args.every, "measuring_syncnet": args.syncnet,
                         "student": args.student, "machine": platform.processor() or platform.machine(),
                         "threads": torch.get_num_threads()}}  # fmt: skip
    for spec in args.syncnets:
        net, win = measuring_syncnet(spec)
        probe = SyncLoss(net, resolution=win.resolution, lower_half=win.lower_half, gradient_checkpointing=False)
        name = Path(spec).parent.name or Path(spec).stem
        real = torch.cat([w.frames for w in windows])
        for start, z0 in starts.items():
            for form in args.forms:
                key = f"{name}/{start}/{form}"
                print(f"{key}:", flush=True)
                reward = reward_form(net, win, form, mel, real, negatives)
                trace, shots = descend(z0, windows, mel, vae, reward, probe, syncnet, sync_window, args)
                result[key] = trace
                picture(shots, truth, args.out / f"probe_{key.replace('/', '_')}.png")
    result["_setup"]["seconds"] = time.perf_counter() - t0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
