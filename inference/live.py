"""The engine on the wall clock: audio paced in real time, frames out at 25 fps, the voice delayed to meet its lips.

    report = stream_file("assets/toy_student", "face.mp4", "speech.wav", out_path="out.mp4", on_frame=callback)
    turbosync stream --student DIR (--video V | --avatar DIR) (--audio FILE | --mic) [--out OUT.mp4] [--serve]

Two clocks meet here (DESIGN section 5, the LiveTalking complaints):

* Input: ``InputClock`` feeds the engine exactly 16 000 samples per wall-clock second from ``t0`` on. Audio
  that arrives (a file read at its pace, or a microphone over the network) waits in a small buffer; when it
  is missing for longer than ``jitter`` seconds (a paused or stopped microphone, a stall) silence is fed
  instead, so the stream keeps its clock and the avatar idles with a closed mouth; a buffer that grows past
  ``max_buffer`` (a sender's clock running fast) is trimmed from its oldest end. A sender that delivers far
  more than real time (audio at the wrong rate) is refused with ``InputError``.
* Output: frame i (audio samples [640 i, 640 (i + 1)) of what was fed) leaves at ``t0 + latency + 0.04 i``
  together with those 640 samples, so voice and lips leave together. ``latency`` = the engine's own deadline
  for the first frame of a chunk (120 ms lookahead + one chunk to fill + two chunks of compute, the rule of
  ``inference.engine._latency_budget`` seen from the chunk's first frame) + the input jitter allowance.
  When a frame is not ready at its time the avatar's own frame leaves in its place ("late"; the engine's
  degradation keeps this rare) and the audio does not wait: it never stutters.

The live server (``inference.live_server``) runs one engine per session in its own process
(``inference.live_worker``) with these two clocks in the serving process; ``stream_file`` runs the same
engine in this process, for files and for programs that embed the engine through ``on_frame``.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.engine import FRAME_SECONDS, EngineConfig
from inference.run import SAMPLE_RATE, InputError

SAMPLES_PER_FRAME = 640  # 40 ms at 16 kHz
LOOKAHEAD_SECONDS = 0.12  # Whisper's 120 ms of future audio per frame (DESIGN section 5)
AUDIO_MAGIC, FRAME_MAGIC = b"TSA1", b"TSF1"
AUDIO_HEADER = struct.Struct("<4sI")  # magic, sequence number; then int16 little-endian PCM at 16 kHz
FRAME_HEADER = struct.Struct("<4sIBBHd")  # magic, frame index, level, flags, audio samples, server send time (s)
LEVEL_CODES = {"full": 0, "one_step": 1, "tiny_decoder": 2, "pass_through": 3, "late": 4, "idle": 5}
MAX_AUDIO_PACKET = 16000  # samples in one client packet (1 s); larger packets are refused


def engine_latency(cfg: EngineConfig) -> float:
    """Seconds from a chunk's first audio sample to the engine's deadline for that chunk's first frame:
    lookahead + one chunk of audio to arrive + two chunks of compute (``engine._latency_budget`` + one chunk)."""
    return LOOKAHEAD_SECONDS + 3 * cfg.chunk * FRAME_SECONDS


def output_latency(cfg: EngineConfig, jitter: float) -> float:
    """The fixed delay of the outgoing audio and video behind the input clock (seconds)."""
    return engine_latency(cfg) + jitter


@dataclass
class InputClock:
    """Audio in at any pace, audio out to the engine at exactly ``rate`` samples per second from ``t0``.

    ``push(samples, now)`` stores arriving audio; ``take(now)`` returns what the engine gets now (buffered
    audio, then silence once the shortfall passes ``jitter`` seconds). Counters: ``fed`` samples given to the
    engine (``padded`` of them silence), ``dropped`` samples trimmed, ``received`` samples pushed.
    """

    t0: float
    rate: int = SAMPLE_RATE
    jitter: float = 0.1
    max_buffer: float = 0.4
    max_ahead: float = 5.0
    fed: int = 0
    padded: int = 0
    dropped: int = 0
    received: int = 0
    first_push: float | None = None
    _credit: float = 0.0  # seconds of audio a sender may still deliver ahead of 1.25 x real time
    _last_push: float = 0.0
    _buf: list[np.ndarray] = field(default_factory=list)
    _buffered: int = 0

    def push(self, samples: np.ndarray, now: float) -> None:
        """Store float32 mono samples at 16 kHz; InputError when the sender runs far faster than real time."""
        if self.first_push is None:
            self.first_push, self._last_push, self._credit = now, now, self.max_ahead
        self.received += len(samples)
        # A leaky bucket: 1.25 s of audio per second refills it (a fast sender clock, catching up after a stall),
        # up to max_ahead seconds of burst; 48 kHz audio sent as 16 kHz empties it within seconds.
        self._credit = min(self.max_ahead, self._credit + 1.25 * (now - self._last_push)) - len(samples) / self.rate
        self._last_push = now
        if self._credit < 0:
            got = f"{self.received / self.rate:.1f} s in {now - self.first_push:.1f} s"
            raise InputError(f"audio arrives faster than real time at {self.rate} Hz ({got}): wrong sample rate?")
        self._buf.append(np.asarray(samples, np.float32))
        self._buffered += len(samples)
        excess = self._buffered - max(0, self.due(now) - self.fed) - int(self.max_buffer * self.rate)
        if excess > 0:  # the sender's clock runs fast (or it sent a burst): keep the newest audio
            self._trim(excess)

    def _trim(self, n: int) -> None:
        data = np.concatenate(self._buf)[n:]
        self._buf, self._buffered = [data], len(data)
        self.dropped += n

    def due(self, now: float) -> int:
        """Samples the clock has reached at ``now``."""
        return max(0, int((now - self.t0) * self.rate))

    def take(self, now: float) -> np.ndarray:
        """The samples to feed the engine now (float32 [n]); never more than the clock allows."""
        want = self.due(now) - self.fed
        if want <= 0:
            return np.zeros(0, np.float32)
        n = min(want, self._buffered)
        data = np.concatenate(self._buf) if self._buf else np.zeros(0, np.float32)
        out, rest = data[:n], data[n:]
        self._buf, self._buffered = ([rest] if len(rest) else []), len(rest)
        short = want - n - int(self.jitter * self.rate)  # missing beyond the jitter allowance: silence
        if short > 0:
            out = np.concatenate([out, np.zeros(short, np.float32)])
            self.padded += short
        self.fed += len(out)
        return out


def frame_due(t0: float, latency: float, i: int) -> float:
    """When output frame i (with audio samples [640 i, 640 (i + 1))) leaves."""
    return t0 + latency + i * FRAME_SECONDS


def pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] -> int16 little-endian bytes."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def pack_frame(i: int, level: str, audio: np.ndarray, jpeg: bytes, sent: float) -> bytes:
    """One output packet: FRAME_HEADER, int16 audio of the frame, the JPEG."""
    return FRAME_HEADER.pack(FRAME_MAGIC, i, LEVEL_CODES[level], 0, len(audio), sent) + pcm16(audio) + jpeg


def unpack_frame(data: bytes) -> dict[str, Any]:
    """The inverse of ``pack_frame`` (for clients and tests)."""
    magic, i, level, _, n, sent = FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise ValueError("not a frame packet")
    a0 = FRAME_HEADER.size
    audio = np.frombuffer(data, "<i2", n, a0).astype(np.float32) / 32767.0
    level_name = {v: k for k, v in LEVEL_CODES.items()}[level]
    return {"index": i, "level": level_name, "audio": audio, "jpeg": data[a0 + 2 * n :], "sent": sent}


def pack_audio(seq: int, audio: np.ndarray) -> bytes:
    """One client audio packet (what the page sends): AUDIO_HEADER + int16 PCM at 16 kHz."""
    return AUDIO_HEADER.pack(AUDIO_MAGIC, seq) + pcm16(audio)


def unpack_audio(data: bytes) -> np.ndarray:
    """float32 samples of a client audio packet; InputError naming what is wrong with a malformed one."""
    if len(data) < AUDIO_HEADER.size or data[:4] != AUDIO_MAGIC:
        raise InputError("not an audio packet (expected 'TSA1' + sequence + 16-bit PCM)")
    n = len(data) - AUDIO_HEADER.size
    if n % 2:
        raise InputError("audio payload is not 16-bit PCM (odd number of bytes)")
    if n // 2 > MAX_AUDIO_PACKET:
        raise InputError(f"audio packet of {n // 2} samples (at most {MAX_AUDIO_PACKET})")
    return np.frombuffer(data, "<i2", offset=AUDIO_HEADER.size).astype(np.float32) / 32768.0


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB [H, W, 3] -> JPEG bytes (OpenCV)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class StreamReport:
    """What ``stream_file`` measured: frames, audio seconds, and per frame when it left the engine relative
    to its due time (``lateness`` seconds, negative = early), the levels used and the input counters."""

    frames: int
    audio_seconds: float
    latency: float
    lateness: np.ndarray
    stats: dict[str, Any]
    out_path: Path | None = None

    @property
    def late(self) -> int:
        return int((self.lateness > 0).sum())

    def summary(self) -> str:
        lv = {k: v for k, v in self.stats.get("levels", {}).items() if v}
        return (f"{self.frames} frames ({self.audio_seconds:.2f} s of audio) streamed in real time, output delay "
                f"{1000 * self.latency:.0f} ms; {self.late} frames later than that; levels {lv} "
                f"-> {self.out_path}")  # fmt: skip


def stream_file(student_dir: str | os.PathLike, video: str | os.PathLike | None, audio_path: str | os.PathLike | None,
                *, avatar: str | os.PathLike | None = None, out_path: str | os.PathLike | None = None,
                cfg: EngineConfig | None = None, tiny_decoder: str | os.PathLike | None = None,
                on_frame: Callable[[int, np.ndarray, np.ndarray], None] | None = None, audio: np.ndarray | None = None,
                tick: float = 0.02, progress: bool = False) -> StreamReport:  # fmt: skip
    """Stream an audio file through the engine in real time (paced by the wall clock, 20 ms pieces).

    Frames go to ``out_path`` (the same ``VideoWriter`` and muxing as ``turbosync lipsync``; with
    ``cfg.degrade`` False the frames equal its frames) and to ``on_frame(i, frame uint8 [H, W, 3], audio
    float32 [640])`` as they leave the engine. InputError for unusable inputs.
    """
    import contextlib
    import tempfile

    from inference.avatar import AvatarError, load_avatar, prepare_avatar
    from inference.run import _tiny_decoder, decoder_fallback, load_student, read_audio_16k

    if (video is None) == (avatar is None):
        raise InputError("give exactly one of a video (--video) or a prepared avatar (--avatar)")
    audio = read_audio_16k(audio_path) if audio is None else np.asarray(audio, np.float32)
    bundle = load_student(student_dir)
    decoder = _tiny_decoder(tiny_decoder, bundle)
    cfg = decoder_fallback(cfg or EngineConfig(), decoder)
    with contextlib.ExitStack() as stack:
        try:
            if avatar is not None:
                av = load_avatar(avatar, bundle)
            else:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="turbosync-avatar-"))
                av = prepare_avatar(video, tmp, bundle, progress=progress)
        except AvatarError as err:
            raise InputError(str(err)) from None
        return _stream(bundle, av, audio, cfg, decoder, out_path, on_frame, tick)


def _stream(bundle, av, audio, cfg, decoder, out_path, on_frame, tick) -> StreamReport:
    from inference.engine import flush, start, step
    from teacher.media import VideoWriter

    latency = engine_latency(cfg)
    writer = None
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        writer = VideoWriter(out_path, 25, sample_rate=SAMPLE_RATE)
    state = start(av, bundle, cfg, tiny_decoder=decoder, clock=time.perf_counter)
    clock = InputClock(time.perf_counter(), jitter=0.0)  # t0, due and fed only: the whole file is at hand
    lateness: list[float] = []
    n = 0

    def emit(frames: list[np.ndarray]) -> None:
        nonlocal n
        now = time.perf_counter()
        for f in frames:
            lateness.append(now - frame_due(clock.t0, latency, n))
            if writer is not None:
                writer.write(f)
            if on_frame is not None:
                on_frame(n, f, audio[n * SAMPLES_PER_FRAME : (n + 1) * SAMPLES_PER_FRAME])
            n += 1

    try:
        if writer is not None:
            writer.write_audio(audio)
        while clock.fed < len(audio):
            wait = clock.t0 + (clock.fed / SAMPLE_RATE) + tick - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            want = min(clock.due(time.perf_counter()), len(audio)) - clock.fed
            piece = audio[clock.fed : clock.fed + want]
            clock.fed += len(piece)
            frames, state = step(state, piece)
            emit(frames)
        frames, state = flush(state)
        emit(frames)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    return StreamReport(n, len(audio) / SAMPLE_RATE, latency, np.asarray(lateness), dict(state.stats), out_path)
