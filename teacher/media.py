"""Video and audio I/O for the teacher path: PyAV for streaming decode and writing, decord for
random access in training. The writer (``VideoWriter``, ``write_video``) is ``teacher.media_write``,
re-exported here.

Conventions: frames are RGB ``uint8 [H, W, 3]`` (stacks ``[T, H, W, 3]``); audio is mono
``float32 [N]`` in [-1, 1]. LatentSync resamples every input to 25 fps (``ffmpeg -r 25``) and
its audio to 16 kHz mono; ``read_video`` / ``read_audio`` do the same without an ffmpeg binary.

Frames come out upright: a stream's display matrix (phones store portrait video as landscape
frames plus a rotation) is applied on decode, as ffmpeg's autorotate does. Times are on the
file's timeline: output frame k shows time k / fps after the earliest stream start, so a stream
that starts late gets its first frame held (video) or silence prepended (audio); AAC end padding
beyond the container's stated duration is dropped.

decord is imported lazily (only by ``VideoReader``): decord issue #128 reports that importing
decord before av can break av; here both load in one process (``tests/teacher/test_media.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction

import av
import numpy as np

from teacher.lazy import lazy_exports

__all__ = [
    "MediaError",
    "VideoReader",
    "VideoWriter",  # noqa: F822 (teacher.media_write, through __getattr__ below)
    "iter_video_frames",
    "nearest_frame_indices",
    "orient",
    "orientation_from_matrix",
    "read_audio",
    "read_audio_to_video_end",
    "read_video",
    "trim_heap",
    "video_end",
    "write_video",  # noqa: F822
]

# The writer lives in teacher.media_write; importers keep `from teacher.media import VideoWriter, write_video`
# (lazily: media_write imports MediaError from here).
__getattr__ = lazy_exports(__name__, dict.fromkeys(("AAC_RATE", "VideoWriter", "write_video"), "teacher.media_write"),
                           globals())[0]


class MediaError(ValueError):
    """A media file is missing, unreadable, empty or lacks the requested stream."""


def _check_exists(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a folder, not a media file")
    if not os.path.isfile(path):
        raise MediaError(f"{path}: file not found")
    return path


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: cannot open as a media file ({e})") from e


START_TOLERANCE = 0.02  # s: a stream starting less than half a 25 fps frame after the file does counts as on time


def _open_video(path: str | os.PathLike) -> tuple[str, av.container.InputContainer, av.video.stream.VideoStream]:
    """(path, container, its first video stream); MediaError, the container closed, when there is none."""
    path = _check_exists(path)
    container = _open(path)
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: no video stream (empty or audio-only file)")
    return path, container, container.streams.video[0]


def nearest_frame_indices(timestamps: Sequence[float] | np.ndarray, duration: float, fps: float,
                          start: float | None = None) -> np.ndarray:
    """Map output frame k at time ``start + k / fps`` to the source frame with the nearest timestamp.

    timestamps: [N] seconds, increasing, of the source frames; start: time of output frame 0
    (default: the first timestamp; earlier output frames hold the first source frame);
    duration: seconds from ``start`` to the end of the last source frame. Returns int64 [K] with
    K = number of k with k / fps < duration (a 1.0 s clip at 30 fps gives 25 frames at 25 fps).
    Ties go to the earlier frame.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.size == 0:
        return np.zeros(0, dtype=np.int64)
    ts = ts - (ts[0] if start is None else start)
    n_out = int(np.ceil(duration * fps - 1e-6))
    t_out = np.arange(max(n_out, 1)) / fps
    mids = (ts[1:] + ts[:-1]) / 2  # frame i owns (mids[i-1], mids[i]]
    return np.searchsorted(mids, t_out, side="left").astype(np.int64)


def _frame_times(stream: av.video.stream.VideoStream) -> tuple[Fraction, float]:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
    return stream.time_base or Fraction(1, int(rate)), float(rate)


def _stream_start(stream: av.stream.Stream) -> float | None:
    """Seconds of the stream's first timestamp (after edit lists and codec priming), or None."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def _stream_lead(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """Seconds from the file's start (its earliest audio or video stream) to ``stream``'s start.

    Below ``START_TOLERANCE`` it is 0: codec priming (Opus pre-skip, AAC delay) and muxer rounding
    must not move a stream or add a frame.
    """
    own = _stream_start(stream)
    starts = [t for t in map(_stream_start, (*container.streams.video, *container.streams.audio)) if t is not None]
    if own is None or not starts:
        return 0.0
    lead = own - min(starts)
    return lead if lead >= START_TOLERANCE else 0.0


# ------------------------------------------------------------------------------ orientation
Orientation = tuple[int, bool]  # (k, vflip): np.rot90 by k quarter turns counter-clockwise, then flip rows
UPRIGHT: Orientation = (0, False)


def orientation_from_matrix(matrix: Sequence[int] | np.ndarray | None) -> Orientation:
    """How to turn decoded frames upright given a stream's 3x3 display matrix (9 int32, 16.16 fixed point).

    Ports ffmpeg: ``av_display_rotation_get`` (counter-clockwise degrees) and fftools' autorotate
    (``transpose`` / ``hflip`` / ``vflip`` chosen from the angle and the signs of m[0], m[3], m[4]).
    Angles that are not a multiple of 90 degrees are left as decoded.
    """
    if matrix is None:
        return UPRIGHT
    m = np.asarray(matrix, dtype=np.float64).reshape(-1) / 65536.0
    s0, s1 = np.hypot(m[0], m[3]), np.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:
        return UPRIGHT
    ccw = -np.degrees(np.arctan2(m[1] / s1, m[0] / s0))  # av_display_rotation_get
    theta = -round(ccw)  # fftools get_rotation: clockwise degrees in [0, 360)
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return (1, True) if m[3] > 0 else (-1, False)  # transpose cclock_flip / clock
    if abs(theta - 180) < 1:
        hflip, vflip = m[0] < 0, m[4] < 0
        return (2, False) if hflip and vflip else (2, True) if hflip else (0, bool(vflip))
    if abs(theta - 270) < 1:
        return (-1, True) if m[3] < 0 else (1, False)  # transpose clock_flip / cclock
    if abs(theta) < 1:
        return (0, bool(m[4] < 0))
    return UPRIGHT


def orient(img: np.ndarray, orientation: Orientation, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Apply an ``Orientation`` to an image [H, W, C] (or a stack with ``axes=(1, 2)``); contiguous."""
    k, vflip = orientation
    if (k % 4, vflip) == UPRIGHT:
        return img
    out = np.rot90(img, k, axes)
    if vflip:
        out = np.flip(out, axes[0])
    return np.ascontiguousarray(out)


def _frame_orientation(frame: av.VideoFrame) -> Orientation:
    for side in frame.side_data:
        if getattr(side.type, "name", str(side.type)).endswith("DISPLAYMATRIX"):
            return orientation_from_matrix(np.frombuffer(bytes(side), dtype=np.int32)[:9])
    return UPRIGHT


# ------------------------------------------------------------------------------ reading
def iter_video_frames(path: str | os.PathLike, fps: float | None = 25) -> Iterator[np.ndarray]:
    """Stream upright RGB uint8 [H, W, 3] frames, resampled to ``fps`` by nearest timestamp (None: native).

    Output frame k shows time k / fps on the file's timeline: when the video starts after the
    audio, its first frame is held until then. Decodes one frame ahead, so memory stays constant.
    Raises MediaError for a missing, corrupt or frameless file.
    """
    path, container, stream = _open_video(path)
    try:
        stream.thread_type = "AUTO"
        time_base, native = _frame_times(stream)
        lead = _stream_lead(container, stream)
        t0 = _stream_start(stream)
        rotation: Orientation | None = None
        prev: tuple[float, np.ndarray] | None = None
        k = 0  # next output index
        n_in = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    t = n_in / native
                else:
                    t = float(frame.pts * time_base)
                    t0 = t if t0 is None else t0
                    t -= t0
                t += lead
                if rotation is None:
                    rotation = _frame_orientation(frame)
                img = orient(frame.to_ndarray(format="rgb24"), rotation)
                n_in += 1
                if fps is None:
                    yield img
                    continue
                if prev is not None:  # prev owns every output time up to the midpoint
                    mid = (prev[0] + t) / 2
                    while k / fps <= mid + 1e-9:
                        yield prev[1]
                        k += 1
                prev = (t, img)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: corrupt video stream after {n_in} frames ({e})") from e
        if n_in == 0:
            raise MediaError(f"{path}: video stream has no decodable frames")
        if fps is not None and prev is not None:
            end = prev[0] + 1.0 / native
            while k == 0 or k / fps < end - 1e-6:
                yield prev[1]
                k += 1
    finally:
        container.close()


def read_video(path: str | os.PathLike, fps: float | None = 25) -> tuple[np.ndarray, float]:
    """Decode a whole video: (upright frames uint8 [T, H, W, 3] RGB, fps). ``fps=None`` keeps the native rate."""
    frames = list(iter_video_frames(path, fps))
    if fps is None:
        container = _open(os.fspath(path))
        try:
            fps = _frame_times(container.streams.video[0])[1]
        finally:
            container.close()
    return np.stack(frames), float(fps)


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of an audio or video file to mono float32 [N] at ``sample_rate``.

    Sample 0 is the file's start: a track that starts late (a stream start offset) gets that much
    silence in front. Codec end padding past the container's stated duration (at most two codec
    frames, e.g. AAC's 1024-sample blocks) is dropped. Raises MediaError for a missing or corrupt
    file, no audio stream, no samples, or NaN / inf samples.
    """
    path = _check_exists(path)
    container = _open(path)
    chunks: list[np.ndarray] = []
    try:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        lead = _stream_lead(container, stream)
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        rate = stream.codec_context.sample_rate or stream.rate or sample_rate
        max_pad = 2 * (stream.codec_context.frame_size or 0) / rate  # PCM: 0, nothing trimmed
        # A downmix to mono must not be louder than its channels: ffmpeg normalises the mix (gains summing
        # to 1, e.g. (L + R) / 2) only for integer output, as `ffmpeg -ac 1` writing LatentSync's wav does;
        # float output adds each channel at -3 dB (+3 dB for L = R). So several channels go through s32.
        mono = (stream.layout.nb_channels if stream.layout else 1) <= 1
        resampler = av.AudioResampler(format="flt" if mono else "s32", layout="mono", rate=sample_rate)
        nonfinite = 0
        try:
            for frame in container.decode(stream):
                if not mono and frame.format.name.startswith(("flt", "dbl")):  # s32 would hide NaN / inf
                    nonfinite += int((~np.isfinite(frame.to_ndarray())).sum())
                frame.pts = None  # let the resampler count samples; broken pts must not drop audio
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as e:
            raise MediaError(f"{path}: corrupt audio stream ({e})") from e
    finally:
        container.close()
    x = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    x = x.astype(np.float32, copy=False) if mono else (x / 2.0**31).astype(np.float32)
    if x.size == 0:
        raise MediaError(f"{path}: audio stream has no decodable samples")
    nonfinite += int((~np.isfinite(x)).sum())
    if nonfinite:
        raise MediaError(f"{path}: audio has {nonfinite} NaN or infinite samples")
    if duration is not None and 0 < x.size - round(duration * sample_rate) <= max_pad * sample_rate:
        x = x[: round(duration * sample_rate)]  # codec padding
    if lead > 0:
        x = np.concatenate([np.zeros(round(lead * sample_rate), np.float32), x])
    return x


def video_end(path: str | os.PathLike) -> float:
    """Seconds from the file's start (its earliest stream) to the end of the video's last frame, the span
    ``iter_video_frames`` covers (``ceil(end * fps)`` frames), read from packet timestamps without decoding."""
    path, container, stream = _open_video(path)
    try:
        time_base, native = _frame_times(stream)
        count, stamped, first, last = 0, 0, None, None  # packets, with pts; min and max pts (nothing is kept)
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                count += 1
                if packet.pts is not None:
                    stamped += 1
                    first = packet.pts if first is None else min(first, packet.pts)
                    last = packet.pts if last is None else max(last, packet.pts)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: corrupt video stream ({e})") from e
        if not count:
            raise MediaError(f"{path}: video stream has no frames")
        if stamped < count:  # no timestamps: frames at the native rate
            return _stream_lead(container, stream) + count / native
        t0 = _stream_start(stream)
        t0 = first * time_base if t0 is None else t0
        return float(last * time_base - t0) + _stream_lead(container, stream) + 1.0 / native
    finally:
        container.close()


def read_audio_to_video_end(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """A video file's own audio (``read_audio``) with silence appended when the video outlasts it, so the
    audio spans the later of the two streams' ends on the file's timeline. Errors as ``read_audio``."""
    x = read_audio(path, sample_rate)
    missing = round(video_end(path) * sample_rate) - len(x)
    return np.concatenate([x, np.zeros(missing, np.float32)]) if missing > 0 else x


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere). A stream frees
    every frame it decodes, but glibc keeps freed chunks in its per-thread arenas, so without this the
    resident memory of a long run creeps up by fragmentation (measured: 1.30 GB steady with it at 1.08 GB)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class VideoReader:
    """Random access to a video via decord, for training; frames upright, times on the file's timeline.

    ``len(reader)`` native frames; ``reader.fps`` native rate; ``reader.get_frames(idx)`` RGB
    uint8 [len(idx), H, W, 3]; ``reader.index_map(25)`` int64 [K]: native index of each 25 fps frame
    (nearest timestamp, same rule as ``read_video``). The display rotation and the stream's start
    are read once with PyAV; whether this decord build already rotates is checked on frame 0.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        import decord  # lazy: see module docstring

        self.path = _check_exists(path)
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
        except (decord.DECORDError, RuntimeError) as e:  # decord raises bare RuntimeError on junk
            raise MediaError(f"{self.path}: cannot open with decord ({str(e).splitlines()[0]})") from e
        if len(self._vr) == 0:
            raise MediaError(f"{self.path}: video stream has no frames")
        self.fps = float(self._vr.get_avg_fps())
        self._time_base: Fraction | None = None  # the stream's, set by _probe
        self._lead, self._orientation = self._probe()

    def _probe(self) -> tuple[float, Orientation]:
        """(seconds from the file's start to the first frame, how to turn decord's frames upright)."""
        container = _open(self.path)
        try:
            if not container.streams.video:
                raise MediaError(f"{self.path}: no video stream")
            stream = container.streams.video[0]
            self._time_base = stream.time_base
            lead = _stream_lead(container, stream)
            try:
                frame = next(container.decode(stream), None)
            except av.FFmpegError as e:
                raise MediaError(f"{self.path}: corrupt video stream ({e})") from e
            if frame is None or (rotation := _frame_orientation(frame)) == UPRIGHT:
                return lead, UPRIGHT
            upright = orient(frame.to_ndarray(format="rgb24"), rotation).astype(np.float32)
        finally:
            container.close()
        first = self._vr[0].asnumpy()
        candidates = [UPRIGHT, rotation, *((k, f) for f in (False, True) for k in range(4))]
        turned = [orient(first, o) for o in candidates]  # decord 0.6.0 applies rotations itself, not flips
        errors = [np.abs(t - upright).mean() if t.shape == upright.shape else np.inf for t in turned]
        return lead, candidates[int(np.argmin(errors))]

    def __len__(self) -> int:
        return len(self._vr)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of one upright frame."""
        return tuple(orient(self._vr[0].asnumpy(), self._orientation).shape)

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: frame index out of range [0, {len(self)})")
        return orient(self._vr.get_batch(idx.tolist()).asnumpy(), self._orientation, axes=(1, 2))

    def index_map(self, fps: float = 25) -> np.ndarray:
        ts = self._vr.get_frame_timestamp(range(len(self))).astype(np.float64)  # [N, 2] start, end seconds
        if self._time_base:  # decord's seconds are float32: snap them back to the stream's ticks
            ts = np.round(ts / float(self._time_base)) * float(self._time_base)
        start = ts[0, 0] - self._lead  # the file's start on decord's clock
        return nearest_frame_indices(ts[:, 0], float(ts[-1, 1] - start), fps, start=start)

    def get_frames_at(self, indices: Sequence[int] | np.ndarray, fps: float = 25) -> np.ndarray:
        """Frames by index on the ``fps`` time grid (e.g. 25 fps frame numbers)."""
        return self.get_frames(self.index_map(fps)[np.asarray(indices, dtype=np.int64)])
