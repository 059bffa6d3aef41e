"""``turbosync`` command line: one subcommand per user job, each a thin call into a package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _fetch_teacher(args: argparse.Namespace) -> int:
    from teacher.fetch import FetchError, fetch_teacher

    try:
        paths = fetch_teacher(args.version, args.root, syncnet=args.syncnet, force=args.force)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def default_teacher_preset() -> str:
    """The trained toy teacher when its weights are in the repository, else the random tiny one."""
    import configs

    toy = configs.load("teacher/toy")
    return "teacher/toy" if Path(toy.files.unet).is_file() else "teacher/tiny"


def _teacher_demo(args: argparse.Namespace) -> int:
    import configs
    from scripts.demo_inputs import demo_clip
    from teacher.pipeline import run_teacher

    cfg = configs.load(args.config or default_teacher_preset(), args.overrides)
    frames, audio = demo_clip(args.video, args.audio, seconds=args.seconds, seed=args.seed)
    report = run_teacher(cfg, frames, audio, args.out, steps=args.steps, seed=args.seed, device=args.device)
    print(report.summary())
    return 0


def _synth(args: argparse.Namespace) -> int:
    from distill.synthworld import synth_dataset

    paths = synth_dataset(
        args.out_dir, clips=args.clips, resolution=args.resolution, seconds=args.seconds, seed=args.seed
    )
    print(f"wrote {len(paths)} clips to {args.out_dir}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from distill.data import PrepareConfig, prepare

    cfg = PrepareConfig(
        resolution=args.resolution,
        min_frames=args.min_frames,
        scene_cut_threshold=None if args.no_scene_cuts else args.scene_cut_threshold,
        whisper=args.whisper,
        workers=args.workers,
    )
    report = prepare(args.src_dir, args.out_dir, cfg)
    print(report.summary())
    return 0


def _distill(args: argparse.Namespace) -> int:
    import configs
    from distill.recipe import NonFiniteLossError, train

    cfg = configs.load(args.config or default_teacher_preset(), args.overrides)
    try:
        run = train(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if run.acc.is_main_process:
        print(f"distilled {run.state.step} steps into {run.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from distill.export import ExportError, export_run

    try:
        out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint, onnx=args.onnx, steps=args.steps)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbosync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch-teacher", help="download the official LatentSync files (needs network)")
    p.add_argument("--version", default="1.6", choices=["1.5", "1.6"])
    p.add_argument("--root", default="checkpoints", help="folder the teacher configs point at")
    p.add_argument("--syncnet", action="store_true", help="also fetch stable_syncnet.pt")
    p.add_argument("--force", action="store_true", help="download again even when present")
    p.set_defaults(func=_fetch_teacher)

    for name, help_text in (
        ("teacher-demo", "run the teacher (guided DDIM) end to end and write an mp4"),
        ("demo", "the main job on the embedded default (currently: the toy teacher on a synthetic clip)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=None, help="preset name or YAML path (default: teacher/toy, else tiny)")
        p.add_argument("--out", default="outputs/teacher_demo.mp4", type=Path)
        p.add_argument("--video", default=None, help="face video (default: a synthetic talking-face clip)")
        p.add_argument("--audio", default=None, help="driving audio (default: the clip's own audio)")
        p.add_argument("--seconds", type=float, default=2.0, help="length of the synthetic clip")
        p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the config's, 20)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu")
        p.add_argument("overrides", nargs="*", help="config overrides key=value")
        p.set_defaults(func=_teacher_demo)

    p = sub.add_parser("synth", help="write synthetic talking-face clips with ground truth")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_synth)

    p = sub.add_parser("prepare", help="turn a folder of talking-head videos into training shards")
    p.add_argument("src_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--resolution", type=int, default=256, help="aligned face size (256 or 512 for real data)")
    p.add_argument("--min-frames", type=int, default=16, help="shortest kept segment")
    p.add_argument("--scene-cut-threshold", type=float, default=0.3)
    p.add_argument("--no-scene-cuts", action="store_true")
    p.add_argument("--whisper", default=None, help="tiny.pt or HF folder (default: the tiny preset's random one)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("distill", help="distil the teacher into a few-step student (accelerate / DeepSpeed)")
    p.add_argument("--config", default="distill/tiny", help="preset name (distill/tiny) or YAML path")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (run.max_steps=100 ...)")
    p.set_defaults(func=_distill)

    p = sub.add_parser("export", help="write a run's student as a self-contained folder (weights, settings, "
                       "VAE, Whisper, mask)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint directory (default: the latest)")
    p.add_argument("--onnx", action="store_true", help="also export one U-Net step to OUT_DIR/student.onnx")
    p.add_argument("--steps", type=int, default=1, help="default sampler steps recorded for inference (default: 1)")
    p.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
