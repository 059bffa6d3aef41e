"""The frames the teacher edits, streamed: an in-memory clip or a video file decoded with PyAV.

LatentSync plays the video forward then backward as often as the audio needs (``pingpong_indices``).
A file is decoded as a stream; only when the audio outlasts the video are its frames spilled to an
unnamed temporary file (``FrameSpill``, raw RGB, deleted on close) and read back by index for the
looped part, so memory never holds the clip. Each ``VideoSource.frames(n)`` call is an independent
iterator (the teacher pipeline runs two: one ahead for alignment and generation, one behind for
writing), and both share the one spill.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import closing

import numpy as np

from teacher.media import MediaError, iter_video_frames

__all__ = ["FrameSpill", "VideoSource", "pingpong_indices"]


def pingpong_indices(n: int, length: int) -> np.ndarray:
    """Source index of each of ``n`` frames from a ``length``-frame video played forward, backward,
    forward... (LatentSync's looping; a 1-frame video repeats): int64 ``[n]``."""
    if length <= 0:
        raise ValueError("cannot loop a video without frames")
    k = np.arange(n, dtype=np.int64)
    if length == 1:
        return np.zeros(n, np.int64)
    k %= 2 * length
    return np.where(k < length, k, 2 * length - 1 - k)


class FrameSpill:
    """Equal-sized uint8 frames ``[H, W, 3]`` appended to an unnamed temporary file and read back by
    index (``os.preadv`` into a fresh array: nothing of the file is mapped or cached by us).

    ``folder``: where the file lives (default: the system's temporary folder). Close to delete it.
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self._file = tempfile.TemporaryFile(dir=folder)
        self.shape: tuple[int, ...] | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise MediaError(f"frame {self._count} is {frame.shape}, the video's first was {self.shape}")
        self._file.write(frame.data)
        self._count += 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self._count:
            raise IndexError(f"frame {i} outside [0, {self._count})")
        self._file.flush()
        out = np.empty(self.shape, np.uint8)
        got = os.preadv(self._file.fileno(), [out], i * out.nbytes)
        if got != out.nbytes:
            raise OSError(f"spill file: read {got} of {out.nbytes} bytes of frame {i}")
        return out

    def close(self) -> None:
        self._file.close()


class VideoSource:
    """An in-memory clip (uint8 ``[T, H, W, 3]``) or a video file at ``fps`` (upright, on the file's
    timeline: ``teacher.media.iter_video_frames``).

    A file is opened and its first frame decoded at construction, so a missing, corrupt or
    video-less file raises ``MediaError`` before any work. ``frames(n)`` yields ``n`` frames
    ping-pong looped; ``spill_dir`` is where a looped file's frames go (see module docstring).
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, video, fps: float = 25, spill_dir: str | os.PathLike | None = None):
        self.fps, self.spill_dir = fps, spill_dir
        self._spill: FrameSpill | None = None
        self.length: int | None = None  # frames at fps, once known
        if isinstance(video, (str, os.PathLike)):
            self.path: str | None = os.fspath(video)
            self.array = None
            with closing(iter_video_frames(self.path, fps)) as it:
                next(it)
        else:
            self.path = None
            self.array = np.asarray(video)
            if self.array.ndim != 4 or self.array.shape[-1] != 3 or len(self.array) == 0:
                raise ValueError(f"frames must be uint8 [T, H, W, 3] with T > 0, got {self.array.shape}")
            self.length = len(self.array)

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def frames(self, n: int) -> Iterator[np.ndarray]:
        """``n`` frames ``[H, W, 3]``: the video's first ``n``, or all of it looped back and forth."""
        if self.array is not None:
            for i in pingpong_indices(n, self.length):
                yield self.array[i]
            return
        k = 0
        if self._spill is None:
            with closing(iter_video_frames(self.path, self.fps)) as it:
                for frame in it:
                    if k == n:
                        return
                    yield frame
                    k += 1
            self.length = k
            if k == n:
                return
            self._fill_spill()
        for i in pingpong_indices(n, self.length)[k:]:
            yield self._spill[int(i)]

    def _fill_spill(self) -> None:
        """Decode the whole file once more into the spill (only when the audio outlasts the video)."""
        if self._spill is not None:
            return
        spill = FrameSpill(self.spill_dir)
        try:
            with closing(iter_video_frames(self.path, self.fps)) as it:
                for frame in it:
                    spill.append(frame)
        except BaseException:
            spill.close()
            raise
        self._spill, self.length = spill, len(spill)
