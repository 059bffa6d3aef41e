"""Proof on the CPU: distill a student from the toy teacher, then compare it with the teacher.

    python -m scripts.bench_distill [--distill-steps 1000] [--student-dir DIR] [--clips 4] [--out runs/bench_distill]

1. Distill (``turbosync distill --config distill/toy``) and export, unless ``--student-dir`` is given.
2. Held-out synthetic clips (seeds disjoint from the toy teacher's training clips) -> aligned
   128 px windows (reference = the same frames, one repeated noise frame, as LatentSync infers).
3. teacher_ddim_{1,2,4} (trailing), teacher_ddim_20 (official leading) and student_{1,2,4} from
   the same noise: mse_to_teacher20, mse_to_ground_truth, sync_score, sharpness,
   unet_ms_per_frame, ms_per_frame (see ``distill.benchmark``). student_N re-noises with fresh
   per-frame noise (LCMScheduler's rule; ``--renoise``); student_N@MODE rows repeat N = 2, 4 with
   the other re-noising modes of ``student.sampler.sample_lcm``. teacher_ddim_50 (trailing, the
   LCD solver's own 50-step grid) is the trajectory the student distils: its distance to
   teacher_ddim_20 is the floor a perfectly distilled student would reach in one step.
   oracle_lcm_N (``--oracle-steps``) runs the student's sampler with that perfect consistency
   function (the teacher's ODE down the solver grid) and the same re-noising: the floor of any
   student sampled that way at N steps (oracle_lcm_N@MODE for the ``--oracle-renoise`` modes).
   teacher_ddim_20@other_noise starts the official sampler from another noise: how far two
   samples of the same teacher lie apart. teacher_ddim_20@shuffled_audio drives the teacher with
   another clip's audio (``--shuffled-audio``): the control every sync metric must rank below.
   With ``--syncnet`` (a StableSyncNet preset/YAML with its weights; default: the held-out toy
   SyncNet, assets/syncnet_toy_measure, never used in training) every row, the ground truth too,
   gets lse_c, lse_d and sync_offset_abs: a clip's windows joined back, +-15 frames, as
   ``turbosync eval sync`` (``distill.benchmark.lse_metrics``).
4. Writes OUT/bench.json and OUT/bench.png (charts and sample strips side by side).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch


def distill_student(steps: int, run_dir: Path, extra: list[str]) -> Path:
    from scripts.cli import main as cli

    overrides = [f"run.max_steps={steps}", f"run.output_dir={run_dir}", "run.sample_every=100000", *extra]
    if cli(["distill", "--config", "distill/toy", *overrides]) != 0:
        raise SystemExit("distillation failed")
    out = run_dir / "export"
    if cli(["export", str(run_dir), str(out)]) != 0:
        raise SystemExit("export failed")
    return out


def heldout(work: Path, clips: int, seconds: float, seed: int, num_frames: int):
    from distill.data import ClipDataset, PrepareConfig, prepare
    from distill.synthworld import synth_dataset

    report = work / "report.json"
    done = report.is_file() and json.loads(report.read_text()).get("prepared") == clips
    if not done:  # a prepared set is reused as it is (also when copied elsewhere: prepare keys on the path)
        if not (work / "src" / f"clip_{clips - 1:05d}.mp4").is_file():
            synth_dataset(work / "src", clips=clips, resolution=256, seconds=seconds, seed=seed)
        prepare(work / "src", work, PrepareConfig(resolution=128, min_frames=num_frames))
    return ClipDataset(work, num_frames=num_frames, reference="same", stride=num_frames)


def measuring_syncnet(spec: str):
    """(network, SyncWindow) of a StableSyncNet preset/YAML whose files.syncnet holds the weights; (None, None)
    for 'none'."""
    if spec in ("none", ""):
        return None, None
    import configs
    from distill.syncnet_data import SyncWindow
    from losses.syncnet import load_syncnet

    cfg = configs.load(spec)
    if not cfg.files.get("syncnet"):
        raise SystemExit(f"{spec}: files.syncnet is null; the LSE columns need trained SyncNet weights")
    return load_syncnet(cfg.files.syncnet, cfg.model).requires_grad_(False), SyncWindow.from_mapping(cfg.data)


def plot(results: dict, outputs: dict, truth: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if not n.startswith("_")]
    metrics = ["mse_to_teacher20", "mse_to_ground_truth", "sync_score", "sharpness", "unet_ms_per_frame"]
    fig = plt.figure(figsize=(22, 9))
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(2, len(metrics), i + 1)
        vals = [results[n].get(m, np.nan) for n in names]  # oracle rows have no timing
        colors = [{"t": "tab:blue", "s": "tab:orange", "o": "tab:gray"}[n[0]] for n in names]
        ax.bar(range(len(names)), vals, color=colors)
        short = [n.replace("teacher_ddim_", "T").replace("student_", "S").replace("oracle_lcm_", "O") for n in names]
        ax.set_xticks(range(len(names)), short,
                      rotation=90 if len(names) > 8 else 0)
        ax.set_title(m)
        if m == "unet_ms_per_frame":
            ax.set_yscale("log")
    # sample strip: the mouth half of frame 0..3 of the first window, per method
    rows = [("ground truth", truth[0])] + [(n, outputs[n][0]) for n in names if "@" not in n]
    strip = np.concatenate([np.concatenate(list(f[:4, 64:].numpy()), axis=1) for _, f in rows], axis=0)
    ax = fig.add_subplot(2, 1, 2)
    ax.imshow(np.clip(strip, 0, 1))
    ax.set_yticks([64 * i + 32 for i in range(len(rows))], [r[0] for r in rows])
    ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench_distill"))
    p.add_argument("--student-dir", type=Path, default=None)
    p.add_argument("--distill-steps", type=int, default=1000)
    p.add_argument("--distill-args", nargs="*", default=["data.num_workers=0"],
                   help="key=value overrides of configs/distill/toy for the distillation")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.2)
    p.add_argument("--heldout-seed", type=int, default=1000)
    p.add_argument("--windows", type=int, default=None, help="limit the number of held-out windows")
    p.add_argument("--renoise", default="per_frame",
                   help="re-noising of student_2/4 (sample_lcm): initial, ddim, per_frame, shared, mixed")
    p.add_argument("--compare-renoise", nargs="*", default=["shared", "initial", "ddim"],
                   help="also report student_N@MODE for these re-noising modes (N = 2, 4)")
    p.add_argument("--oracle-steps", nargs="*", type=int, default=[2, 4],
                   help="report oracle_lcm_N for these N (none: skip; N = 4 costs ~6x teacher_ddim_20)")
    p.add_argument("--oracle-renoise", nargs="*", default=["ddim"],
                   help="also report oracle_lcm_N@MODE for these re-noising modes")
    p.add_argument("--teacher-steps", nargs="+", type=int, default=[1, 2, 4, 20, 50],
                   help="teacher_ddim_N rows (20, the reference, is always included)")
    p.add_argument("--other-noise", action=argparse.BooleanOptionalAction, default=True,
                   help="the teacher_ddim_20@other_noise row")
    p.add_argument("--syncnet", default="assets/syncnet_toy_measure/syncnet.yaml",
                   help="SyncNet preset/YAML (with files.syncnet) for lse_c / lse_d; 'none' skips them")
    p.add_argument("--shuffled-audio", action=argparse.BooleanOptionalAction, default=True,
                   help="the teacher_ddim_20@shuffled_audio control row")
    p.add_argument("--noise-draws", type=int, default=1,
                   help="evaluate with this many initial-noise draws per window; metrics are their mean "
                   "(per-draw values and std in the JSON)")
    args = p.parse_args(argv)

    import configs
    import student as student_pkg
    from distill.benchmark import (
        average_draws,
        evaluate,
        make_windows,
        oracle_method,
        shuffle_audio,
        student_method,
        teacher_method,
        time_method,
    )
    from teacher.loading import freeze

    student_dir = args.student_dir or distill_student(args.distill_steps, args.out / "run", args.distill_args)
    cfg = configs.load("teacher/toy")
    unet = freeze(configs.instantiate(cfg.unet))
    vae = freeze(configs.instantiate(cfg.vae))
    stu = freeze(student_pkg.load(student_dir))
    data = heldout(args.out / "heldout", args.clips, args.seconds, args.heldout_seed, int(cfg.data.num_frames))
    methods = {f"teacher_ddim_{n}": teacher_method(unet, n) for n in sorted({*args.teacher_steps, 20})}
    methods |= {f"student_{n}": student_method(stu, n, renoise=args.renoise) for n in (1, 2, 4)}
    extra = {f"student_{n}@{m}": student_method(stu, n, renoise=m)
             for m in args.compare_renoise if m != args.renoise for n in (2, 4)}  # fmt: skip
    methods |= extra
    if args.other_noise:
        methods["teacher_ddim_20@other_noise"] = teacher_method(unet, 20, noise_seed=12345)
    if args.shuffled_audio:
        methods["teacher_ddim_20@shuffled_audio"] = teacher_method(unet, 20, shuffled_audio=True)
    syncnet, sync_window = measuring_syncnet(args.syncnet)
    for mode in dict.fromkeys([args.renoise, *args.oracle_renoise]):
        suffix = "" if mode == args.renoise else f"@{mode}"
        methods |= {f"oracle_lcm_{n}{suffix}": oracle_method(unet, n, renoise=mode) for n in args.oracle_steps}
    draws = []
    for k in range(args.noise_draws):  # draw 0: the windows' own noise (as before); then other seeds
        windows = shuffle_audio(make_windows(data, vae, seed=0, limit=args.windows,
                                             noise_seed=None if k == 0 else 1000 + k))
        res, outs, truth = evaluate(methods, windows, vae, syncnet=syncnet, sync_window=sync_window)
        draws.append(res)
        if k == 0:
            outputs = outs  # the sample strips show draw 0
        print(f"noise draw {k + 1}/{args.noise_draws} done", flush=True)
    results = average_draws(draws)
    windows = shuffle_audio(make_windows(data, vae, seed=0, limit=args.windows))
    for name, run in methods.items():
        if name.startswith("oracle") or "@" in name and name.startswith("teacher"):
            continue  # not servable methods / same cost as their base row
        unet_ms, total_ms = time_method(run, vae, windows[0])
        results[name].update(unet_ms_per_frame=unet_ms, ms_per_frame=total_ms)
    t20, s1 = results["teacher_ddim_20"], results["student_1"]
    results["_ratios"] = {"teacher20_over_student1_unet_ms": t20["unet_ms_per_frame"] / s1["unet_ms_per_frame"],
                          "teacher20_over_student1_ms": t20["ms_per_frame"] / s1["ms_per_frame"]}  # fmt: skip
    results["_setup"] = {
        "student_dir": str(student_dir),
        "student_renoise": args.renoise,
        "heldout_windows": len(windows),
        "noise_draws": args.noise_draws,
        "frames_per_window": int(cfg.data.num_frames),
        "syncnet": None if syncnet is None else args.syncnet,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": "python -m scripts.bench_distill "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=1))
    plot(results, outputs, truth, args.out / "bench.png")
    keys = ["mse_to_teacher20", "mse_to_ground_truth", "sync_score", "sharpness", "unet_ms_per_frame", "ms_per_frame"]
    keys += ["lse_c", "lse_d"] if syncnet is not None else []
    print(f"{'method':28s}" + "".join(f"{k:>21s}" for k in keys))
    for name in methods:
        print(f"{name:28s}" + "".join(f"{results[name].get(k, float('nan')):21.4f}" for k in keys))
    print(json.dumps({k: v for k, v in results.items() if k.startswith("_")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
