"""Memory stays flat over a long stream: N minutes of audio through the engine, resident memory per audio-minute.

    python -m scripts.bench_memory --student assets/toy_student --minutes 10 --out runs/bench_memory.json

A 2 s synthetic avatar; the audio is a 20 s synthetic speech clip looped to ``--minutes``; fed in 20 ms
pieces as fast as the engine goes, frames written to an mp4 (the real sink). Resident memory (VmRSS) is
read after every audio-minute; the report gives minute 10 against minute 1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="assets/toy_student")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--preset", default="engine/toy")
    p.add_argument("--out", type=Path, default=Path("runs/bench_memory.json"))
    p.add_argument("--set", nargs="*", default=[], help="engine config overrides key=value (threads=1 ...)")
    args = p.parse_args(argv)

    from distill.synthworld import make_clip
    from inference.avatar import prepare_avatar
    from inference.engine import flush, start, step
    from inference.run import load_engine_config, load_student
    from teacher.media import VideoWriter

    cfg = load_engine_config(args.preset, args.set, degrade=False)
    torch.set_num_threads(int(cfg.threads or 1))
    bundle = load_student(args.student)
    speech = make_clip(11, resolution=256, seconds=20.0).audio.astype(np.float32)
    total = int(args.minutes * 60 * 16000)
    minute = min(60 * 16000, total // 2 // 320 * 320)  # a row per audio-minute (two rows for short runs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        avatar = prepare_avatar(make_clip(12, resolution=256, seconds=2.0).frames, Path(tmp) / "av", bundle,
                                progress=False)  # fmt: skip
        state = start(avatar, bundle, cfg)
        t0 = time.perf_counter()
        fed = frames = 0
        with VideoWriter(Path(tmp) / "long.mp4", 25) as writer:
            while fed < total:
                piece = np.resize(np.roll(speech, -(fed % len(speech))), min(320, total - fed))
                out, state = step(state, piece)
                for f in out:
                    writer.write(f)
                frames += len(out)
                fed += len(piece)
                if fed % minute == 0:
                    rows.append({"audio_minutes": fed / (60 * 16000), "rss_mib": rss_mib(), "frames": frames,
                                 "wall_seconds": time.perf_counter() - t0})  # fmt: skip
                    print(rows[-1], flush=True)
            out, state = flush(state)
            for f in out:
                writer.write(f)
    first, last = rows[0]["rss_mib"], rows[-1]["rss_mib"]
    report = {"per_minute": rows, "first_minute_mib": first, "last_minute_mib": last,
              "last_over_first": last / first, "student": args.student, "preset": args.preset,
              "torch_threads": torch.get_num_threads()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "per_minute"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
