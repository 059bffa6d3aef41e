"""Peak resident memory of ``turbosync teacher-demo`` (``prepare``, ``avatar prepare``) against the clip's length.

Runs the command in a fresh subprocess per clip and reads that child's peak RSS from ``os.wait4`` (the
kernel's ``ru_maxrss``, the number ``/usr/bin/time -v`` prints). The clips are the same talking face cut to
several lengths: ``shared/cases/c12_talk_640x360_{4,16}s.mp4`` when present, else (or with ``--make``) a
synthetic talking face on a 640x360 canvas with its own audio, made in a separate process (a forked child's
``ru_maxrss`` starts from its parent's resident memory, so this process stays small; ``bench_rss_mb`` in the
JSON is that floor). The DDIM step count does not change memory (every step reuses the chunk's buffers), so
``--steps 2`` keeps the run short. Prints one line per clip and writes JSON::

    OMP_NUM_THREADS=1 python -m scripts.bench_media_memory --out outputs/bench_media_memory.json
    python -m scripts.bench_media_memory --repo /tmp/old_checkout   # the same on another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CASES = REPO.parent / "shared" / "cases"


def make_clip(path: Path, seconds: float, seed: int = 0) -> Path:
    """A synthetic talking face (256 px, ``distill.synthworld``) centred on a grey 640x360 canvas, with audio."""
    from distill.synthworld import make_clip as synth
    from teacher.media import write_video

    clip = synth(seed, resolution=256, seconds=seconds)
    canvas = np.full((len(clip.frames), 360, 640, 3), 110, np.uint8)
    canvas[:, 52:308, 192:448] = clip.frames
    write_video(path, canvas, audio=clip.audio, sample_rate=16000)
    return path


def make_clip_elsewhere(path: Path, seconds: float) -> Path:
    """``make_clip`` in its own process: the clip's arrays must not stay in this one, whose resident pages a
    forked child counts in its ``ru_maxrss`` until it execs."""
    code = f"import pathlib, scripts.bench_media_memory as b; b.make_clip(pathlib.Path({str(path)!r}), {seconds})"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return path


def own_rss_mb() -> float:
    """This process's resident memory now (MB): the floor of a forked child's ``ru_maxrss``."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024


def peak_rss(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, int, str]:
    """(peak RSS in MB, wall seconds, exit code, last output line) of one subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, proc.returncode, last  # ru_maxrss: kB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose teacher-demo is measured")
    p.add_argument("--seconds", type=float, nargs="+", default=[4, 16], help="clip lengths (with --make)")
    p.add_argument("--make", action="store_true", help="synthetic clips even when the c12 cases exist")
    p.add_argument("--steps", type=int, default=2, help="DDIM steps (memory does not depend on them)")
    p.add_argument("--config", default=None, help="teacher preset (default: teacher-demo's)")
    p.add_argument("--prepare", action="store_true", help="measure `turbosync prepare` on each clip instead")
    p.add_argument("--avatar", action="store_true", help="measure `turbosync avatar prepare` (toy student) instead")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_media_memory.json")
    args = p.parse_args(argv)

    env = {**os.environ, "PYTHONPATH": str(args.repo), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for s in args.seconds:
            case = CASES / f"c12_talk_640x360_{s:g}s.mp4"
            use_case = case.is_file() and not args.make
            clips.append((s, case if use_case else make_clip_elsewhere(Path(tmp) / f"talk_{s:g}s.mp4", s)))
        for seconds, clip in clips:
            cmd = [sys.executable, "-m", "scripts.cli", "teacher-demo", "--video", str(clip), "--steps",
                   str(args.steps), "--out", str(Path(tmp) / f"out_{seconds:g}s.mp4")]  # fmt: skip
            if args.config:
                cmd += ["--config", args.config]
            if args.prepare:  # a folder holding just this clip
                src = Path(tmp) / f"src_{seconds:g}s"
                src.mkdir()
                (src / clip.name).symlink_to(clip.resolve())
                shards = Path(tmp) / f"shards_{seconds:g}s"
                cmd = [sys.executable, "-m", "scripts.cli", "prepare", str(src), str(shards)]
            if args.avatar:
                avatar = Path(tmp) / f"avatar_{seconds:g}s"
                cmd = [sys.executable, "-m", "scripts.cli", "avatar", "prepare", str(clip), str(avatar)]
            mb, wall, rc, last = peak_rss(cmd, args.repo, env)
            rows.append({"clip": str(clip), "seconds": seconds, "peak_rss_mb": round(mb, 1), "wall_s": round(wall, 1),
                         "exit_code": rc, "summary": last, "bench_rss_mb": round(own_rss_mb(), 1)})  # fmt: skip
            print(f"{seconds:6.1f} s  {clip.name:32s} peak RSS {mb:8.1f} MB  ({wall:.0f} s, exit {rc})  {last}")
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["vs_first"] = round(r["peak_rss_mb"] / base - 1, 4)
    print("relative to the first clip: " + ", ".join(f"{r['seconds']:g} s {100 * r['vs_first']:+.1f}%" for r in rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "avatar prepare" if args.avatar else "prepare" if args.prepare else "teacher-demo"
    report = {"repo": str(args.repo), "command": command, "steps": args.steps,
              "config": args.config, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(report, indent=1))
    print(args.out)
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
