"""One engine in its own process, for one live session at a time (``inference.live_server``'s pool).

A separate process per session keeps one session's U-Net call from holding the others' Python (the GIL
complaint of the anchors, DESIGN section 5). The serving process and a worker talk over a
``multiprocessing`` pipe:

    serving process -> worker                        worker -> serving process
    ("start", out_path | None[, level])              ("ready", {"frames": T})         once, after forking
    ("audio", float32 [n])   one at a time           ("frames", first, level, [jpeg], last)  per chunk made
    ("end",)                                          ("ended", stats)                  after the flush
    ("abort",)  the session ends unflushed            ("error", message)                and the worker exits
    ("quit",)   the worker exits

Each "audio" is answered by "frames" messages as its chunks are made, the last with ``last`` True (possibly
with no frames), so the serving process never has more
than one message in flight and never blocks on a full pipe. ``out_path``: the session's frames are also
written there with the same ``VideoWriter`` as ``turbosync lipsync`` (audio = what the engine was fed).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads: the student, a prepared avatar folder, the engine preset and options."""

    student: str
    avatar: str
    preset: str = "engine/toy"
    overrides: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    tiny_decoder: str | None = None
    threads: int = 1


WORKER_NICE = 5  # engines yield the CPU to the serving process (the clocks) and the browser when it is short


def worker_main(conn, engine) -> None:
    """The worker process (forked from the serving process, which loaded ``engine``): serve sessions until
    "quit" or until the pipe closes (the serving process is gone). It runs ``WORKER_NICE`` steps nicer: on a
    machine short of CPU the engine degrades (its frames are replaced, never waited for), while a starved
    serving process or page would stall the clock and the picture (seen in the browser test on 2 cores)."""
    import os

    os.nice(WORKER_NICE)
    for other in _PARENT_ENDS:  # the serving process's ends of every pipe: closing them lets EOF reach us
        other.close()
    conn.send(("ready", {"frames": engine[1].num_frames}))
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "quit":
                return
            if msg[0] == "start" and _session(conn, engine, *msg[1:]) == "quit":
                return
    except (EOFError, OSError, KeyboardInterrupt):
        return


def load_engine(spec: WorkerSpec, bundle=None):
    """(bundle, avatar, cfg, tiny decoder), loaded and warmed up once in the serving process with
    ``spec.threads`` torch threads; the workers fork from it and share the weights copy-on-write."""
    import torch

    torch.set_num_threads(spec.threads)
    return _load(spec, bundle)


def _load(spec: WorkerSpec, bundle=None):
    from inference.avatar import load_avatar
    from inference.run import _tiny_decoder, decoder_fallback, load_engine_config, load_student

    bundle = bundle or load_student(spec.student)
    decoder = _tiny_decoder(spec.tiny_decoder, bundle)
    cfg = load_engine_config(spec.preset, list(spec.overrides), **spec.options)
    if cfg.threads:  # the worker's thread count wins over the preset's
        from dataclasses import replace

        cfg = replace(cfg, threads=spec.threads)
    engine = bundle, load_avatar(spec.avatar, bundle), decoder_fallback(cfg, decoder), decoder
    _warm_up(engine)
    return engine


def _warm_up(engine) -> None:
    """One chunk through every stage, so a session's first chunk does not pay for first-call set-up."""
    from dataclasses import replace

    from inference.engine import flush, start, step

    bundle, av, cfg, decoder = engine
    state = start(av, bundle, replace(cfg, degrade=False), tiny_decoder=decoder)
    _, state = step(state, np.zeros(cfg.chunk * 640, np.float32))
    flush(state)


def _session(conn, engine, out_path: str | None, level: str = "full") -> str:
    """One stream: audio in, JPEG frames out, until "end" (flush), "abort" (no flush, no mp4) or "quit".
    ``level``: the degradation level to start at (a restarted engine keeps the level it had reached)."""
    from inference.engine import LEVELS, flush, start, step
    from inference.live import encode_jpeg
    from teacher.media import VideoWriter

    bundle, av, cfg, decoder = engine
    state = start(av, bundle, cfg, tiny_decoder=decoder, clock=time.perf_counter)
    state.level = LEVELS.index(level) if cfg.degrade else 0
    writer = VideoWriter(out_path, 25, sample_rate=16000) if out_path else None
    n = 0
    try:
        while True:
            msg = conn.recv()
            if msg[0] not in ("audio", "end"):  # "abort" or "quit": leave without a flush
                return msg[0]
            if msg[0] == "audio" and writer is not None:
                writer.write_audio(np.asarray(msg[1], np.float32))
            # 40 ms at a time, so a backlog of several chunks leaves chunk by chunk, each as soon as it is made
            pieces = [msg[1][s : s + 640] for s in range(0, len(msg[1]), 640)] if msg[0] == "audio" else [None]
            for k, piece in enumerate(pieces):
                before = dict(state.stats["levels"])
                frames, state = step(state, piece) if piece is not None else flush(state)
                level = next((lv for lv in reversed(LEVELS) if state.stats["levels"][lv] > before[lv]), "full")
                for f in frames:
                    if writer is not None:
                        writer.write(f)
                if frames or k == len(pieces) - 1:
                    conn.send(("frames", n, level, [encode_jpeg(f) for f in frames], k == len(pieces) - 1))
                n += len(frames)
            if msg[0] == "end":
                if writer is not None:
                    writer.close()
                    writer = None
                conn.send(("ended", {k: v for k, v in state.stats.items()}))
                return "end"
    finally:
        if writer is not None:
            writer.abort()


_PARENT_ENDS: list = []  # the serving process's pipe ends (closed in each forked worker)


class Worker:
    """A worker process seen from the serving process. ``fork``: the worker inherits the loaded engine (no
    second import or load); the serving process loads it with one torch thread and before any other thread
    that could hold a lock exists in torch, and the worker never touches the server's event loop."""

    def __init__(self, engine):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        _PARENT_ENDS.append(self.conn)
        self.process = ctx.Process(target=worker_main, args=(child, engine), daemon=True)
        self.process.start()
        child.close()
        self.info: dict[str, Any] | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()

    def listen(self, loop, handle) -> None:
        """Hand every message of the worker to ``handle(msg)`` on the event loop ``loop`` (None once the worker is
        gone), read by a thread: a chunk of JPEGs is larger than the pipe's buffer, and a ``recv`` in the loop
        would wait, holding every session's pacing, until a busy worker has written all of it."""
        self._stop.clear()

        def read() -> None:
            try:
                while not self._stop.is_set():
                    if self.conn.poll(0.05):
                        loop.call_soon_threadsafe(handle, self.conn.recv())
            except (EOFError, OSError):
                try:
                    loop.call_soon_threadsafe(handle, None)
                except RuntimeError:  # the loop is closed: the server is gone
                    pass
            except RuntimeError:
                pass

        self._reader = threading.Thread(target=read, name="worker-reader", daemon=True)
        self._reader.start()

    def stop_listening(self, wait: bool = True) -> None:
        """Stop the reading thread and (``wait``) wait for it, blocking at most 50 ms + one message: a worker is
        listened to by one thread at a time, or a message of the next session could go to this one."""
        self._stop.set()
        if wait and self._reader is not None:
            self._reader.join(5.0)
            self._reader = None

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise RuntimeError("the engine worker did not start in time")
        msg = self.conn.recv()
        if msg[0] != "ready":
            raise RuntimeError(f"the engine worker failed to start: {msg[1]}")
        self.info = msg[1]
        return self.info

    def close(self) -> None:
        """Ask the worker to quit; a busy one is terminated after a second."""
        self._stop.set()
        try:
            self.conn.send(("quit",))
        except (OSError, EOFError, BrokenPipeError):
            pass
        self.process.join(1)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)
        if self.conn in _PARENT_ENDS:
            _PARENT_ENDS.remove(self.conn)
        self.conn.close()
