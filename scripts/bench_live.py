"""Live A/V sync over a long run: `turbosync stream --serve --mic` in headless Chromium, measured on the page.

    python -m scripts.bench_live --minutes 10 --out runs/bench_live.json

A synthetic-world utterance (``inference.live_measure.speech``: its true mouth track is known) is the fake
microphone (Chromium's ``--use-file-for-fake-audio-capture``). It goes through the whole path: page capture
-> websocket -> input clock -> engine process -> output clock -> websocket -> page, which schedules voice
and frames on one audio clock. Two windows are recorded on the page, one at the start and one at the end:
the frames it drew (with their JPEGs, captured from the websocket) and when, and the audio it played; each
gives the A/V offset by the page's clocks (``timing_offset``) and by content (``content_offset``: the heard
audio located in the clip, the drawn mouths read from pixels). Drift = end - start. Also the page's frame
rate, the levels the frames came at, restarts of the page's audio timeline, and the engine restarts.

The helpers (server start, assets, Chromium with a fake microphone, a page probe, the analysis) are shared
with ``tests/inference/test_live_browser.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent


def make_assets(folder: Path, seconds: float, pauses=((4.0, 3.0),), seed: int = 3) -> dict:
    """A closed-mouth idle avatar (prepared for the toy student), the fake microphone wav and its truth."""
    import soundfile as sf

    from inference.avatar import prepare_avatar
    from inference.live_measure import idle_avatar_frames, speech
    from inference.run import load_student

    folder.mkdir(parents=True, exist_ok=True)
    avatar = folder / "avatar"
    if not (avatar / "manifest.json").is_file():
        prepare_avatar(idle_avatar_frames(0, 2.0), avatar, load_student(ROOT / "assets" / "toy_student"),
                       progress=False)  # fmt: skip
    s = speech(seed, seconds, pauses=tuple(pauses))
    wav = folder / "mic.wav"
    sf.write(wav, s.audio, 16000, subtype="PCM_16")
    return {"avatar": avatar, "wav": wav, "speech": s, "pauses": tuple(pauses)}


@contextlib.contextmanager
def server(*args: str, timeout: float = 240.0):
    """``turbosync stream ... --serve --port 0`` in a subprocess; yields (process, url)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "scripts.cli", "stream", *args, "--serve", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        t0 = time.time()
        line = ""
        while "serving on" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            if time.time() - t0 > timeout:
                raise RuntimeError("the server did not start in time")
        yield proc, re.search(r"http://\S+/", line).group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def launch_chromium(pw, wav: Path):
    """Debian's chromium, headless, with a fake microphone fed from ``wav`` (no Playwright browser download)."""
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"])  # fmt: skip


class PageProbe:
    """One page of the live preview, with the frame packets it receives (captured while ``keep`` is set)."""

    def __init__(self, browser, url: str):
        from inference.live import unpack_frame

        self.page = browser.new_page()
        self.frames: dict[int, tuple[bytes, str, float]] = {}  # index -> (JPEG, level, server send time s)
        self.keep = True

        def on_frame(payload):
            if self.keep and isinstance(payload, bytes):
                f = unpack_frame(payload)
                self.frames[f["index"]] = (f["jpeg"], f["level"], f["sent"])

        self.page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
        self.page.goto(url)
        self.page.click("#start")
        self.page.wait_for_function("ts.ready !== null && ts.received > 0", timeout=120_000)  # streaming

    def record(self, on: bool) -> None:
        """Start / stop recording the played audio on the page (and keeping frames here)."""
        self.page.evaluate(f"ts.record = {str(on).lower()}; tap && tap.port.postMessage({str(on).lower()})")
        self.keep = on

    def take(self) -> dict:
        """The page's log and recording since the last call (both emptied on the page)."""
        return self.page.evaluate("""() => { const d = {log: ts.log, recording: ts.recording, stats: ts.stats,
            closed: ts.closed, energy: ts.heardEnergy, blocks: ts.blocks, reanchors: ts.reanchors,
            catchups: ts.catchups,
            state: ctx ? ctx.state : null, rate: ctx ? ctx.sampleRate : null, ready: ts.ready};
            ts.log = []; ts.recording = []; return d; }""")


def analyse(data: dict, frames: dict, truth: np.ndarray, reference: np.ndarray, skip_s: float = 1.0) -> dict:
    """Frame rate, offsets by clock and by content, levels, for one recorded window of a page."""
    from inference.live_measure import content_offset, locate, mouth_of_jpegs, timing_offset

    log = [e for e in data["log"] if e["shown"] >= data["log"][0]["shown"] + 1000 * skip_s] if data["log"] else []
    out: dict = {"frames_shown": len(log), "reanchors": data["reanchors"], "catchups": data.get("catchups"),
                 "audio_state": data["state"],
                 "audio_rate": data["rate"], "stats": data["stats"]}  # fmt: skip
    if len(log) < 2:
        return out
    shown = np.array([e["shown"] for e in log])
    idx = np.array([e["i"] for e in log])
    out["fps"] = float((len(shown) - 1) / (shown[-1] - shown[0]) * 1000)
    out["index_gaps"] = int((np.diff(idx) != 1).sum())  # a skipped or repeated frame index on the page
    out["longest_frame_ms"] = float(np.diff(shown).max())
    out["timing"] = timing_offset(log)
    levels = [frames.get(int(i), (None, "missing", np.nan))[1] for i in idx]
    out["_sent"] = np.array([frames.get(int(i), (None, "missing", np.nan))[2] for i in idx])
    out["levels"] = {lv: levels.count(lv) for lv in sorted(set(levels))}
    if data["recording"]:
        ref_start, peak = locate(data["recording"], reference)
        played = np.concatenate([np.asarray(b["samples"], np.float32) for b in data["recording"]])
        out["heard_audio"] = {"correlation_with_microphone": peak, "clip_start_heard_at_ms": ref_start,
                              "rms": float(np.sqrt(np.mean(played**2)))}  # fmt: skip
        have = [k for k, i in enumerate(idx) if int(i) in frames]
        mouth = np.full(len(idx), np.nan, np.float32)
        mouth[have] = mouth_of_jpegs([frames[int(idx[k])][0] for k in have])
        gen = np.array([lv in ("full", "one_step") for lv in levels]) & ~np.isnan(mouth)
        out["generated_frames"] = int(gen.sum())
        if gen.sum() >= 20:
            delta, corr = content_offset(shown[gen], mouth[gen], ref_start, truth)
            out["content"] = {"offset_ms": delta, "correlation": corr}
        out["_mouth"], out["_shown"], out["_ref_start"], out["_index"] = mouth, shown, ref_start, idx
        out["_levels"] = np.array(levels)
    return out


def _window(probe: PageProbe, seconds: float, speech) -> dict:
    probe.record(True)
    time.sleep(seconds)
    probe.record(False)
    data = probe.take()
    res = analyse(data, probe.frames, speech.mouth_open, speech.audio)
    probe.frames.clear()
    return {k: v for k, v in res.items() if not k.startswith("_")}


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="streaming time between the two windows")
    p.add_argument("--window", type=float, default=30.0, help="seconds recorded at the start and at the end")
    p.add_argument("--out", type=Path, default=Path("runs/bench_live.json"))
    p.add_argument("--work", type=Path, default=Path("runs/bench_live_assets"))
    args = p.parse_args(argv)
    total = 60 * args.minutes + 2 * args.window + 30
    assets = make_assets(args.work, total, pauses=())
    t0 = time.time()
    with server("--avatar", str(assets["avatar"]), "--mic", "--sessions", "1") as (_, url), sync_playwright() as pw:
        browser = launch_chromium(pw, assets["wav"])
        probe = PageProbe(browser, url)
        probe.keep = False
        time.sleep(5)
        start = _window(probe, args.window, assets["speech"])
        end_at = time.time() + 60 * args.minutes
        while time.time() < end_at:
            time.sleep(5)
            probe.take()  # keep the page's log short
        end = _window(probe, args.window, assets["speech"])
        browser.close()
    report = {"minutes_between_windows": args.minutes, "window_s": args.window, "start": start, "end": end,
              "wall_s": time.time() - t0, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "drift_ms": {"timing": end["timing"]["mean_ms"] - start["timing"]["mean_ms"]}}  # fmt: skip
    if "heard_audio" in start and "heard_audio" in end:  # the microphone-to-ear path (input clock padding included)
        report["drift_ms"]["voice_path"] = (end["heard_audio"]["clip_start_heard_at_ms"]
                                            - start["heard_audio"]["clip_start_heard_at_ms"])  # fmt: skip
    if "content" in start and "content" in end:
        report["drift_ms"]["content"] = end["content"]["offset_ms"] - start["content"]["offset_ms"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
