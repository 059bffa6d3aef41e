"""How visible the paste-back boundary is on the synthetic world: the teacher's (or student's) output vs the truth.

    python -m scripts.bench_boundary --seeds 0 1 2 --seconds 2 --out runs/bench_boundary.json
    python -m scripts.bench_boundary --student assets/toy_student --seeds 0 1 2 --out runs/bench_boundary_student.json

Each seed is one synthetic-world clip (256 px) lip-synced to its own speech, so the clip's frames are the ground
truth. The teacher runs as ``turbosync teacher-demo`` does (``teacher.pipeline.lipsync``; with ``--student`` the
engine runs as ``turbosync demo`` does). Every call of ``teacher.conditioning.paste_faces`` is recorded (source
frames, generated faces, alignments, pasted frames; ``composite`` too), so the same decoded faces are also composited
and pasted LatentSync's way (hard composite, whole-crop paste: ``FaceAligner.restore`` without a weight) and
hard-composited, region-only without a feather.
The measure is ``teacher.conditioning.boundary_visibility`` on every pasted frame, the regions being the U-Net's
mask warped into the frame (``paste_alpha(1 - mask) >= 0.5``), at a width equal to the paste's feather in frame
px (R / 20 crop px), and at 2 / 4 / 8 / 12 px. ``edit`` is the mean absolute change from the truth where the
paste weight is 1 (mostly the generated face itself). ``--png`` writes a picture (png or jpg by its name): the truth,
LatentSync's paste, ours (one row each, five frames of the first clip).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = (2, 4, 8, 12)


def record_pastes(run) -> list[tuple]:
    """Run ``run()`` with ``teacher.conditioning.paste_faces`` and ``composite`` recorded: [(frame, face, aligned,
    aligner, mask, pasted, hard_face)] per pasted frame, ``hard_face`` being LatentSync's hard composite of the same
    decoded face (found by the pasted face's bytes). The pipelines import both at call time, so the module
    attributes are the hooks."""
    import teacher.conditioning as tc

    calls, hard, original, original_composite = [], {}, tc.paste_faces, tc.composite

    def composite(decoded, pixels, mask, matched=False):
        out = original_composite(decoded, pixels, mask, matched)
        plain = original_composite(decoded, pixels, mask, False)
        for got, ref in zip(_frames_u8(out), _frames_u8(plain)):
            hard[got.tobytes()] = ref
        return out

    def recorder(frames, faces, aligned, aligner, mask=None):
        out = original(frames, faces, aligned, aligner, mask=mask)
        refs = [hard.get(np.ascontiguousarray(f).tobytes()) for f in faces]
        calls.extend(zip(frames, faces, aligned, [aligner] * len(out), [mask] * len(out), out, refs))
        return out

    tc.paste_faces, tc.composite = recorder, composite
    try:
        run()
    finally:
        tc.paste_faces, tc.composite = original, original_composite
    return calls


def _frames_u8(x) -> list[np.ndarray]:
    """[B, 3, F, R, R] in [-1, 1] -> uint8 [R, R, 3] per frame, as the pipelines make their faces."""
    from teacher.conditioning import pixels_to_uint8

    return [f for b in pixels_to_uint8(x.detach().cpu()).permute(0, 2, 3, 4, 1).numpy() for f in b]


def keep_mask(mask, resolution: int) -> np.ndarray:
    """The U-Net's pixel mask [R, R] (1 = keep) as numpy; None = the built-in one."""
    from teacher.face import lower_face_mask

    if mask is None:
        return lower_face_mask(resolution)
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    return m.reshape(m.shape[-2:]).astype(np.float32)


def pastes_of(calls: list[tuple]) -> dict[str, list[np.ndarray]]:
    """Every recorded frame pasted three ways, plus the truth and the regions and full-weight cores."""
    from teacher.conditioning import paste_alpha, paste_weight

    out = {k: [] for k in ("truth", "ours", "official", "region_hard", "regions", "cores")}
    for frame, face, aligned, aligner, mask, pasted, hard in calls:
        if hard is None:
            raise RuntimeError("a pasted face came from no recorded composite")
        m = keep_mask(mask, face.shape[0])
        out["truth"].append(frame)
        out["ours"].append(pasted)
        out["official"].append(aligner.restore(frame, hard, aligned))
        out["region_hard"].append(aligner.restore(frame, hard, aligned, weight=(m < 0.5).astype(np.float32)))
        out["regions"].append(paste_alpha(1 - m, aligned.matrix, frame.shape[:2]) >= 0.5)
        out["cores"].append(paste_alpha(paste_weight(m), aligned.matrix, frame.shape[:2]) >= 0.999)
    return out


def feather_px(calls: list[tuple]) -> float:
    """The paste's feather (R / 20 crop px) in frame px: median over the frames of R / 20 / scale."""
    scales = [np.sqrt(abs(np.linalg.det(a.matrix[:, :2]))) for _, _, a, *_ in calls]
    return float(np.median([c[1].shape[0] / 20 / s for c, s in zip(calls, scales)]))


def measure(p: dict, width: float) -> dict[str, float]:
    from teacher.conditioning import boundary_visibility

    return {k: boundary_visibility(p[k], p["regions"], width) for k in ("truth", "ours", "official", "region_hard")}


def run_clip(args, seed: int, tmp: Path) -> list[tuple]:
    from distill.synthworld import make_clip

    clip = make_clip(seed, resolution=256, seconds=args.seconds)
    if args.student:
        from inference.run import lipsync_file, load_engine_config

        cfg = load_engine_config(args.preset, args.set)
        return record_pastes(lambda: lipsync_file(args.student, tmp / f"s{seed}.mp4", audio=clip.audio, video=None,
                                                  avatar=None, cfg=cfg, frames=clip.frames))  # fmt: skip
    import configs
    from teacher.pipeline import build_teacher_parts, lipsync

    parts = build_teacher_parts(configs.load(args.config, args.set), steps=args.steps)
    return record_pastes(lambda: lipsync(parts, clip.frames, clip.audio, seed=seed, progress=False))


def write_png(p: dict, path: Path, n: int = 5) -> None:
    import cv2

    idx = np.linspace(0, len(p["truth"]) - 1, n).round().astype(int)
    rows = [np.concatenate([p[k][i] for i in idx], axis=1) for k in ("truth", "official", "ours")]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="teacher/toy", help="teacher preset")
    p.add_argument("--student", default=None, help="an exported student: run the engine instead of the teacher")
    p.add_argument("--preset", default="engine/toy", help="engine preset (with --student)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=None, help="teacher DDIM steps (default: the preset's)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_boundary.json"))
    p.add_argument("--png", type=Path, default=None, help="truth / LatentSync's paste / ours, five frames")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    calls = []
    with tempfile.TemporaryDirectory(prefix="bench-boundary-") as tmp:
        for seed in args.seeds:
            got = run_clip(args, seed, Path(tmp))
            if seed == args.seeds[0] and args.png:
                write_png(pastes_of(got), args.png)
            calls += got
    p_all = pastes_of(calls)
    width = feather_px(calls)
    main_row = measure(p_all, width)
    core = np.stack(p_all["cores"])
    edit = {k: float(np.abs(np.stack(p_all[k]).astype(np.float32) - np.stack(p_all["truth"]))[core].mean())
            for k in ("ours", "official", "region_hard")}  # fmt: skip
    report = {
        "command": "python -m scripts.bench_boundary " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.student or args.config, "seeds": args.seeds, "seconds": args.seconds, "frames": len(calls),
        "width_px": width, "boundary_visibility": main_row,
        "ratio_to_truth": {k: v / main_row["truth"] for k, v in main_row.items()},
        "sweep": {str(w): measure(p_all, w) for w in WIDTHS}, "edit_mean_abs": edit,
        "seconds_total": time.perf_counter() - t0,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{report['model']}: {len(calls)} pasted frames, width {width:.1f} px (the feather)")
    print(f"{'paste':<12} " + " ".join(f"{'w=' + str(w):>8}" for w in ("feather", *WIDTHS)) + "  ratio  edit")
    for k in ("truth", "ours", "official", "region_hard"):
        vals = [main_row[k]] + [report["sweep"][str(w)][k] for w in WIDTHS]
        print(f"{k:<12} " + " ".join(f"{v:8.2f}" for v in vals)
              + f"  {report['ratio_to_truth'][k]:.3f}  {edit.get(k, 0.0):.2f}")  # fmt: skip
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
