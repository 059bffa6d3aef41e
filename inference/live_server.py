"""The live preview: an aiohttp server with one engine process per session and the page in ``inference/static``.

    turbosync stream --student DIR (--video V | --avatar DIR) (--audio FILE | --mic) --serve [--port P]

Protocol (one websocket per session at ``/ws``; the page is ``/``):

    client -> server   text  {"type": "hello", "sample_rate": 16000}      first, within 10 s
                       bytes AUDIO_HEADER + int16 PCM at 16 kHz            (--mic sessions only)
                       text  {"type": "mic", "on": true | false}          informational
    server -> client   text  {"type": "ready", "session", "fps", "latency", "sample_rate", "source"}
                       bytes FRAME_HEADER + 640 int16 samples + JPEG      one per frame, 25 a second
                       text  {"type": "stats", ...}                       once a second

Nothing a client sends names a file or a model: the student, the avatar and the audio file are fixed when
the server starts. A malformed message (random bytes, a bad hello, audio that is not 16 kHz 16-bit PCM or
arrives faster than real time), one over ``max_message`` bytes, or a client that leaves, ends that session
only, with a close code and a reason; the engine process goes back to the pool. The server binds
127.0.0.1 unless told otherwise. Pacing and A/V alignment: ``inference.live``. A frame's level says who
made it: the engine (full, one_step, tiny_decoder), or the avatar's own frame (pass_through: the engine's
cheapest level; late: the engine's frame missed its time; idle: a silence on a machine that fell behind,
``Session._idles``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from inference.live import (
    SAMPLES_PER_FRAME,
    InputClock,
    encode_jpeg,
    frame_due,
    pack_frame,
    unpack_audio,
)
from inference.live_worker import Worker, WorkerSpec
from inference.run import SAMPLE_RATE, InputError

STATIC = Path(__file__).resolve().parent / "static"
TICK = 0.01  # pacing loop period (s)
RESYNC_FRAMES = 50  # an engine this many frames behind the output clock restarts at the live position
SILENCE_RMS = 0.01  # a frame whose 40 ms of audio is below this RMS (-40 dBFS) is silent
IDLE_MARGIN = 3  # frames of audio either side of a frame that must be silent too (the audio window + onset)
AVATAR_LEVELS = ("tiny_decoder", "pass_through", "late")  # a frame at these levels starts idling in silence


@dataclass
class ServeConfig:
    """Server settings. ``audio``: the file source (float32 16 kHz) or None for the page's microphone."""

    spec: WorkerSpec
    latency: float
    audio: np.ndarray | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    sessions: int = 2
    jitter: float = 0.1
    max_message: int = 1 << 16
    out: Path | None = None
    engine: Any = None  # ``live_worker.load_engine(spec)`` when already loaded


class Pool:
    """Engine workers, forked from one engine loaded here; a session borrows one and gives it back."""

    def __init__(self, spec: WorkerSpec, size: int, engine=None):
        from inference.live_worker import load_engine

        self.engine = engine or load_engine(spec)
        # The loaded engine (torch, the models: a few hundred thousand objects) leaves the garbage collector's
        # view: a full collection over it took 1.6 s on a busy machine and held every session's pacing (and a
        # worker's chunk). The workers fork after this and inherit it.
        gc.freeze()
        self.workers = [Worker(self.engine) for _ in range(size)]
        self.free: list[Worker] = []
        self.closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self.workers:
            await loop.run_in_executor(None, w.wait_ready)
        self.free = list(self.workers)

    def replace(self, broken: Worker) -> None:
        """A worker that did not answer is killed; a fresh one joins the pool once it is up (not at shutdown)."""
        broken.close()
        if self.closing:
            return
        fresh = Worker(self.engine)
        self.workers[self.workers.index(broken)] = fresh

        async def join():
            try:
                await asyncio.get_running_loop().run_in_executor(None, fresh.wait_ready)
            except (OSError, EOFError, RuntimeError) as err:  # closed meanwhile (shutdown), or failed to start
                print(f"engine worker not replaced: {err}", file=sys.stderr, flush=True)
                return
            self.free.append(fresh)

        asyncio.ensure_future(join())

    def close(self) -> None:
        self.closing = True
        for w in self.workers:
            w.close()


class AvatarJpegs:
    """The avatar's own frames as JPEGs (what leaves when the engine is late), encoded once, shared by sessions."""

    def __init__(self, path: Path):
        self.frames = np.load(path, mmap_mode="r")
        self.count = len(self.frames)
        self._jpegs: dict[int, bytes] = {}

    def __call__(self, k: int) -> bytes:
        if k not in self._jpegs:
            self._jpegs[k] = encode_jpeg(np.asarray(self.frames[k]))
        return self._jpegs[k]


class SessionClosed(Exception):
    """Ends a session; ``code`` and ``reason`` go to the client in the close frame."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class Session:
    """One client: input clock -> engine worker -> output clock -> websocket."""

    def __init__(self, sid: int, ws: web.WebSocketResponse, worker: Worker, cfg: ServeConfig, avatar_frames):
        self.sid, self.ws, self.worker, self.cfg = sid, ws, worker, cfg
        self.avatar_frames = avatar_frames
        self.t0 = time.perf_counter()
        self.clock = InputClock(self.t0, jitter=cfg.jitter)
        self.ready: dict[int, tuple[bytes, str]] = {}
        self.out_audio = np.zeros(0, np.float32)  # fed audio from sample out_base on
        self.out_base = 0
        self.to_send = np.zeros(0, np.float32)  # fed to the clock, not yet sent to the worker
        self.pending = False
        self.next_out = 0
        self.sent_log: list[tuple[float, str]] = []
        self.file_pos = 0
        self.engine_frames = 0  # frames the engine returned (on time or not)
        self.engine_base = 0  # output index of the engine's frame 0 (moves when the engine restarts)
        self.engine_next = 0  # output index of the next frame the engine returns
        self.skip = 0  # fed samples the engine does not get (up to its restart point)
        self.resyncs = 0
        self.last_level = "full"
        self.idle = False  # in a silence, showing the avatar's own frames until speech resumes
        self.last_loud = -(1 << 30)  # the last sent frame with audio above SILENCE_RMS
        self.lateness: list[float] = []
        self.send_late = 0.0  # the latest a frame left after its time in the last second (s; a busy server)
        self.ended = asyncio.get_running_loop().create_future()

    # worker side ------------------------------------------------------------------------------------------
    def on_worker(self, msg: tuple | None) -> None:
        """One message of the worker (``Worker.listen``); None: the worker is gone."""
        if msg is None:
            self.pending = False
            if not self.ended.done():
                self.ended.set_exception(RuntimeError("engine worker died"))
        elif msg[0] == "frames":
            _, first, level, jpegs, last = msg
            self.engine_frames += len(jpegs)
            for j, jpeg in enumerate(jpegs):
                if self.engine_base + first + j >= self.next_out:  # a frame that missed its time: dropped
                    self.ready[self.engine_base + first + j] = (jpeg, level)
            self.engine_next = self.engine_base + first + len(jpegs)
            if jpegs:  # how long after its time the engine's last frame came (negative: in time)
                due = frame_due(self.t0, self.cfg.latency, self.engine_next - 1)
                self.lateness.append(time.perf_counter() - due)
            self.last_level = level if jpegs else self.last_level
            if last:  # the worker is idle again
                self.pending = False
                self._maybe_resync()
        elif msg[0] == "ended":
            self.pending = False
            if not self.ended.done():
                self.ended.set_result(msg[1])

    def _maybe_resync(self) -> None:
        """An engine that fell RESYNC_FRAMES behind (an overloaded machine) would stay behind for good:
        restart it at the next frame boundary of the input (not when recording: the mp4 keeps every frame)."""
        if self.cfg.out is not None or self.next_out - self.engine_next < RESYNC_FRAMES:
            return
        self.worker.conn.send(("abort",))
        self.worker.conn.send(("start", None, "pass_through" if self.last_level == "late" else self.last_level))
        base = -(-self.clock.fed // SAMPLES_PER_FRAME)
        self.skip = base * SAMPLES_PER_FRAME - self.clock.fed
        self.to_send = np.zeros(0, np.float32)
        self.engine_base = self.engine_next = base
        self.resyncs += 1

    def _feed(self, now: float) -> None:
        if self.cfg.audio is not None:  # file source: the file arrives at the clock's pace, then silence
            upto = min(self.clock.due(now), len(self.cfg.audio))
            if upto > self.file_pos:
                self.clock.push(self.cfg.audio[self.file_pos : upto], now)
                self.file_pos = upto
        piece = self.clock.take(now)
        if len(piece):
            self.out_audio = np.concatenate([self.out_audio, piece])
            k = min(self.skip, len(piece))
            self.skip -= k
            self.to_send = np.concatenate([self.to_send, piece[k:]])
        if len(self.to_send) and not self.pending:
            self.worker.conn.send(("audio", self.to_send))
            self.to_send = np.zeros(0, np.float32)
            self.pending = True

    # output side ------------------------------------------------------------------------------------------
    def _passthrough(self, i: int) -> bytes:
        from inference.avatar import pingpong

        k = i - self.engine_base if i >= self.engine_base else i  # the avatar frame the engine would use
        return self.avatar_frames(int(pingpong(k, self.avatar_frames.count)))

    async def _emit(self, now: float) -> None:
        while now >= frame_due(self.t0, self.cfg.latency, self.next_out):
            i = self.next_out
            a0 = i * SAMPLES_PER_FRAME - self.out_base
            audio = self.out_audio[a0 : a0 + SAMPLES_PER_FRAME]
            if len(audio) < SAMPLES_PER_FRAME:
                audio = np.pad(audio, (0, SAMPLES_PER_FRAME - len(audio)))
            jpeg, level = self.ready.pop(i, (None, "late"))
            if self._idles(i, audio, level):
                jpeg, level = None, "idle"
            if jpeg is None:
                jpeg = self._passthrough(i)
            self.send_late = max(self.send_late, time.perf_counter() - frame_due(self.t0, self.cfg.latency, i))
            await self.ws.send_bytes(pack_frame(i, level, audio, jpeg, time.time()))
            self.sent_log.append((now, level))
            self.next_out += 1
            drop = self.next_out * SAMPLES_PER_FRAME - self.out_base
            if drop > 0:
                self.out_audio, self.out_base = self.out_audio[drop:], self.out_base + drop

    def _idles(self, i: int, audio: np.ndarray, level: str) -> bool:
        """Whether frame i (its 640 samples ``audio``) leaves as the avatar's own frame, level "idle".

        Hysteresis against flicker: on a machine that cannot keep up, an engine falling behind alternates
        frames it made in time (the toy student's silent mouth reads 0.10 +- 0.03 open through the tiny
        decoder, 0 through the VAE) with the avatar's own frames (late, pass-through; closed) chunk by chunk,
        and the mouth flickers in a pause. So once a
        frame in a silence comes at one of ``AVATAR_LEVELS``, the avatar's own frames stay until speech is
        within ``IDLE_MARGIN`` frames; then the engine's frames lead again (the mouth moves there anyway).
        An engine that keeps up never idles: its frames are what the stream shows."""
        if _rms(audio).max() >= SILENCE_RMS:
            self.last_loud = i
        a0 = (i + 1) * SAMPLES_PER_FRAME - self.out_base  # the next frames' audio (fed: the input runs ahead)
        ahead = self.out_audio[a0 : a0 + IDLE_MARGIN * SAMPLES_PER_FRAME]
        if i - self.last_loud <= IDLE_MARGIN or (len(ahead) and _rms(ahead).max() >= SILENCE_RMS):
            self.idle = False
        elif level in AVATAR_LEVELS:
            self.idle = True
        return self.idle

    def _stats(self, now: float) -> dict:
        recent = [lv for t, lv in self.sent_log if t > now - 1.0]
        self.sent_log = [x for x in self.sent_log if x[0] > now - 1.0]
        levels = {lv: recent.count(lv) for lv in set(recent)}
        self.lateness, lateness = [], self.lateness
        self.send_late, send_late = 0.0, self.send_late
        behind = any(lv != "full" for lv in recent)  # idle frames too: they follow a fallback
        c = self.clock
        return {"type": "stats", "fps": len(recent), "levels": levels, "behind": behind,
                "latency_ms": round(1000 * self.cfg.latency), "padded_s": round(c.padded / SAMPLE_RATE, 2),
                "dropped_s": round(c.dropped / SAMPLE_RATE, 2), "frames": self.next_out,
                "engine_frames": self.engine_frames, "fed_s": round(c.fed / SAMPLE_RATE, 2),
                "resyncs": self.resyncs, "engine_ms_after_due": _median_ms(lateness),
                "send_late_ms": round(1000 * send_late)}  # fmt: skip

    async def pace(self) -> None:
        """The session's clock: feed the engine, send due frames, stats every second."""
        next_stats = self.t0 + 1.0
        while True:
            now = time.perf_counter()
            self._feed(now)
            await self._emit(now)
            if now >= next_stats:
                await self.ws.send_str(json.dumps(self._stats(now)))
                next_stats += 1.0
            await asyncio.sleep(max(0.0, min(TICK, frame_due(self.t0, self.cfg.latency, self.next_out) - now)))

    # client side ------------------------------------------------------------------------------------------
    async def receive(self) -> None:
        """Client messages until it leaves; SessionClosed for anything malformed."""
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                if self.cfg.audio is not None:
                    raise SessionClosed(1008, "this server streams a file: it takes no audio")
                try:
                    self.clock.push(unpack_audio(msg.data), time.perf_counter())
                except InputError as err:
                    raise SessionClosed(1003, str(err)) from None
            elif msg.type == WSMsgType.TEXT:
                data = _json(msg.data)
                if data.get("type") not in ("mic", "ping"):
                    raise SessionClosed(1008, f"unknown message type {str(data.get('type'))[:40]!r}")
            elif msg.type == WSMsgType.ERROR:  # aiohttp already sent the close frame with the code
                if getattr(msg.data, "code", None) == 1009:
                    raise SessionClosed(1009, f"message too big (over {self.cfg.max_message} bytes)")
                raise SessionClosed(getattr(msg.data, "code", 1002) or 1002, f"protocol error: {msg.data}"[:100])
            else:
                break


def _rms(audio: np.ndarray) -> np.ndarray:
    """RMS of each 40 ms frame of ``audio`` [n] (a last partial frame included): [ceil(n / 640)]."""
    n = -(-len(audio) // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
    x = np.pad(audio, (0, n - len(audio))).reshape(-1, SAMPLES_PER_FRAME)
    return np.sqrt(np.mean(x**2, axis=1))


def _median_ms(x: list[float]) -> float | None:
    return round(1000 * float(np.median(x)), 1) if x else None


def _json(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError:
        raise SessionClosed(1007, "not JSON") from None
    if not isinstance(data, dict):
        raise SessionClosed(1007, "a message must be a JSON object")
    return data


async def _hello(ws: web.WebSocketResponse) -> None:
    msg = await ws.receive(timeout=10.0)
    if msg.type != WSMsgType.TEXT:
        raise SessionClosed(1008, "the first message must be the JSON hello")
    data = _json(msg.data)
    if data.get("type") != "hello":
        raise SessionClosed(1008, "the first message must be the JSON hello")
    if data.get("sample_rate") != SAMPLE_RATE:
        raise SessionClosed(1003, f"audio must be {SAMPLE_RATE} Hz mono 16-bit PCM, got sample_rate "
                                  f"{str(data.get('sample_rate'))[:20]}")  # fmt: skip


class LiveApp:
    """The aiohttp application: the page, the websocket, the pool."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.pool = Pool(cfg.spec, cfg.sessions, cfg.engine)
        self.avatar_frames = AvatarJpegs(Path(cfg.spec.avatar) / "frames.npy")
        self.next_sid = 1
        self.closed: list[tuple[int, int, str]] = []  # (session, code, reason), for the log and the tests
        self.app = web.Application()
        self.app.router.add_get("/", self.index)
        self.app.router.add_get("/ws", self.websocket)
        self.app.router.add_get("/favicon.ico", lambda request: web.Response(status=204))
        self.app.router.add_static("/static/", STATIC)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_message, heartbeat=None, timeout=2.0)
        await ws.prepare(request)
        sid, self.next_sid = self.next_sid, self.next_sid + 1
        worker = None
        code, reason = 1000, "client left"
        try:
            await _hello(ws)
            if not self.pool.free:
                raise SessionClosed(1013, f"all {self.cfg.sessions} engine workers are busy: try again later")
            worker = self.pool.free.pop(0)
            await self._run(sid, ws, worker)
        except SessionClosed as err:
            code, reason = err.code, err.reason
        except TimeoutError:
            code, reason = 1008, "no hello within 10 s"
        except ConnectionError:
            code, reason = 1001, "client left"
        except RuntimeError as err:
            code, reason = 1011, f"engine worker failed: {err}"
        except Exception as err:  # noqa: BLE001 - a bug ends this session only, and is logged
            import traceback

            traceback.print_exc()
            code, reason = 1011, f"server error: {type(err).__name__}"
        self.closed.append((sid, code, reason))
        print(f"session {sid} closed ({code}): {reason}", file=sys.stderr, flush=True)
        if not ws.closed:
            await ws.close(code=code, message=reason.encode()[:120])
        return ws

    async def _run(self, sid: int, ws: web.WebSocketResponse, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        out = None
        if self.cfg.out is not None:
            out = str(self.cfg.out.with_name(f"{self.cfg.out.stem}-{sid}{self.cfg.out.suffix}"))
        session = Session(sid, ws, worker, self.cfg, self.avatar_frames)
        worker.listen(loop, session.on_worker)
        worker.conn.send(("start", out))
        await ws.send_str(json.dumps({"type": "ready", "session": sid, "fps": 25, "sample_rate": SAMPLE_RATE,
                                      "latency": self.cfg.latency,
                                      "source": "file" if self.cfg.audio is not None else "mic"}))  # fmt: skip
        pace, receive = asyncio.ensure_future(session.pace()), asyncio.ensure_future(session.receive())
        tasks = [pace, receive]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():  # the connection broke under a send: the receiving side knows why
                await asyncio.wait([receive], timeout=3.0)
            if receive.done():
                receive.result()  # SessionClosed with the reason, or None: the client left
            if pace.done() and not isinstance(pace.exception(), ConnectionError | type(None)):
                pace.result()
        finally:
            for t in tasks:
                t.cancel()
            # The session is over now; its engine goes back to the pool once it has finished its chunk.
            asyncio.ensure_future(self._release(session, out is not None))

    async def _release(self, session: Session, flush: bool) -> None:
        """Finish the worker's session (flush and write the mp4 when recording), stop listening to it, and give
        it back to the pool (or replace it when it did not answer)."""
        worker = session.worker
        ok = False
        try:
            ok = await self._finish(session, flush)
        except asyncio.CancelledError:  # the server is shutting down: the pool closes every worker
            worker.stop_listening(wait=False)
            raise
        else:
            await asyncio.get_running_loop().run_in_executor(None, worker.stop_listening)
            if ok:
                self.pool.free.append(worker)
            else:
                self.pool.replace(worker)

    async def _finish(self, session: Session, flush: bool) -> bool:
        deadline = time.perf_counter() + 30.0
        while session.pending and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if session.pending:
            return False
        try:
            session.worker.conn.send(("end",) if flush else ("abort",))
            if flush:
                session.pending = True
                await asyncio.wait_for(session.ended, 60.0)
        except (TimeoutError, OSError, RuntimeError):
            return False
        return True


async def serve(cfg: ServeConfig, started=None) -> None:
    """Run the server until cancelled; ``started(url)`` is called once the workers are loaded and it listens."""
    live = LiveApp(cfg)
    await live.pool.start()
    runner = web.AppRunner(live.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the real port when cfg.port is 0
    url = f"http://{cfg.host}:{port}/"
    if started is not None:
        started(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        live.pool.close()
