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
    from teacher.media import MediaError, read_audio, read_audio_to_video_end
    from teacher.pipeline import run_teacher

    if args.steps is not None and args.steps < 1:
        return _fail(f"--steps must be at least 1, got {args.steps}")
    if clash := _same_file(args.out, args.video, args.audio):
        return _fail(f"--out {args.out} is the input {clash}: write the output elsewhere")
    cfg = configs.load(args.config or default_teacher_preset(), args.overrides)
    try:  # a video file is streamed by run_teacher, never decoded whole
        if args.video is None:
            frames, audio = demo_clip(None, args.audio, seconds=args.seconds, seed=args.seed)
        else:
            audio = read_audio(args.audio) if args.audio else read_audio_to_video_end(args.video)
            frames = args.video
        report = run_teacher(cfg, frames, audio, args.out, steps=args.steps, seed=args.seed, device=args.device)
    except MediaError as err:  # names the file
        return _fail(str(err))
    except ValueError as err:  # e.g. audio shorter than one video frame
        source = args.audio or args.video
        return _fail(f"{source}: {err}" if source else str(err))
    print(report.summary())
    return 0


def _eval_sync(args: argparse.Namespace) -> int:
    from inference.eval_sync import eval_sync

    try:
        report = eval_sync(args.video, args.audio, args.syncnet, args.config, args.device)
    except USER_ERRORS as err:  # a missing file, no face, too short, a checkpoint of another network
        return _fail(err)
    print(report.summary())
    return 0


TOY_STUDENT = Path(__file__).resolve().parent.parent / "assets" / "toy_student"


USER_ERRORS = (ValueError, KeyError, TypeError, OSError)  # an unusable input or option: one line, exit 2


def _at_least(low: float, kind=int):
    """An argparse type: ``kind(text)`` that must be >= ``low`` (argparse prints its one-line usage error)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _same_file(out: Path, *inputs) -> str | None:
    """The input ``out`` would overwrite (same file), if any."""
    for path in inputs:
        if path is not None and Path(path).exists() and Path(out).exists() and Path(out).samefile(path):
            return str(path)
    return None


_SIGNALLED: list[int] = []  # SIGTERM received: whatever error follows is the termination, not a bad input


def _fail(message: str | BaseException) -> int:
    """One clear line on stderr and exit code 2 (an unusable input); 128 + signal after a SIGTERM."""
    if _SIGNALLED:
        print("terminated", file=sys.stderr)
        return 128 + _SIGNALLED[0]
    if isinstance(message, KeyError) and message.args:
        message = message.args[0]  # not the quoted repr
    print(f"error: {message}", file=sys.stderr)
    return 2


def _engine_options(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "chunk": args.chunk, "decoder": args.decoder,
            "degrade": False if args.no_degrade else None}  # fmt: skip


def _lipsync(args: argparse.Namespace) -> int:
    from inference.run import InputError, lipsync_file, load_engine_config

    if args.out.exists() and args.out.is_dir():
        return _fail(f"{args.out} is a folder; --out takes an .mp4 path")
    if clash := _same_file(args.out, args.video, args.audio):
        return _fail(f"--out {args.out} is the input {clash}: write the output elsewhere")
    try:
        if args.teacher:
            return _lipsync_teacher(args)
        cfg = load_engine_config(args.preset, args.overrides, **_engine_options(args))
        report = lipsync_file(args.student, args.out, audio_path=args.audio, video=args.video,
                              avatar=args.avatar, cfg=cfg, tiny_decoder=args.tiny_decoder,
                              face=_face_options(args))  # fmt: skip
    except (InputError, *USER_ERRORS) as err:
        return _fail(err)
    print(report.summary())
    return 0


def _lipsync_teacher(args: argparse.Namespace) -> int:
    """--teacher PRESET: the 20-step teacher through the same conditioning, compositing and muxing."""
    import configs
    from inference.run import read_audio_16k
    from teacher.pipeline import run_teacher

    if args.video is None:
        return _fail("--teacher needs --video (the teacher prepares no avatars)")
    audio = read_audio_16k(args.audio) if args.audio else read_audio_16k(args.video, to_video_end=True)
    report = run_teacher(configs.load(args.teacher, args.overrides), args.video, audio, args.out)  # streamed
    print(report.summary())
    return 0


def _add_face_options(p: argparse.ArgumentParser) -> None:
    """Which face, small faces, scene cuts: ``teacher.face.build_aligner``'s options for a prepared avatar."""
    p.add_argument("--face", default="largest",
                   help="which face when there are several: 'largest', an index from the left (0 = leftmost) or a "
                        "box x1,y1,x2,y2 in px (the face overlapping it most)")  # fmt: skip
    p.add_argument("--small-faces", action="store_true", help="find faces under LatentSync's 50 x 80 px minimum")
    p.add_argument("--no-scene-cuts", action="store_true", help="never restart the face smoothing at scene cuts")


def _face_options(args: argparse.Namespace) -> dict:
    return {"choose": args.face, "small_faces": args.small_faces, "scene_cut": not args.no_scene_cuts}


def _avatar_prepare(args: argparse.Namespace) -> int:
    from inference.avatar import AvatarError, prepare_avatar
    from inference.run import InputError, load_student

    try:
        bundle = load_student(args.student)
        av = prepare_avatar(args.source, args.out_dir, bundle, seed=args.seed, face=_face_options(args))
    except (InputError, AvatarError, *USER_ERRORS) as err:
        return _fail(err)
    print(f"avatar: {av.num_frames} frames ({int(av.has_face.sum())} with a face) at {av.resolution} px -> {av.path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The student on the embedded default: a synthetic clip (or --video/--audio) through the engine."""
    from inference.run import InputError, lipsync_file, load_engine_config
    from scripts.demo_inputs import demo_clip

    if clash := _same_file(args.out, args.video, args.audio):
        return _fail(f"--out {args.out} is the input {clash}: write the output elsewhere")
    try:
        frames, audio = demo_clip(args.video, args.audio, seconds=args.seconds, seed=args.seed)
        cfg = load_engine_config(args.preset, [], **_engine_options(args))
        report = lipsync_file(args.student, args.out, audio=audio, video=None, avatar=None, cfg=cfg,
                              tiny_decoder=args.tiny_decoder, frames=frames)  # fmt: skip
    except (InputError, *USER_ERRORS) as err:
        return _fail(err)
    print(report.summary())
    return 0


def _bench_stream(args: argparse.Namespace) -> int:
    from inference.bench import bench_stream, print_report, write_report
    from inference.run import InputError

    try:
        report = bench_stream(args.student, args.preset, seconds=args.seconds, device=args.device,
                              tiny_decoder=args.tiny_decoder, flops=not args.no_flops, overrides=args.overrides)
    except (InputError, *USER_ERRORS) as err:
        return _fail(err)
    print_report(report)
    print(write_report(report, args.out))
    return 0


def _stream(args: argparse.Namespace) -> int:
    from inference.live_cli import stream_command
    from inference.run import InputError

    try:
        return stream_command(args, _engine_options(args), _fail)
    except (InputError, *USER_ERRORS) as err:
        return _fail(err)


def _synth(args: argparse.Namespace) -> int:
    from distill.synthworld import synth_dataset

    paths = synth_dataset(
        args.out_dir, clips=args.clips, resolution=args.resolution, seconds=args.seconds, seed=args.seed
    )
    print(f"wrote {len(paths)} clips to {args.out_dir}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from distill.data import PrepareConfig, prepare
    from teacher.face import parse_choice

    try:
        choose = parse_choice(args.face)
    except ValueError as err:
        return _fail(f"--face: {err}")
    cfg = PrepareConfig(
        resolution=args.resolution,
        min_frames=args.min_frames,
        scene_cut_threshold=None if args.no_scene_cuts else args.scene_cut_threshold,
        whisper=args.whisper,
        workers=args.workers,
        small_faces=args.small_faces,
        choose=choose,
    )
    try:
        report = prepare(args.src_dir, args.out_dir, cfg)
    except FileNotFoundError as err:  # no source folder, or no videos in it
        return _fail(str(err))
    print(report.summary())
    if report.shards == 0:  # every file skipped: nothing to train on
        return _fail(f"{args.src_dir}: no usable video (no shard written; the reasons are listed above)")
    return 0


def _distill(args: argparse.Namespace) -> int:
    import configs
    from distill.recipe import NonFiniteLossError, train

    cfg = configs.load(args.config or default_teacher_preset(), args.overrides)
    if "run" not in cfg or "distill" not in cfg:
        return _fail(f"{args.config}: not a distillation preset (no run: / distill: section; see configs/distill/)")
    if int(cfg.run.max_steps) < 1:
        return _fail(f"run.max_steps must be at least 1, got {cfg.run.max_steps}")
    try:
        run = train(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except FileNotFoundError as err:  # data folder, teacher weights, init export
        return _fail(err)
    if run.acc.is_main_process:
        print(f"distilled {run.state.step} steps into {run.out}")
    return 0


def _train_syncnet(args: argparse.Namespace) -> int:
    import configs
    from distill.recipe import NonFiniteLossError
    from distill.syncnet_train import train_syncnet

    try:
        cfg = configs.load(args.config, args.overrides)
    except USER_ERRORS as err:
        return _fail(err)
    try:
        run = train_syncnet(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if run.acc.is_main_process:
        print(f"trained a SyncNet for {run.state.step} steps: {run.out / 'syncnet.pt'} "
              f"(held-out accuracy: {run.out / 'heldout.json'})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from distill.export import ExportError, export_run

    try:
        out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint, onnx=args.onnx, steps=args.steps,
                         dtype=args.dtype)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="engine/toy", help="engine preset under configs/ (engine/toy, "
                   "engine/latentsync-512)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps 1-4 (default: the preset's)")
    p.add_argument("--chunk", type=int, default=None, help="frames per U-Net chunk 1-16 (default: the preset's)")
    p.add_argument("--decoder", choices=["vae", "tiny"], default=None, help="decoder (default: the preset's)")
    p.add_argument("--tiny-decoder", default=None, help="tiny decoder folder (needed for --decoder tiny; default: "
                   "the student folder's tiny_decoder/ when present)")
    p.add_argument("--no-degrade", action="store_true", help="never trade quality for pace")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it, or it has none worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action)


def _with_defaults_shown(sub):
    """Sub-commands whose --help shows every option's default."""
    add = sub.add_parser

    def add_parser(name, **kw):
        return add(name, formatter_class=_DefaultsFormatter, **kw)

    sub.add_parser = add_parser
    return sub


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("turbosync")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbosync", description=__doc__, formatter_class=_DefaultsFormatter)
    parser.add_argument("--version", action="version", version=f"turbosync {_version()}")
    sub = _with_defaults_shown(parser.add_subparsers(dest="command", required=True))

    p = sub.add_parser("fetch-teacher", help="download the official LatentSync files (needs network)")
    p.add_argument("--version", default="1.6", choices=["1.5", "1.6"], help="LatentSync version")
    p.add_argument("--root", default="checkpoints", help="folder the teacher configs point at")
    p.add_argument("--syncnet", action="store_true", help="also fetch stable_syncnet.pt")
    p.add_argument("--force", action="store_true", help="download again even when present")
    p.set_defaults(func=_fetch_teacher)

    p = sub.add_parser("teacher-demo", help="run the teacher (guided DDIM) end to end and write an mp4")
    p.add_argument("--config", default=None, help="preset name or YAML path (default: teacher/toy, else teacher/tiny)")
    p.add_argument("--out", default="outputs/teacher_demo.mp4", type=Path, help="output mp4")
    p.add_argument("--video", default=None, help="face video (default: a synthetic talking-face clip)")
    p.add_argument("--audio", default=None, help="driving audio (default: the clip's own audio)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of the synthetic clip")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the config's, 20)")
    p.add_argument("--seed", type=int, default=0, help="initial noise and VAE sampling")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=_teacher_demo)

    p = sub.add_parser("demo", help="the main job on the embedded default: the toy student lip-syncs a synthetic "
                       "clip through the streaming engine and prints fps and real-time factor")
    p.add_argument("--student", default=str(TOY_STUDENT), help="exported student folder")
    p.add_argument("--out", default="outputs/demo.mp4", type=Path, help="output mp4")
    p.add_argument("--video", default=None, help="face video (default: a synthetic talking-face clip)")
    p.add_argument("--audio", default=None, help="driving audio (default: the clip's own audio)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the synthetic clip")
    p.add_argument("--seed", type=int, default=0, help="synthetic clip")
    _add_engine_options(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("lipsync", help="lip-sync a video or a prepared avatar to an audio file with a student "
                       "(or --teacher PRESET for comparison)")
    p.add_argument("--student", default=str(TOY_STUDENT), help="exported student folder (`turbosync export`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", default=None, help="face video (prepared on the fly)")
    src.add_argument("--avatar", default=None, help="folder from `turbosync avatar prepare`")
    p.add_argument("--audio", default=None, help="driving audio (default: the video's own audio track)")
    p.add_argument("--out", required=True, type=Path, help="output mp4")
    p.add_argument("--teacher", default=None, metavar="PRESET",
                   help="run this teacher preset (e.g. teacher/toy) with its official conditioning instead")
    _add_engine_options(p)
    _add_face_options(p)
    p.add_argument("overrides", nargs="*", help="engine (or --teacher) config overrides key=value")
    p.set_defaults(func=_lipsync)

    from inference.live_cli import add_stream_parser

    add_stream_parser(sub, _add_engine_options, str(TOY_STUDENT))
    sub.choices["stream"].set_defaults(func=_stream)

    p = sub.add_parser("avatar", help="avatars for the engine")
    avatar_sub = _with_defaults_shown(p.add_subparsers(dest="avatar_command", required=True))
    p = avatar_sub.add_parser("prepare", help="align, crop and VAE-encode a face video or image once")
    p.add_argument("source", type=Path, help="face video or image")
    p.add_argument("out_dir", type=Path, help="avatar folder to write")
    p.add_argument("--student", default=str(TOY_STUDENT), help="the student it is prepared for (resolution, VAE, mask)")
    p.add_argument("--seed", type=int, default=0, help="VAE posterior sampling")
    _add_face_options(p)
    p.set_defaults(func=_avatar_prepare)

    p = sub.add_parser("bench", help="benchmarks")
    bench_sub = _with_defaults_shown(p.add_subparsers(dest="bench_command", required=True))
    p = bench_sub.add_parser("stream", help="engine speed, latency, pacing, per-stage cost, overhead, memory, FLOPs")
    p.add_argument("--out", required=True, type=Path, help="JSON report to write")
    p.add_argument("--preset", default="engine/toy", help="engine preset")
    p.add_argument("--student", default=str(TOY_STUDENT), help="exported student folder")
    p.add_argument("--tiny-decoder", default=None, help="tiny decoder folder (default: the student's tiny_decoder/)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic clip")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--no-flops", action="store_true", help="skip the analytic FLOPs of the full-size model")
    p.add_argument("overrides", nargs="*", help="engine config overrides key=value")
    p.set_defaults(func=_bench_stream)

    p = sub.add_parser("synth", help="write synthetic talking-face clips with ground truth")
    p.add_argument("out_dir", type=Path, help="folder for the clips")
    p.add_argument("--clips", type=_at_least(1), default=8, help="number of clips")
    p.add_argument("--resolution", type=_at_least(64), default=256, help="frame size in px")
    p.add_argument("--seconds", type=_at_least(0.2, float), default=4.0, help="length of each clip")
    p.add_argument("--seed", type=int, default=0, help="data set seed (clip k draws from (seed, k))")
    p.set_defaults(func=_synth)

    p = sub.add_parser("prepare", help="turn a folder of talking-head videos into training shards")
    p.add_argument("src_dir", type=Path, help="folder of source videos")
    p.add_argument("out_dir", type=Path, help="folder for the shards")
    p.add_argument("--resolution", type=_at_least(32), default=256, help="aligned face size (256 or 512 for real data)")
    p.add_argument("--min-frames", type=_at_least(1), default=16, help="shortest kept segment")
    p.add_argument("--scene-cut-threshold", type=float, default=0.3, help="mean absolute frame change that cuts")
    p.add_argument("--no-scene-cuts", action="store_true", help="do not split at scene cuts")
    p.add_argument("--whisper", default=None, help="tiny.pt or HF folder (default: the tiny preset's random one)")
    p.add_argument("--workers", type=_at_least(1), default=1, help="parallel processes")
    p.add_argument("--face", default="largest",
                   help="which face when there are several: 'largest', an index from the left or a box x1,y1,x2,y2")
    p.add_argument("--small-faces", action="store_true", help="find faces under LatentSync's 50 x 80 px minimum")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("distill", help="distil the teacher into a few-step student (accelerate / DeepSpeed)")
    p.add_argument("--config", default="distill/tiny", help="preset name (distill/tiny) or YAML path")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (run.max_steps=100 ...)")
    p.set_defaults(func=_distill)

    p = sub.add_parser("train-syncnet", help="train or adapt a StableSyncNet on in-sync / off-sync pairs "
                       "(accelerate; resumes with `run.resume=auto`)")
    p.add_argument("--config", default="syncnet/train_toy", help="preset name (syncnet/train_toy) or YAML path")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (run.max_steps=100 ...)")
    p.set_defaults(func=_train_syncnet)

    p = sub.add_parser("export", help="write a run's student as a self-contained folder (weights, settings, "
                       "VAE, Whisper, mask)")
    p.add_argument("run_dir", type=Path, help="distillation run folder (run.output_dir)")
    p.add_argument("out_dir", type=Path, help="export folder to write")
    p.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint directory (default: the latest)")
    p.add_argument("--onnx", action="store_true", help="also export one U-Net step to OUT_DIR/student.onnx")
    p.add_argument("--steps", type=int, choices=[1, 2, 3, 4], default=1,
                   help="default sampler steps recorded for inference")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="stored precision of the weights (half weights run in float32 on a CPU)")
    p.set_defaults(func=_export)

    p = sub.add_parser("eval", help="measure outputs")
    eval_sub = _with_defaults_shown(p.add_subparsers(dest="eval_command", required=True))
    p = eval_sub.add_parser("sync", help="audio-visual offset, LSE-C and LSE-D of a face video (SyncNet, +-15 frames)")
    p.add_argument("video", help="video with a face")
    p.add_argument("--audio", default=None, help="audio file (default: the video's own audio track)")
    p.add_argument("--syncnet", default=None, help="syncnet_v2.model (original SyncNet) or stable_syncnet.pt "
                   "(default: files.syncnet of --config)")
    p.add_argument("--config", default=None,
                   help="StableSyncNet preset or YAML: its model and window (unused for syncnet_v2.model); "
                   "default: the syncnet.yaml beside --syncnet (as train-syncnet writes it), "
                   "else syncnet/stable_syncnet_16; the report names the one used")
    p.add_argument("--device", default="cpu", help="torch device")
    p.set_defaults(func=_eval_sync)
    return parser


def _terminated(signum, frame):
    _SIGNALLED.append(signum)
    raise SystemExit(128 + signum)  # unwinds through the writers and temporary folders, which clean up


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    device = str(getattr(args, "device", None) or "cpu")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return _fail(f"--device {device}: no CUDA device on this machine (use --device cpu)")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from omegaconf.errors import OmegaConfBaseException

        import configs

        if not _SIGNALLED and isinstance(err, configs.ConfigError | OmegaConfBaseException):  # a preset or override
            return _fail(str(err).strip().splitlines()[0])
        # A signal that lands inside a library (mid-import, mid-decode) can come out as that library's own error
        # (mediapipe turns an interrupted import into ImportError); the run was still terminated, not broken.
        if _SIGNALLED:
            print("terminated", file=sys.stderr)
            return 128 + _SIGNALLED[0]
        raise
    finally:
        if main_thread:  # main() called from a program (or a test) leaves its SIGTERM handling as it was
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
