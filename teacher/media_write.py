"""Writing video for the teacher path and the engine: ``VideoWriter`` (streaming H.264 + AAC mp4, atomic on
close) and ``write_video`` (a whole clip). Conventions as in ``teacher.media`` (which re-exports both):
frames RGB ``uint8 [H, W, 3]``, audio mono ``float32 [N]`` in [-1, 1].
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from teacher.media import MediaError

__all__ = ["AAC_RATE", "VideoWriter", "write_video"]

AAC_RATE = 48000  # audio is muxed at 48 kHz: AAC pads to 1024-sample frames (21 ms here, 64 ms at 16 kHz)


class VideoWriter:
    """Streaming H.264 (yuv420p) mp4 writer with an optional AAC track; atomic on close.

    Frames go to a hidden temporary file in the destination folder, which replaces ``path`` only
    when the ``with`` block ends without error; on error the temporary file is removed and an
    existing ``path`` is left untouched. Odd frame sizes are padded by one edge-replicated
    row/column (yuv420p needs even sizes). Audio (mono float32 at ``sample_rate``) needs
    ``sample_rate`` at open: ``with VideoWriter(p, 25, sample_rate=16000) as w: w.write(f);
    w.write_audio(x)``.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25, *, sample_rate: int | None = None,
                 crf: int = 18, preset: str = "medium"):
        self.path = os.path.abspath(os.fspath(path))
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise MediaError(f"{self.path}: folder does not exist")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.sample_rate = sample_rate
        self.crf, self.preset = crf, preset
        self._tmp = os.path.join(folder, f".{Path(self.path).stem}.{uuid.uuid4().hex[:8]}.tmp.mp4")
        self._container = av.open(self._tmp, mode="w", format="mp4")
        self._video = self._audio = None
        self._size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._n_frames = 0
        self._n_samples = 0
        self._pending_audio: list[np.ndarray] = []
        self._closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _add_streams(self, h: int, w: int) -> None:
        self._size = (h, w)
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = w + w % 2, h + h % 2
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(self.crf), "preset": self.preset}
        if self.sample_rate is not None:
            self._audio = self._container.add_stream("aac", rate=AAC_RATE)
            self._audio.layout = "mono"

    @property
    def frames_written(self) -> int:
        return self._n_frames

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 [H, W, 3] frame."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            self.abort()
            raise MediaError(f"{self.path}: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._video is None:
            self._add_streams(*frame.shape[:2])
            for chunk in self._pending_audio:
                self._encode_audio(chunk)
            self._pending_audio.clear()
        elif frame.shape[:2] != self._size:
            self.abort()
            raise MediaError(f"{self.path}: frame {self._n_frames} is {frame.shape[:2]}, expected {self._size}")
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self._n_frames
        vf.time_base = 1 / self.fps
        self._container.mux(self._video.encode(vf))
        self._n_frames += 1

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float32 [N] samples at the ``sample_rate`` given at open."""
        if self.sample_rate is None:
            self.abort()
            raise MediaError(f"{self.path}: pass sample_rate= when opening the writer to add audio")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._audio is None:
            self._pending_audio.append(x)
        else:
            self._encode_audio(x)

    def _encode_audio(self, x: np.ndarray | None) -> None:
        if x is None:
            self._container.mux(self._audio.encode(None))
            return
        if x.size == 0:
            return
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None]), format="flt", layout="mono")
        af.sample_rate = self.sample_rate
        af.pts = self._n_samples
        af.time_base = Fraction(1, self.sample_rate)
        self._n_samples += x.size
        self._container.mux(self._audio.encode(af))

    def close(self) -> None:
        """Flush the encoders and move the file into place."""
        if self._closed:
            return
        if self._n_frames == 0:
            self.abort()
            raise MediaError(f"{self.path}: no frames were written")
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._encode_audio(None)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # the temporary file is discarded anyway
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float = 25,
                audio: np.ndarray | None = None, sample_rate: int = 16000, crf: int = 18) -> None:
    """Write frames (uint8 [T, H, W, 3] or an iterable of [H, W, 3]) as H.264 mp4, with ``audio``
    (mono float32 at ``sample_rate``) muxed as AAC when given. Atomic, see ``VideoWriter``."""
    with VideoWriter(path, fps, sample_rate=sample_rate if audio is not None else None, crf=crf) as w:
        if audio is not None:
            w.write_audio(audio)
        for frame in frames:
            w.write(frame)
