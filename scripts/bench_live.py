"""Live A/V sync over a long run: `turbosync stream --serve --mic` in headless Chromium, measured on the page.

    python -m scripts.bench_live --minutes 10 --out runs/bench_live.json

A synthetic-world utterance (``inference.live_measure.speech``: its true mouth track is known) is the fake
microphone (Chromium's ``--use-file-for-fake-audio-capture``). It goes through the whole path: page capture
-> websocket -> input clock -> engine process -> output clock -> websocket -> page, which schedules voice
and frames on one audio clock. Two windows are recorded on the page, one at the start and one at the end:
the frames it drew (with their JPEGs, captured from the websocket) and when, and the audio it played; each
gives the A/V offset by the page's clocks (``timing_offset``) and by content (``content_offset``: the heard
audio located in the clip piece by piece, the drawn mouths read from pixels, over the frames the student
made at full quality and, separately, those the tiny decoder decoded; ``decoder_check`` first measures
offline whether the tiny decoder's mouths read right). Drift = end - start. Also the page's frame rate,
the levels the frames came at, restarts of the page's audio timeline, the engine restarts, the machine's
load average (sampled every 5 s).

The helpers (server start, assets, Chromium with a fake microphone, a page probe, the analysis) are shared
with ``tests/inference/test_live_browser.py``.
"""

from __future__ import annotations

import argparse
import base64
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

    def __init__(self, browser, url: str, capture: bool = True):
        from inference.live import unpack_frame

        self.page = browser.new_page()
        # index -> (JPEG, level, server send time s, RMS of the frame's audio)
        self.frames: dict[int, tuple[bytes, str, float, float]] = {}
        self.keep = self.capture = capture

        def on_frame(payload):
            if self.keep and isinstance(payload, bytes):
                f = unpack_frame(payload)
                rms = float(np.sqrt(np.mean(f["audio"] ** 2))) if len(f["audio"]) else 0.0
                self.frames[f["index"]] = (f["jpeg"], f["level"], f["sent"], rms)

        if capture:  # every packet also goes through Playwright's driver: on a busy machine that costs CPU
            self.page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
        self.page.goto(url)
        self.page.click("#start")
        self.page.wait_for_function("ts.ready !== null && ts.received > 0", timeout=120_000)  # streaming

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass while handing over the driver's events as they come (``time.sleep`` would leave
        them queued, to be handled in one burst later)."""
        self.page.wait_for_timeout(1000 * seconds)

    def record(self, on: bool) -> None:
        """Start / stop recording the played audio on the page; starting also keeps the frame packets here
        (``keep``: stopping leaves it set, so ``take`` still gets the packets of the frames drawn until then)."""
        self.keep = self.capture and (self.keep or on)  # before the call: it hands over the events that came
        self.page.evaluate(f"ts.record = {str(on).lower()}; tap && tap.port.postMessage({str(on).lower()})")

    def take(self, wait: float = 15.0) -> dict:
        """The page's log and recording since the last call (both emptied on the page). While packets are
        kept, waits up to ``wait`` seconds for those of every drawn frame: Playwright hands events over only
        while the driver is called, and a busy driver lags the page by seconds."""
        data = self.page.evaluate("""() => {
            const n = ts.recording.reduce((a, b) => a + b.samples.length, 0), all = new Float32Array(n);
            let o = 0;
            for (const b of ts.recording) { all.set(b.samples, o); o += b.samples.length; }
            const u8 = new Uint8Array(all.buffer);
            let bin = "";  // the played audio as base64 float32: a JSON array of numbers is slow to hand over
            for (let i = 0; i < u8.length; i += 0x8000)
              bin += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
            const d = {log: ts.log, recording: ts.recording.map((b) => ({perf: b.perf, n: b.samples.length})),
            samples: btoa(bin), stats: ts.stats,
            closed: ts.closed, energy: ts.heardEnergy, blocks: ts.blocks, reanchors: ts.reanchors,
            catchups: ts.catchups,
            state: ctx ? ctx.state : null, rate: ctx ? ctx.sampleRate : null, ready: ts.ready};
            ts.log = []; ts.recording = []; return d; }""")
        samples, o = np.frombuffer(base64.b64decode(data.pop("samples")), np.float32), 0
        for b in data["recording"]:
            b["samples"], o = samples[o : o + b["n"]], o + b["n"]
        end = time.time() + wait
        while self.keep and time.time() < end and any(e["i"] not in self.frames for e in data["log"]):
            self.page.wait_for_timeout(100)
        return data


CONTENT_LEVELS = {"content": ("full", "one_step"), "content_tiny_decoder": ("tiny_decoder",)}


def analyse(data: dict, frames: dict, truth: np.ndarray, reference: np.ndarray, skip_s: float = 1.0) -> dict:
    """Frame rate, offsets by clock and by content, levels, for one recorded window of a page. The content
    offset is measured on the frames the student made (``CONTENT_LEVELS``: at full quality, and decoded by
    the tiny decoder, separately), each frame's audio located by the 2 s piece of played audio it is in."""
    from inference.live_measure import content_offset, locate, locate_pieces, mouth_of_jpegs, timing_offset

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
    levels = np.array([e["level"] for e in log])  # the level of each drawn frame, as the page got it
    missing = (None, "missing", np.nan, np.nan)
    out["_sent"] = np.array([frames.get(int(i), missing)[2] for i in idx])
    out["_rms"] = np.array([frames.get(int(i), missing)[3] for i in idx])
    out["levels"] = {str(lv): int((levels == lv).sum()) for lv in sorted(set(levels))}
    out["packets_missing"] = int(sum(int(i) not in frames for i in idx))
    out["_shown"], out["_index"], out["_levels"] = shown, idx, levels
    have = [k for k, i in enumerate(idx) if int(i) in frames]
    mouth = np.full(len(idx), np.nan, np.float32)
    if have:
        mouth[have] = mouth_of_jpegs([frames[int(idx[k])][0] for k in have])
    out["_mouth"] = mouth
    if data["recording"]:
        ref_start, peak = locate(data["recording"], reference)
        pieces = locate_pieces(data["recording"], reference, near_ms=ref_start)
        played = np.concatenate([np.asarray(b["samples"], np.float32) for b in data["recording"]])
        corr, at = np.array([p[3] for p in pieces] or [0.0]), np.array([p[2] for p in pieces] or [ref_start])
        out["heard_audio"] = {"correlation_with_microphone": peak, "clip_start_heard_at_ms": ref_start,
                              "rms": float(np.sqrt(np.mean(played**2))), "pieces": len(pieces),
                              "piece_correlation_median": float(np.median(corr)),
                              "piece_start_spread_ms": float(np.ptp(at))}  # fmt: skip
        heard = np.array([e["heard"] for e in log])
        starts = _piece_start(pieces, heard) if pieces else np.full(len(heard), ref_start)
        out["_ref_start"] = starts
        for name, group in CONTENT_LEVELS.items():
            gen = np.isin(levels, group) & ~np.isnan(mouth)
            out[f"{name}_frames"] = int(gen.sum())
            if gen.sum() >= 20:
                delta, corr = content_offset(shown[gen], mouth[gen], starts[gen], truth)
                out[name] = {"offset_ms": delta, "correlation": corr}
        out["generated_frames"] = out["content_frames"]
    return out


def _piece_start(pieces: list[tuple[float, float, float, float]], heard: np.ndarray) -> np.ndarray:
    """Per frame heard at ``heard`` (perf ms): the clip's start as located in the piece of played audio it is
    in (the nearest piece when it is in none, e.g. a silence); a page restart moves the clip between pieces."""
    lo, hi = np.array([p[0] for p in pieces]), np.array([p[1] for p in pieces])
    dist = np.maximum(lo[None] - heard[:, None], 0) + np.maximum(heard[:, None] - hi[None], 0)
    return np.array([p[2] for p in pieces])[np.argmin(dist, axis=1)]


def _window(probe: PageProbe, seconds: float, speech) -> dict:
    probe.keep = True
    probe.take(wait=0.0)  # the log starts here
    probe.record(True)
    probe.wait(seconds)
    probe.record(False)
    data = probe.take()
    res = analyse(data, probe.frames, speech.mouth_open, speech.audio)
    probe.frames.clear()
    probe.keep = False
    return {k: v for k, v in res.items() if not k.startswith("_")}


def decoder_check(folder: Path) -> dict:
    """Whether the mouths of frames decoded by the tiny decoder read right (so that frames of level
    tiny_decoder can carry the content offset): ``turbosync lipsync --no-degrade`` on an 11 s synthetic-world
    clip with a 3 s pause, decoder=vae and decoder=tiny; the mouths read from the frames against the truth."""
    from distill.synthworld.measure import measure_mouth
    from inference.live_measure import content_offset
    from scripts.cli import main as cli
    from teacher.media import read_video

    assets = make_assets(folder, 8.0, pauses=((4.0, 3.0),))
    truth, out = assets["speech"].mouth_open, {}
    for decoder in ("vae", "tiny"):
        path = folder / f"lipsync_{decoder}.mp4"
        args = ["lipsync", "--avatar", str(assets["avatar"]), "--audio", str(assets["wav"]), "--no-degrade"]
        if cli([*args, "--out", str(path), f"decoder={decoder}"]) != 0:
            raise RuntimeError(f"lipsync with decoder={decoder} failed")
        mouth = measure_mouth(read_video(path, fps=25)[0])
        n = min(len(mouth), len(truth))
        m, t = mouth[:n], truth[:n]
        delta, corr = content_offset(40.0 * np.arange(n), m, 0.0, t)
        out[decoder] = {"correlation_with_truth": float(np.corrcoef(m, t)[0, 1]), "content_offset_ms": delta,
                        "correlation_at_offset": corr, "silent_mouth_mean": float(m[t == 0].mean()),
                        "silent_mouth_std": float(m[t == 0].std()),
                        "speech_mouth_mean": float(m[t > 0].mean())}  # fmt: skip
    return out


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="streaming time between the two windows")
    p.add_argument("--window", type=float, default=30.0, help="seconds recorded at the start and at the end")
    p.add_argument("--out", type=Path, default=Path("runs/bench_live.json"))
    p.add_argument("--work", type=Path, default=Path("runs/bench_live_assets"))
    p.add_argument("--delay", type=float, default=0.0, help="`turbosync stream --delay`: output delay on top "
                   "of the engine's latency (more of a slow engine's frames in time)")  # fmt: skip
    args = p.parse_args(argv)
    decoders = decoder_check(args.work / "decoders")
    print("decoders:", json.dumps(decoders), flush=True)
    total = 60 * args.minutes + 2 * args.window + 30
    assets = make_assets(args.work, total, pauses=())
    t0, load = time.time(), [os.getloadavg()[0]]
    cmd = ["--avatar", str(assets["avatar"]), "--mic", "--sessions", "1", "--delay", str(args.delay)]
    with server(*cmd) as (_, url), sync_playwright() as pw:
        browser = launch_chromium(pw, assets["wav"])
        probe = PageProbe(browser, url)
        probe.keep = False
        time.sleep(5)
        start = _window(probe, args.window, assets["speech"])
        end_at = time.time() + 60 * args.minutes
        while time.time() < end_at:
            time.sleep(5)
            probe.take()  # keep the page's log short
            load.append(os.getloadavg()[0])
        end = _window(probe, args.window, assets["speech"])
        browser.close()
    report = {"minutes_between_windows": args.minutes, "window_s": args.window, "delay_s": args.delay,
              "start": start, "end": end,
              "wall_s": time.time() - t0, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "load_1min": {"min": min(load), "median": float(np.median(load)), "max": max(load)},
              "decoders": decoders,
              "drift_ms": {"timing": end["timing"]["mean_ms"] - start["timing"]["mean_ms"]}}  # fmt: skip
    if "heard_audio" in start and "heard_audio" in end:  # the microphone-to-ear path (input clock padding included)
        report["drift_ms"]["voice_path"] = (end["heard_audio"]["clip_start_heard_at_ms"]
                                            - start["heard_audio"]["clip_start_heard_at_ms"])  # fmt: skip
    for name in CONTENT_LEVELS:
        if name in start and name in end:
            report["drift_ms"][name] = end[name]["offset_ms"] - start[name]["offset_ms"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
