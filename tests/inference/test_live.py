"""``turbosync stream``: the clocks, the packets, file streaming equal to ``turbosync lipsync``, A/V sync by
content through engine + pacing + websocket, and a server that closes misbehaving sessions only."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from inference.live import (
    InputClock,
    frame_due,
    output_latency,
    pack_audio,
    pack_frame,
    unpack_audio,
    unpack_frame,
)
from inference.run import InputError
from scripts.bench_live import make_assets, server


def test_input_clock_feeds_real_time_pads_pauses_and_trims_bursts():
    c = InputClock(t0=0.0, jitter=0.1, max_buffer=0.4)
    c.push(np.ones(1600, np.float32), now=0.0)
    assert len(c.take(0.05)) == 800 and c.padded == 0  # never ahead of the clock
    assert len(c.take(0.10)) == 800
    assert len(c.take(0.15)) == 0  # 50 ms short: within the jitter allowance, nothing is invented
    out = c.take(0.30)  # 200 ms short: silence beyond the 100 ms allowance keeps the clock
    assert len(out) == 1600 and not out.any() and c.padded == 1600 and c.fed == 4800 - 1600  # lags by the allowance
    c.push(np.ones(16000, np.float32), now=0.31)  # a 1 s burst: the oldest part beyond 0.4 s is dropped
    assert c.dropped > 0 and c.dropped + c._buffered == 16000
    c2 = InputClock(t0=0.0)
    c2.push(np.zeros(16000, np.float32), now=0.0)
    with pytest.raises(InputError, match="faster than real time"):  # 48 kHz audio sent as 16 kHz
        for k in range(1, 5):
            c2.push(np.zeros(48000, np.float32), now=float(k))


def test_packets_round_trip_and_garbage_is_named():
    audio = np.sin(np.arange(640) / 7).astype(np.float32) * 0.5
    f = unpack_frame(pack_frame(12, "one_step", audio, b"\xff\xd8jpeg", 3.5))
    assert (f["index"], f["level"], f["jpeg"], f["sent"]) == (12, "one_step", b"\xff\xd8jpeg", 3.5)
    assert np.abs(f["audio"] - audio).max() < 1e-4
    assert np.abs(unpack_audio(pack_audio(0, audio)) - audio).max() < 1e-4
    for bad, why in ((b"\x00" * 11, "not an audio packet"), (b"TSA1" + b"\x00" * 5, "16-bit"),
                     (pack_audio(0, np.zeros(20000, np.float32)), "at most")):  # fmt: skip
        with pytest.raises(InputError, match=why):
            unpack_audio(bad)
    assert abs(frame_due(10.0, 1.0, 25) - 12.0) < 1e-9


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("live"), 3.0, pauses=())


def _frames(path):
    from teacher.media import read_video

    return read_video(path, fps=25)[0].astype(np.float64)


def test_stream_without_degradation_writes_the_frames_of_lipsync(assets, tmp_path):
    from scripts.cli import main

    a, b = tmp_path / "stream.mp4", tmp_path / "lipsync.mp4"
    common = ["--avatar", str(assets["avatar"]), "--audio", str(assets["wav"]), "--no-degrade"]
    assert main(["stream", *common, "--out", str(a)]) == 0
    assert main(["lipsync", *common, "--out", str(b)]) == 0
    fa, fb = _frames(a), _frames(b)
    assert fa.shape == fb.shape and len(fa) == 75
    assert np.abs(fa - fb).sum() / np.abs(fb).sum() < 1e-4


def test_stream_file_hands_every_frame_and_its_audio_to_a_callback(assets):
    from inference.live import stream_file
    from inference.run import load_engine_config
    from scripts.cli import TOY_STUDENT

    audio, got = assets["speech"].audio[:16000], []
    cfg = load_engine_config(degrade=False)
    report = stream_file(TOY_STUDENT, None, None, avatar=assets["avatar"], audio=audio, cfg=cfg,
                         on_frame=lambda i, f, a: got.append((i, f, a)))  # fmt: skip
    assert report.frames == 25 and [i for i, _, _ in got] == list(range(25))
    assert all(f.shape == (256, 256, 3) and np.array_equal(a, audio[640 * i : 640 * (i + 1)]) for i, f, a in got)
    assert len(report.lateness) == 25 and report.latency > 1.0


def test_stream_errors_are_one_line(assets, capsys):
    from scripts.cli import main

    assert main(["stream", "--avatar", str(assets["avatar"]), "--mic", "--out", "x.mp4"]) == 2
    assert "--mic needs --serve" in capsys.readouterr().err
    assert main(["stream", "--avatar", str(assets["avatar"]), "--audio", str(assets["wav"])]) == 2
    assert "nothing to do" in capsys.readouterr().err


async def _receive(url: str, audio: np.ndarray | None, seconds: float, hello: dict | None = None) -> dict:
    """A well-behaved client: hello, microphone audio in 20 ms packets at real time (if given), frames out."""
    import aiohttp

    from inference.live import pack_audio

    got, texts = [], []
    async with aiohttp.ClientSession() as s, s.ws_connect(url + "ws") as ws:
        await ws.send_str(json.dumps(hello or {"type": "hello", "sample_rate": 16000}))

        async def send():
            t0 = time.perf_counter()
            for k, s0 in enumerate(range(0, len(audio), 320)):
                await asyncio.sleep(max(0.0, t0 + s0 / 16000 - time.perf_counter()))
                await ws.send_bytes(pack_audio(k, audio[s0 : s0 + 320]))

        sender = asyncio.ensure_future(send()) if audio is not None else None
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            try:
                msg = await ws.receive(timeout=max(0.01, end - time.perf_counter()))
            except TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.BINARY:
                got.append((time.perf_counter(), unpack_frame(msg.data)))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                texts.append(json.loads(msg.data))
            else:
                break
        if sender is not None:
            sender.cancel()
    return {"frames": got, "texts": texts}


def test_av_sync_by_content_through_engine_pacing_and_websocket(assets):
    """The file source, no degradation and enough output delay that every frame is the engine's on a slow
    machine: the voice in each packet is located in the clip, the mouth in each packet's frame read from its
    pixels; the mouth matches the voice it left with (offset within one frame, 40 ms), and the packets
    arrive at 25 fps."""
    from inference.live_measure import content_offset, locate, mouth_of_jpegs

    sp = assets["speech"]
    with server("--avatar", str(assets["avatar"]), "--audio", str(assets["wav"]), "--no-degrade", "--delay", "6",
                "--sessions", "1") as (_, url):  # fmt: skip
        r = asyncio.run(_receive(url, None, 6 + 1.2 + 3.0 + 1.5))
    frames = [f for _, f in r["frames"]]
    assert [f["index"] for f in frames] == list(range(len(frames))) and len(frames) >= 75
    full = [f for f in frames[:75] if f["level"] == "full"]  # the rest came later than the delay: avatar frames
    assert len(full) >= 20, f"only {len(full)} of 75 frames came from the engine within the 6 s delay"
    times = np.array([t for t, _ in r["frames"]])
    assert abs((len(times) - 1) / (times[-1] - times[0]) - 25) <= 1
    blocks = [{"perf": 40.0 * f["index"], "samples": f["audio"]} for f in frames]
    ref_start, peak = locate(blocks, sp.audio)
    assert peak > 0.99 and abs(ref_start) < 1.0  # each packet carries exactly the voice of its frame
    mouth = mouth_of_jpegs([f["jpeg"] for f in full])
    delta, corr = content_offset(40.0 * np.array([f["index"] for f in full]), mouth, ref_start, sp.mouth_open)
    assert abs(delta) <= 40 and corr > 0.5, (delta, corr)


async def _misbehave(url: str, kind: str):
    """One misbehaving client; returns the close (code, reason) it got (retried while the pool is busy: the
    previous session's engine finishes its chunk before it is free again)."""
    for _ in range(120):
        got = await _misbehave_once(url, kind)
        if got[0] != 1013:
            return got
        await asyncio.sleep(0.5)
    raise AssertionError("no engine worker came free in 60 s")


async def _misbehave_once(url: str, kind: str):
    import aiohttp

    async with aiohttp.ClientSession() as s, s.ws_connect(url + "ws", max_msg_size=0) as ws:
        rng = np.random.default_rng(0)
        hello = {"type": "hello", "sample_rate": 48000 if kind == "rate_hello" else 16000}
        await ws.send_str(json.dumps(hello))
        if kind == "random_bytes":
            await ws.send_bytes(rng.bytes(5000))
        elif kind == "random_text":
            await ws.send_str("{\x00" + rng.bytes(100).hex())
        elif kind == "huge":
            try:
                await ws.send_bytes(bytes(100 * 1024 * 1024))
            except (ConnectionError, OSError):
                pass
        elif kind == "fast_audio":  # 48 kHz audio labelled 16 kHz: three times real time
            for k in range(400):
                if ws.closed:
                    break
                try:
                    await ws.send_bytes(pack_audio(k, np.zeros(960, np.float32)))
                except ConnectionError:  # closed by the server while we were still sending
                    break
                await asyncio.sleep(0.02)
        elif kind == "drop":
            msg = await ws.receive(timeout=30)  # "ready", or a close when busy
            if msg.type != aiohttp.WSMsgType.TEXT:
                return ws.close_code, str(msg.extra or "")
            await ws.receive(timeout=30)  # the first stats: mid-stream
            ws._response.connection.transport.abort()  # vanish mid-stream, no close frame
            return None, "dropped"
        while True:
            msg = await ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return msg.data, str(msg.extra or "")
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return ws.close_code, str(msg.extra or "")


def test_misbehaving_clients_are_closed_with_a_reason_while_another_keeps_25_fps(assets):
    import aiohttp

    async def run(url):
        names = {"student": "/etc/passwd", "avatar": "/root", "audio": "/etc/shadow", "preset": "../../x"}  # ignored
        hello = {"type": "hello", "sample_rate": 16000, **names}
        good = asyncio.ensure_future(_receive(url, np.tile(assets["speech"].audio, 4), 16.0, hello=hello))
        await asyncio.sleep(3.0)
        closes = {}
        for kind in ("random_bytes", "random_text", "huge", "rate_hello", "fast_audio", "drop"):
            closes[kind] = await _misbehave(url, kind)
        async with aiohttp.ClientSession() as s:  # nothing a client sends names a file on the server
            async with s.get(url + "static/../../../etc/passwd") as resp:
                assert resp.status in (403, 404)
        return closes, await good

    with server("--avatar", str(assets["avatar"]), "--mic", "--sessions", "2") as (proc, url):
        assert url.startswith("http://127.0.0.1:")  # bound to the loopback by default
        closes, good = asyncio.run(run(url))
        assert proc.poll() is None  # the server is still up
    log = proc.stderr.read()
    assert closes["random_bytes"][0] == 1003 and "not an audio packet" in closes["random_bytes"][1]
    assert closes["random_text"][0] == 1007 and "not JSON" in closes["random_text"][1]
    assert closes["rate_hello"][0] == 1003 and "16000 Hz" in closes["rate_hello"][1]
    # A client still sending when its session is closed may lose the close frame to the reset (then 1006; on a
    # busy machine the 100 MB sender often does); the server's log has the reason either way.
    assert closes["huge"][0] in (1009, 1006) and "closed (1009): message too big" in log, (closes["huge"], log)
    assert closes["fast_audio"][0] in (1003, 1006) and "closed (1003): audio arrives faster than real time" in log
    assert "client left" in log, log[-2000:]
    times = np.array([t for t, _ in good["frames"]])
    idx = [f["index"] for _, f in good["frames"]]
    assert idx == list(range(len(idx))) and len(idx) > 200
    assert abs((len(times) - 1) / (times[-1] - times[0]) - 25) <= 1, (len(times), times[-1] - times[0])
    assert good["texts"][0]["type"] == "ready" and not any(t.get("type") == "closed" for t in good["texts"])


def test_output_latency_is_the_engines_deadline_plus_jitter():
    from inference.engine import EngineConfig

    assert abs(output_latency(EngineConfig(chunk=8), 0.1) - (0.12 + 3 * 8 * 0.04 + 0.1)) < 1e-9
