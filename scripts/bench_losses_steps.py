"""How the loss arms move with training steps: ``scripts.bench_losses`` reports at several step counts, side by side.

    python -m scripts.bench_losses_steps 120=docs/bench_losses.json 240=docs/bench_losses_240steps_newdisc.json \
        360=docs/bench_losses_360steps.json --json docs/bench_losses_steps.json --png docs/bench_losses_steps.png

Each ``STEPS=REPORT`` is one ``bench_losses`` report (its arms continued from the same runs, so the step counts
form one training curve per arm and seed; the reports must share the held-out windows, the draws and the teacher,
which is checked: the teacher's per-draw scores must agree). Per arm and step count: every metric's mean, seed
spread and per-seed means, and the paired difference to ``teacher_ddim_20`` on the same draws
(``bench_losses.paired_difference``). Writes ``--json``; ``--png`` plots sync_score (per-seed lines, the mean, the
teacher's mean and draw std as a band) and sharpness (teacher and ground truth as lines) against the steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from scripts.bench_losses import TEACHER, paired_difference

CURVE_METRICS = ("sync_score", "lse_c", "sharpness", "detail_error", "mse_to_ground_truth", "boundary")


def arm_rows(report: dict) -> list[str]:
    """The student rows of a ``bench_losses`` report (every row but the teacher and the ``_`` entries)."""
    return [a for a in report if not a.startswith("_") and a != TEACHER]


def parse_reports(specs: list[str]) -> dict[int, dict]:
    """``["120=a.json", ...]`` -> {120: report, ...} in step order. Raises SystemExit on a malformed entry, a
    missing file, a file that is not a ``bench_losses`` report, a repeated step count, reports whose teacher rows
    differ (not the same held-out set or draws) or whose arms have different numbers of seeds."""
    reports: dict[int, dict] = {}
    for spec in specs:
        steps, sep, path = spec.partition("=")
        if not sep or not steps.isdigit():
            raise SystemExit(f"{spec!r}: expected STEPS=REPORT.json")
        if int(steps) in reports:
            raise SystemExit(f"{spec!r}: step count {steps} given twice")
        if not Path(path).is_file():
            raise SystemExit(f"{spec!r}: no such report {path}")
        try:
            report = json.loads(Path(path).read_text())
            teacher = report[TEACHER]["sync_score"]["values"]
        except json.JSONDecodeError as err:
            raise SystemExit(f"{spec!r}: {path} is not JSON ({err})") from None
        except (KeyError, TypeError):
            raise SystemExit(f"{spec!r}: {path} is not a scripts.bench_losses report (no {TEACHER} row with "
                             "per-draw sync_score values)") from None  # fmt: skip
        if not (isinstance(teacher, list) and len(teacher) == 1):
            raise SystemExit(f"{spec!r}: {path}'s {TEACHER} row should hold one list of per-draw scores")
        reports[int(steps)] = report
    teachers = {s: r[TEACHER]["sync_score"]["values"] for s, r in reports.items()}
    first = next(iter(teachers.values()))
    for s, t in teachers.items():
        if np.shape(t) != np.shape(first):
            raise SystemExit(f"the report at {s} steps has {np.shape(t)[1]} noise draws, another {np.shape(first)[1]}")
        if not np.allclose(t, first, atol=1e-6):
            raise SystemExit(f"the report at {s} steps has another teacher ({t} vs {first}): not the same held-out set")
    seeds = {len(r[a]["sync_score"]["values"]) for r in reports.values() for a in arm_rows(r)}
    if len(seeds) > 1:
        raise SystemExit(f"the reports have different numbers of training seeds ({sorted(seeds)}): not one curve")
    return dict(sorted(reports.items()))


def curves(reports: dict[int, dict]) -> dict:
    """{"steps": [...], "arms": {arm: {metric: {"mean": [...], "seed_spread": [...], "per_seed": [[...] per step]},
    "vs_teacher_paired": [paired_difference per step]}}, teacher_ddim_20: {metric: mean, draw_std},
    "_ground_truth", "_sources"} for every arm present at every step count (means and spreads as the reports give
    them)."""
    steps = list(reports)
    arms = [a for a in arm_rows(next(iter(reports.values()))) if all(a in r for r in reports.values())]
    out: dict = {"steps": steps, "arms": {}}
    for arm in arms:
        row: dict = {}
        for m in CURVE_METRICS:
            if not all(m in r[arm] for r in reports.values()):
                continue
            cells = [r[arm][m] for r in reports.values()]
            row[m] = {"mean": [c["mean"] for c in cells], "seed_spread": [c["seed_spread"] for c in cells],
                      "per_seed": [np.mean(c["values"], axis=1).tolist() for c in cells]}  # values: [seeds, draws]
        row["vs_teacher_paired"] = [paired_difference(r[arm]["sync_score"]["values"],
                                                      r[TEACHER]["sync_score"]["values"][0])
                                    for r in reports.values()]  # fmt: skip
        out["arms"][arm] = row
    t = next(iter(reports.values()))[TEACHER]
    out[TEACHER] = {m: {"mean": t[m]["mean"], "draw_std": t[m]["draw_std"]} for m in CURVE_METRICS if m in t}
    gt = next(iter(reports.values())).get("_ground_truth", {})
    out["_ground_truth"] = {**gt, "sharpness": 1.0}  # sharpness is relative to the real frames
    out["_sources"] = {s: r.get("_setup", {}).get("command", "") for s, r in reports.items()}
    return out


def plot(c: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = c["steps"]
    for ax, m in zip(axes, ("sync_score", "sharpness"), strict=True):
        t = c[TEACHER][m]
        ax.axhspan(t["mean"] - t["draw_std"], t["mean"] + t["draw_std"], color="tab:blue", alpha=0.12)
        ax.axhline(t["mean"], color="tab:blue", lw=2, label=f"{TEACHER} (draw std band)")
        if m == "sharpness":
            ax.axhline(1.0, color="black", ls=":", label="ground truth")
        for i, (arm, row) in enumerate(c["arms"].items()):
            color = f"C{i + 1}"
            per_seed = np.asarray(row[m]["per_seed"])  # [steps, seeds]
            ax.plot(steps, per_seed, color=color, lw=0.8, alpha=0.5)
            ax.plot(steps, row[m]["mean"], color=color, lw=2.2, marker="o", label=f"{arm} (seeds thin)")
        ax.set_xlabel("training steps (continued from assets/toy_student)")
        ax.set_title(f"{m} at 1 step" + (" (world's measure_mouth)" if m == "sync_score" else " (vs real = 1)"))
        ax.set_xticks(steps)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="STEPS=REPORT.json, one per step count")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args(argv)
    c = curves(parse_reports(args.reports))
    if args.json:
        args.json.write_text(json.dumps(c, indent=1))
    if args.png:
        plot(c, args.png)
    print(f"{'arm':10s} {'steps':>6s} {'sync_score':>11s} {'seed_spread':>12s} {'vs teacher (paired)':>20s} "
          f"{'sharpness':>10s}")  # fmt: skip
    for arm, row in c["arms"].items():
        for k, s in enumerate(c["steps"]):
            d = row["vs_teacher_paired"][k]
            print(f"{arm:10s} {s:6d} {row['sync_score']['mean'][k]:11.3f} {row['sync_score']['seed_spread'][k]:12.3f}"
                  f" {d['difference']:+11.3f} ({d['seeds_above']}/{len(d['per_seed'])} up)"
                  f" {row['sharpness']['mean'][k]:10.3f}")  # fmt: skip
    t = c[TEACHER]
    print(f"{TEACHER}: sync_score {t['sync_score']['mean']:.3f} (draw std {t['sync_score']['draw_std']:.3f}), "
          f"sharpness {t['sharpness']['mean']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
