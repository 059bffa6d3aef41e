"""Issue 13's measured arms: what the sync reward, the lip PatchGAN, LPIPS and TREPA do to a 1-step toy student.

    python -m scripts.bench_losses --steps 60 --seeds 0 1 --draws 3 --jobs 2 --out runs/bench_losses \
        --json docs/bench_losses.json
    python -m scripts.bench_losses --cost-only --out runs/bench_losses_cost      # training cost per term only

1. Cost: one process builds the ``distill/losses_all`` run (``distill.recipe.setup``: teacher, student from
   ``assets/toy_student``, data, every loss) and times one training step's forward + backward (the
   discriminator's backward included, no optimizer step, final weights) on the same batch and the same draws
   for: plain (no added term), plain + each added term alone, all of them, and plain + the latent-space
   discriminator (``LATENT_ADV``, in no arm); ``--cost-repeats`` rounds interleaved, the least CPU time of each
   kept (the dev CPU is shared: CPU time of this one-thread process, wall time beside it), cost of a term = its
   row minus plain.
2. Train: every arm (``configs/distill/losses_{plain,sync,sync_adv,all}.yaml``: the same continuation of the
   committed toy student, the same data, steps and optimizer; only the auxiliary terms differ) from each
   ``--seeds`` seed (``run.seed``: the data order, the step's draws, the discriminator's init), ``--jobs`` runs
   at a time, each exported. A run whose export exists is reused (the bench resumes).
3. Evaluate with ``distill.benchmark`` (as ``scripts/bench_distill``): held-out synthetic clips, each student at
   1 step and ``teacher_ddim_20`` (official leading spacing, guided) from the same noise, for ``--draws`` noise
   draws (draw 0 the windows' own noise, then seeds 1001, ...): sync_score (the world's own ``measure_mouth``
   against the true mouth opening), lse_c / lse_d (the held-out toy SyncNet, ``--syncnet``), sharpness,
   detail_error (high-frequency error to the real frames: tells detail from noise),
   mse_to_ground_truth, and ``boundary``: ``teacher.conditioning.boundary_visibility`` (the step in 8-bit levels
   across the mask's edge, width ``--boundary-width`` px) of the composited 128 px crops the other metrics score
   (the crop-space form of ``scripts/bench_boundary``'s measure, which runs the whole engine on full frames).
4. Rows ``plain``, ``sync``, ``sync_adv``, ``all``, ``teacher_ddim_20``: per metric the mean over seeds x draws,
   ``std`` over those values, ``seed_spread`` (std over the seeds of each seed's draw mean; 0 for the teacher,
   which has no training seed), ``draw_std`` (mean over seeds of the std over draws) and the values; then the
   issue's comparisons (``_verdict``: sync_adv vs plain; the reward students vs the teacher, as means and paired
   on the same noise draws, ``vs_teacher_ddim_20_paired``) and the cost (``_cost``). Writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ARMS = ("plain", "sync", "sync_adv", "all")
TEACHER = "teacher_ddim_20"
METRICS = ("sync_score", "lse_c", "lse_d", "sharpness", "detail_error", "mse_to_ground_truth", "boundary")
TERMS = ("sync", "adv", "lpips", "trepa")  # the added terms, in the order the arms add them
# the latent-space discriminator (heads on the frozen teacher's down-block 1, 2 and mid features): cost only
LATENT_ADV = {"loss": {"_target_": "losses.adversarial.LatentAdversarial", "channels": [64, 64, 64], "hidden": 64},
              "inputs": {"x0": "x0"}, "real": "latents", "features": {"blocks": [1, 2], "mid": True}}  # fmt: skip


# --------------------------------------------------------------------------- 1. cost
def _time_step(run, batch, losses, cfg: dict, generator_seed: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one step's forward + backward (+ the discriminator's backward) with
    ``losses``. CPU time of this process (one torch thread) is the cost measure: on a shared machine the wall time
    also counts the other jobs' turns."""
    from distill.step import distill_step

    t0, c0 = time.perf_counter(), time.process_time()
    out = distill_step(run.student, run.target, run.teacher, batch, cfg, losses,
                       generator=torch.Generator().manual_seed(generator_seed), alphas_cumprod=run.acp,
                       decode=run.vae.decode, step=None)  # fmt: skip
    out["loss"].backward()
    if "disc_loss" in out:
        out["disc_loss"].backward()
    seconds = (time.process_time() - c0, time.perf_counter() - t0)
    run.student.zero_grad(set_to_none=True)
    for d in losses.discriminators.values():
        d.zero_grad(set_to_none=True)
    return seconds


def measure_cost(out: Path, repeats: int) -> dict:
    """Training cost per step of each added term on this machine (see the module docstring)."""
    from omegaconf import OmegaConf

    import configs
    from distill import recipe
    from distill.step import AuxTerm, StepLosses, build_losses

    cfg = configs.load("distill/losses_all", [f"run.output_dir={out / 'cost_run'}", "run.resume=null"])
    if (out / "cost_run").exists():
        import shutil

        shutil.rmtree(out / "cost_run")
    run = recipe.setup(cfg)
    batch = next(run.batches)
    full = run.losses
    variants = {"plain": StepLosses(full.consistency, {"recon": full.aux["recon"]})}
    for term in TERMS:
        variants[f"+{term}"] = StepLosses(full.consistency, {"recon": full.aux["recon"], term: full.aux[term]})
    variants["all"] = full
    latent = build_losses({"aux": {"adv_latent": LATENT_ADV}}, feature_unet=run.teacher).aux["adv_latent"]
    variants["+adv_latent"] = StepLosses(full.consistency, {"recon": full.aux["recon"], "adv_latent": latent})
    decode_only = AuxTerm.of(lambda x0_frames: 0.0 * x0_frames.flatten(1).mean(1))  # the shared decode's own cost
    variants["+decode"] = StepLosses(full.consistency, {"recon": full.aux["recon"], "decode": decode_only})
    dcfg = OmegaConf.to_container(run.cfg.distill, resolve=True)
    dcfg["weights"] |= {"adv_latent": 0.1, "decode": 1.0}
    _time_step(run, batch, full, dcfg, 0)  # warm-up (allocations, lazy inits)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, losses in variants.items():
            times[name].append(_time_step(run, batch, losses, dcfg, 0))
    best = {k: min(c for c, _ in v) for k, v in times.items()}
    if run.writer is not None:
        run.writer.close()
    return {
        "cpu_seconds_per_step": best,
        "term_cpu_seconds": {t: best[f"+{t}"] - best["plain"] for t in (*TERMS, "adv_latent", "decode")},
        "all_over_plain": best["all"] / best["plain"],
        "cpu_and_wall_seconds": times,
        "what": "CPU time (1 torch thread) of one step's forward + backward (batch 4 x 8 frames, 128 px; pixel terms "
        "on the 1 item at t = 999, one decode shared by them), the discriminator's backward included, no optimizer "
        "step, final weights; least of the repeats. Wall times beside it count the shared machine's other jobs",
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- 2. train
def _cli(args: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "a") as f:
        res = subprocess.run([sys.executable, "-m", "scripts.cli", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-12:])
        raise RuntimeError(f"turbosync {' '.join(args[:3])} failed (rc {res.returncode}); {log} ends:\n    {tail}")


def parse_arms(arms: list[str]) -> dict[str, tuple[str, list[str]]]:
    """``NAME`` (one of ``ARMS``) or ``NAME=ARM:key=value,key=value`` (an arm's preset with overrides, e.g.
    ``sync_w1=sync:distill.weights.sync=1.0``) -> {row name: (arm preset, overrides)}."""
    out = {}
    for spec in arms:
        name, _, rest = spec.partition("=")
        arm, _, keys = (rest or name).partition(":")
        if arm not in ARMS:
            raise SystemExit(f"--arms {spec}: the arm must be one of {', '.join(ARMS)}")
        out[name] = (arm, [k for k in keys.split(",") if k])
    return out


def train_arm(name: str, arm: tuple[str, list[str]], seed: int, steps: int, out: Path, extra: list[str]) -> Path:
    """Distill one arm from one seed to ``steps`` (resuming the run when it has a checkpoint) and export it; an
    export of the same step count is reused. Returns the export."""
    run_dir = out / f"{name}_s{seed}"
    export, marker = run_dir / "export", run_dir / "exported_steps.txt"
    if (export / "config.json").is_file() and marker.is_file() and int(marker.read_text()) == steps:
        return export
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _cli(["distill", "--config", f"distill/losses_{arm[0]}", f"run.output_dir={run_dir}", f"run.seed={seed}",
          f"run.max_steps={steps}", f"run.checkpoint_every={steps}", "run.resume=auto", *arm[1], *extra],
         run_dir / "train.log")  # fmt: skip
    if export.exists():
        import shutil

        shutil.rmtree(export)
    _cli(["export", str(run_dir), str(export)], run_dir / "train.log")
    marker.write_text(f"{steps}\n")
    seconds = run_dir / "train_seconds.txt"
    before = float(seconds.read_text()) if seconds.is_file() else 0.0
    seconds.write_text(f"{before + time.time() - t0:.1f}\n")
    print(f"trained {name} seed {seed} to step {steps}: {time.time() - t0:.0f} s", flush=True)
    return export


def train_order(arms: dict, seeds) -> list[tuple[str, int]]:
    """The runs' (row, seed) keys in the order they start: the costliest arm first, so the lanes end together."""
    return [(a, s) for a in reversed(list(arms)) for s in seeds]


def train_all(arms: dict, seeds, steps: int, out: Path, jobs: int, extra: list[str]) -> dict[tuple[str, int], Path]:
    keys = train_order(arms, seeds)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {key: pool.submit(train_arm, key[0], arms[key[0]], key[1], steps, out, extra) for key in keys}
        failed = {key: f.exception() for key, f in futures.items() if f.exception() is not None}
    if failed:  # every failed run with the end of its log, not only the first
        raise RuntimeError("\n".join(f"{name} seed {seed}: {err}" for (name, seed), err in failed.items()))
    return {key: f.result() for key, f in futures.items()}


def seconds_per_step(out: Path, keys, batch_frames: int = 32, skip: int = 3) -> dict[tuple[str, int], float]:
    """{run key: its median step time (s)} from its ``losses.jsonl`` (``frames_per_s`` of each logged step, the
    first ``skip`` steps left out): with the runs side by side it includes their contention; 0 without steps."""
    out_s = {}
    for name, seed in keys:
        rows = [json.loads(line) for line in (out / f"{name}_s{seed}" / "losses.jsonl").read_text().splitlines()]
        fps = [r["frames_per_s"] for r in rows[skip:] if r.get("frames_per_s")]
        out_s[(name, seed)] = batch_frames / float(np.median(fps)) if fps else 0.0
    return out_s


def makespan(durations: list[float], jobs: int) -> float:
    """Wall time of runs of ``durations`` (s), in that order, on a pool of ``jobs`` workers (each run starts on
    the first free worker, as ``train_all``'s ThreadPoolExecutor does)."""
    lanes = [0.0] * max(1, min(jobs, len(durations)))
    for d in durations:
        i = min(range(len(lanes)), key=lanes.__getitem__)
        lanes[i] += d
    return max(lanes)


def budget_steps(args, arms: dict) -> int:
    """``--train-seconds``: train every run to ``--pilot-steps`` (the pool of ``--jobs`` as the real training),
    time each run's steps, and return the step count that fits the rest of the budget (10% kept back; at most
    ``--steps``, a multiple of 10). One step of every run costs the pool's makespan of their step times (runs
    beyond ``--jobs`` wait for a free worker). The pilot's runs are the real runs: the rest resumes them."""
    t0 = time.time()
    train_all(arms, args.seeds, args.pilot_steps, args.out, args.jobs, args.train_args)
    pilot = time.time() - t0
    per_run = seconds_per_step(args.out, train_order(arms, args.seeds))
    per_step = makespan(list(per_run.values()), args.jobs)
    overhead = max(0.0, pilot - args.pilot_steps * per_step)  # process start, data, export: paid again
    left = args.train_seconds - pilot - overhead
    steps = min(args.steps, args.pilot_steps + int(0.9 * left / max(per_step, 1e-6)) // 10 * 10)
    steps = max(steps, args.pilot_steps)
    print(f"pilot: {args.pilot_steps} steps in {pilot:.0f} s; one step of every run {per_step:.2f} s on {args.jobs} "
          f"workers, overhead {overhead:.0f} s -> {steps} steps", flush=True)  # fmt: skip
    return steps


# --------------------------------------------------------------------------- 3. evaluate
def boundary(outputs: list[torch.Tensor], windows, width: float) -> float:
    """``boundary_visibility`` of composited crops ``[F, R, R, 3]`` in [0, 1] across the windows' mask edge."""
    from teacher.conditioning import boundary_visibility

    frames, regions = [], []
    for out, win in zip(outputs, windows):
        region = (win.mask[0, 0] < 0.5).cpu().numpy()  # [F, R, R] generated region (windows may be on a GPU)
        frames += [f.numpy() * 255.0 for f in out]
        regions += list(region)
    return boundary_visibility(frames, regions, width)


def evaluate_draws(students: dict[str, torch.nn.Module], args) -> tuple[list[dict], dict]:
    """[{method: metrics}] per noise draw, and the setup facts. The windows are encoded on the CPU (the same
    encodings and noise everywhere), then every model runs on ``args.device``."""
    import configs
    from distill.benchmark import evaluate, make_windows, student_method, teacher_method
    from scripts.bench_distill import heldout, measuring_syncnet
    from teacher.loading import freeze

    cfg = configs.load("teacher/toy")
    unet, vae = freeze(configs.instantiate(cfg.unet)), freeze(configs.instantiate(cfg.vae))
    dev = torch.device(args.device)
    data = heldout(args.out / "heldout", args.clips, args.seconds, args.heldout_seed, int(cfg.data.num_frames))
    syncnet, sync_window = measuring_syncnet(args.syncnet)
    if syncnet is not None:
        syncnet.to(dev)
    methods = {TEACHER: teacher_method(unet.to(dev), 20)}
    methods |= {name: student_method(stu.to(dev), 1) for name, stu in students.items()}
    draws = []
    for k in range(args.draws):
        windows = make_windows(data, vae.cpu(), seed=0, noise_seed=None if k == 0 else 1000 + k)
        windows = [w.to(dev) for w in windows]
        res, outputs, truth = evaluate(methods, windows, vae.to(dev), syncnet=syncnet, sync_window=sync_window)
        for name in methods:
            res[name]["boundary"] = boundary(outputs[name], windows, args.boundary_width)
        res["_ground_truth"]["boundary"] = boundary(truth, windows, args.boundary_width)
        if k == 0:
            picture(outputs, truth, args.out / "bench_losses.png")
        draws.append(res)
        print(f"noise draw {k + 1}/{args.draws} done", flush=True)
    return draws, {"heldout_windows": len(windows), "frames_per_window": int(cfg.data.num_frames)}


def picture(outputs: dict[str, list[torch.Tensor]], truth: list[torch.Tensor], path: Path, windows=(0, 5, 10),
            frames: int = 4) -> None:
    """A strip per row (the ground truth, then every method): the lower half of the first ``frames`` frames of
    each of ``windows``, side by side; outputs ``[F, R, R, 3]`` in [0, 1] as ``evaluate`` keeps them."""
    from PIL import Image, ImageDraw

    rows = [("ground truth", truth), *outputs.items()]
    r = truth[0].shape[1]
    label = 110
    strips = []
    for name, outs in rows:
        tiles = [outs[w][f, r // 2:].numpy() for w in windows if w < len(outs) for f in range(frames)]
        strip = (np.concatenate(tiles, axis=1).clip(0, 1) * 255).round().astype(np.uint8)
        img = Image.new("RGB", (label + strip.shape[1], strip.shape[0]), "white")
        img.paste(Image.fromarray(strip), (label, 0))
        ImageDraw.Draw(img).text((4, strip.shape[0] // 2 - 6), name, fill="black")
        strips.append(img)
    sheet = Image.new("RGB", (strips[0].width, sum(s.height for s in strips)), "white")
    for i, s in enumerate(strips):
        sheet.paste(s, (0, i * s.height))
    sheet.save(path)


# --------------------------------------------------------------------------- 4. summarise
def summarize(draws: list[dict], seeds: list[int], arms=ARMS) -> dict:
    """Rows ``arms`` + ``teacher_ddim_20``: mean / std / seed_spread / draw_std / values per metric."""
    rows = {}
    for row in (*arms, TEACHER):
        names = [TEACHER] if row == TEACHER else [f"{row}_s{s}" for s in seeds]
        if any(n not in draws[0] for n in names):
            continue
        rows[row] = {}
        for m in (m for m in METRICS if m in draws[0][names[0]]):  # a metric an older evaluation lacks is left out
            vals = np.array([[d[n][m] for d in draws] for n in names], dtype=np.float64)  # [seeds, draws]
            rows[row][m] = {"mean": float(vals.mean()), "std": float(vals.std()),
                            "seed_spread": float(vals.mean(1).std()), "draw_std": float(vals.std(1).mean()),
                            "values": vals.tolist()}  # fmt: skip
    return rows


def verdict(rows: dict) -> dict:
    """The issue's comparisons: sync_adv vs plain (sync_score, sharpness toward the teacher, mse +5%), and
    the sync-reward student's sync_score vs the 20-step teacher's; spreads are the seed-to-seed ones."""
    out = {}
    if {"plain", "sync_adv", TEACHER} <= rows.keys():
        p, a, t = rows["plain"], rows["sync_adv"], rows[TEACHER]
        d_sync = a["sync_score"]["mean"] - p["sync_score"]["mean"]
        spread_sync = max(p["sync_score"]["seed_spread"], a["sync_score"]["seed_spread"])
        gap_p = abs(p["sharpness"]["mean"] - t["sharpness"]["mean"])
        gap_a = abs(a["sharpness"]["mean"] - t["sharpness"]["mean"])
        spread_sharp = max(p["sharpness"]["seed_spread"], a["sharpness"]["seed_spread"])
        mse_change = a["mse_to_ground_truth"]["mean"] / p["mse_to_ground_truth"]["mean"] - 1
        out["sync_adv_vs_plain"] = {
            "sync_score_gain": d_sync, "sync_score_seed_spread": spread_sync, "sync_met": d_sync > spread_sync,
            "sharpness_gap_to_teacher": {"plain": gap_p, "sync_adv": gap_a}, "sharpness_seed_spread": spread_sharp,
            "sharpness_met": gap_p - gap_a > spread_sharp,
            # no arm can close more than plain's own gap: below the spread the claim cannot be met by any arm
            "sharpness_claim_reachable": gap_p > spread_sharp,
            "sharpness_gap_to_ground_truth": {"plain": abs(1 - p["sharpness"]["mean"]),
                                              "sync_adv": abs(1 - a["sharpness"]["mean"])},
            # the premise (distillation blurs the mouth below the teacher's sharpness) holds only when
            # plain is the blurrier one; when it is sharper, "closer to the teacher" asks for a blurrier student
            "plain_blurrier_than_teacher": p["sharpness"]["mean"] < t["sharpness"]["mean"],
            **({"detail_error": {k: r["detail_error"]["mean"] for k, r in (("plain", p), ("sync_adv", a),
                                                                             (TEACHER, t))}}
               if "detail_error" in p else {}),  # fmt: skip
            "mse_to_ground_truth_change": mse_change,
            "mse_met": mse_change <= 0.05,
        }  # fmt: skip
    if {"sync", TEACHER} <= rows.keys():
        s, t = rows["sync"]["sync_score"], rows[TEACHER]["sync_score"]
        out["sync_vs_teacher_ddim_20"] = {
            "sync": s["mean"], "sync_seed_spread": s["seed_spread"], "sync_std": s["std"],
            "teacher": t["mean"], "teacher_draw_std": t["std"], "difference": s["mean"] - t["mean"],
            "passes_teacher": s["mean"] - s["std"] > t["mean"] + t["std"],
        }  # fmt: skip
    if TEACHER in rows:
        out["vs_teacher_ddim_20_paired"] = {
            row: paired_difference(r["sync_score"]["values"], rows[TEACHER]["sync_score"]["values"][0])
            for row, r in rows.items() if row not in ("plain", TEACHER)
        }  # fmt: skip
    return out


def paired_difference(student: list[list[float]], teacher: list[float]) -> dict:
    """A student's score minus the teacher's on the same noise draw (same windows, same noise): ``student``
    ``[seeds][draws]``, ``teacher`` ``[draws]``. The draws move both alike (one draw's noise is hard for every
    model), so the paired difference is steadier than the two means apart. Returns the mean difference, each
    seed's, ``seed_spread`` (std over the seeds' means: the issue's yardstick), ``paired_std`` (over seeds x draws)
    and ``passes``: the mean difference above zero by more than the seed spread."""
    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    if s.ndim != 2 or t.ndim != 1 or s.shape[1] != t.shape[0]:
        raise ValueError(f"student scores {np.shape(student)} do not pair with the teacher's {len(teacher)} draws")
    d = s - t[None]
    per_seed = d.mean(1)
    return {"difference": float(d.mean()), "per_seed": per_seed.tolist(), "seed_spread": float(per_seed.std()),
            "paired_std": float(d.std()), "seeds_above": int((per_seed > 0).sum()),
            "passes": bool(d.mean() > per_seed.std())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench_losses"))
    p.add_argument("--json", type=Path, default=None, help="also write the report here (docs/bench_losses.json)")
    p.add_argument("--steps", type=int, default=60, help="training steps of every arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=list(ARMS),
                   help="rows: an arm's name, or NAME=ARM:key=value,... (that arm's preset with overrides)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    p.add_argument("--train-seconds", type=float, default=0.0,
                   help="fit the steps to this training budget (a pilot of --pilot-steps first; --steps the most)")
    p.add_argument("--pilot-steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the evaluation runs (training: the runs' own accelerate device)")
    p.add_argument("--train-args", nargs="*", default=[], help="extra key=value overrides of every arm")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.6)
    p.add_argument("--heldout-seed", type=int, default=1000)
    p.add_argument("--syncnet", default="assets/syncnet_toy_measure/syncnet.yaml")
    p.add_argument("--boundary-width", type=float, default=4.0)
    p.add_argument("--cost-repeats", type=int, default=3)
    p.add_argument("--no-cost", action="store_true", help="do not measure the cost (OUT/cost.json is still reported)")
    p.add_argument("--cost-only", action="store_true")
    args = p.parse_args(argv)
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    cost_file = args.out / "cost.json"
    if not args.no_cost and not cost_file.is_file():
        cost_file.write_text(json.dumps(measure_cost(args.out, args.cost_repeats), indent=1))
    if args.cost_only:
        print(json.dumps(json.loads(cost_file.read_text())["cpu_seconds_per_step"], indent=1))
        return 0

    import student as student_pkg
    from teacher.loading import freeze

    arms = parse_arms(args.arms)
    if args.train_seconds:
        args.steps = budget_steps(args, arms)
    exports = train_all(arms, args.seeds, args.steps, args.out, args.jobs, args.train_args)
    students = {f"{a}_s{s}": freeze(student_pkg.load(path)) for (a, s), path in exports.items()}
    draws, setup = evaluate_draws(students, args)
    report |= summarize(draws, args.seeds, tuple(arms))
    if cost_file.is_file():  # read at the end: a --cost-only run beside the training may have written it
        report["_cost"] = json.loads(cost_file.read_text())
    report["_verdict"] = verdict(report)
    report["_ground_truth"] = {m: float(np.mean([d["_ground_truth"][m] for d in draws]))
                               for m in draws[0]["_ground_truth"]}  # fmt: skip
    report["_per_draw"] = draws
    train_s = {k: float((args.out / f"{a}_s{s}" / "train_seconds.txt").read_text())
               for (a, s) in exports for k in [f"{a}_s{s}"] if (args.out / f"{a}_s{s}" / "train_seconds.txt").is_file()}
    report["_setup"] = {
        **setup, "steps": args.steps, "seeds": args.seeds, "draws": args.draws, "clips": args.clips,
        "seconds": args.seconds, "student_steps": 1, "syncnet": args.syncnet, "boundary_width_px": args.boundary_width,
        "train_seconds": train_s, "bench_seconds": time.time() - t0,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "command": "python -m scripts.bench_losses " + " ".join(argv if argv is not None else sys.argv[1:]),
    }  # fmt: skip
    text = json.dumps(report, indent=1)
    (args.out / "bench_losses.json").write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(f"{'row':18s}" + "".join(f"{m:>24s}" for m in METRICS))
    for row in (*arms, TEACHER):
        if row in report:
            cells = [f"{report[row][m]['mean']:.4f} ({report[row][m]['seed_spread']:.4f})" for m in METRICS]
            print(f"{row:18s}" + "".join(f"{c:>24s}" for c in cells))
    print(json.dumps(report["_verdict"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
