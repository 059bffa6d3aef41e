"""``turbosync stream``: the options of the command turned into ``stream_file`` or ``serve`` calls."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path


def add_stream_parser(sub, add_engine_options, default_student: str) -> None:
    p = sub.add_parser("stream", help="lip-sync live: audio paced in real time (a file or the page's microphone), "
                       "frames to an mp4 and/or the live page (--serve)")  # fmt: skip
    p.add_argument("--student", default=default_student, help="exported student folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", default=None, help="face video (prepared on the fly)")
    src.add_argument("--avatar", default=None, help="folder from `turbosync avatar prepare`")
    audio = p.add_mutually_exclusive_group(required=True)
    audio.add_argument("--audio", default=None, help="driving audio file, played in real time")
    audio.add_argument("--mic", action="store_true", help="the page's microphone (needs --serve)")
    p.add_argument("--out", default=None, type=Path, help="output mp4 (with --serve: OUT-<session>.mp4 per session)")
    p.add_argument("--serve", action="store_true", help="serve the live page on http://HOST:PORT/")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (other hosts reach the page only if set)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port; the URL is printed)")
    p.add_argument("--sessions", type=int, default=2, help="sessions served at once (one engine process each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per engine process")
    p.add_argument("--delay", type=float, default=0.0, help="seconds of output delay on top of the engine's "
                   "latency (buffering for a slow machine or network; voice and lips stay together)")  # fmt: skip
    add_engine_options(p)
    p.add_argument("overrides", nargs="*", help="engine config overrides key=value")


def stream_command(args: argparse.Namespace, options: dict, fail) -> int:
    """Run the command; ``options``: the engine options of the CLI; ``fail(message)`` prints and returns 2."""
    from inference.run import InputError

    if args.mic and not args.serve:
        return fail("--mic needs --serve: the microphone is the page's")
    if args.out is None and not args.serve:
        return fail("nothing to do: give --out OUT.mp4 and/or --serve")
    if args.out is not None and args.out.is_dir():
        return fail(f"{args.out} is a folder; --out takes an .mp4 path")
    if args.sessions < 1 or args.threads < 1 or not 0 <= args.delay <= 600:
        return fail("--sessions and --threads must be at least 1, --delay 0-600 s")
    if not args.serve:
        from inference.live import stream_file
        from inference.run import load_engine_config

        cfg = load_engine_config(args.preset, args.overrides, **options)
        report = stream_file(args.student, args.video, args.audio or args.video, avatar=args.avatar,
                             out_path=args.out, cfg=cfg, tiny_decoder=args.tiny_decoder)  # fmt: skip
        print(report.summary())
        return 0
    with tempfile.TemporaryDirectory(prefix="turbosync-avatar-") as tmp:
        try:
            cfg = _serve_config(args, options, tmp)
        except InputError as err:
            return fail(err)

        def started(url: str) -> None:
            print(f"serving on {url} ({args.sessions} sessions, output delay {1000 * cfg.latency:.0f} ms); "
                  "Ctrl-C stops", flush=True)  # fmt: skip

        from inference.live_server import serve

        try:
            asyncio.run(serve(cfg, started))
        except OSError as err:  # e.g. the port is taken
            return fail(err)
    return 0


def _serve_config(args, options: dict, tmp: str):
    from inference.avatar import AvatarError, prepare_avatar
    from inference.live import output_latency
    from inference.live_server import ServeConfig
    from inference.live_worker import WorkerSpec, load_engine
    from inference.run import InputError, load_engine_config, load_student, read_audio_16k

    cfg = load_engine_config(args.preset, args.overrides, **options)  # checked here: one error line
    audio = None if args.mic else read_audio_16k(args.audio)
    options = {k: v for k, v in options.items() if v is not None}
    try:
        bundle = None
        if args.avatar is not None:
            avatar = args.avatar
        else:
            print("preparing the avatar ...", file=sys.stderr, flush=True)
            bundle = load_student(args.student)
            avatar = prepare_avatar(args.video, tmp, bundle, progress=False).path
        spec = WorkerSpec(str(args.student), str(avatar), args.preset, tuple(args.overrides), options,
                          args.tiny_decoder, args.threads)  # fmt: skip
        engine = load_engine(spec, bundle)
    except AvatarError as err:
        raise InputError(str(err)) from None
    jitter = 0.1
    return ServeConfig(spec, output_latency(cfg, jitter) + args.delay, audio=audio, host=args.host, port=args.port,
                       sessions=args.sessions, jitter=jitter, out=args.out, engine=engine)  # fmt: skip
