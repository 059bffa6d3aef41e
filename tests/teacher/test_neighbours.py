"""Neighbours of the shared cases (issue 10, item 6), generated here: audio at 8-48 kHz in wav, mp3, m4a and
ogg, mono and stereo, with codec priming and padding; 10-bit, grayscale and variable-frame-rate video with
start offsets; rotated phone video, video after the audio, video outlasting its audio, very short clips.

Each asserts what a user expects: the audio's length and timing survive the codec, a stereo downmix is no
louder than its channels, frames read upright in true colours at the right time, and ``teacher-demo``
writes ``ceil(T * 25)`` upright frames with a T s audio track (T: the later stream's end, or ``--audio``'s).
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from scripts.cli import main
from teacher.media import MediaError, iter_video_frames, read_audio, read_video, video_end

SR = 16000
AAC_FRAME = 1024 / 48000  # s: what the writer's AAC track may round to


# ------------------------------------------------------------------ generators
def burst(sr: int, seconds: float = 1.0, on: float = 0.25, off: float = 0.75) -> np.ndarray:
    """A 440 Hz tone of amplitude 0.5 between ``on`` and ``off`` seconds, silence around it."""
    t = np.arange(round(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t) * ((t >= on) & (t < off))).astype(np.float32)


AUDIO_CODECS = {  # extension: (container, encoder, sample format)
    "wav": ("wav", "pcm_s16le", "s16"),
    "mp3": ("mp3", "libmp3lame", "fltp"),
    "m4a": ("ipod", "aac", "fltp"),
    "opus.ogg": ("ogg", "libopus", "flt"),  # Opus: 8, 12, 16, 24, 48 kHz
    "vorbis.ogg": ("ogg", "vorbis", "fltp"),  # ffmpeg's own Vorbis encoder: stereo only
}


def write_audio(path, ext: str, sr: int, channels: int, x: np.ndarray) -> None:
    fmt, codec, sample_fmt = AUDIO_CODECS[ext]
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=sr)
        s.layout = "mono" if channels == 1 else "stereo"
        if codec == "vorbis":
            s.codec_context.options = {"strict": "-2"}
        data = np.repeat(x[None], channels, 0)
        if sample_fmt == "s16":
            data = np.round(data * 32767).astype(np.int16)
        if not sample_fmt.endswith("p"):  # packed: one interleaved row
            data = np.ascontiguousarray(data.T.reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout=s.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)


AUDIO_MATRIX = [
    (ext, sr, ch)
    for ext, rates, layouts in [
        ("wav", (8000, 11025, 22050, 44100, 48000), (1, 2)),
        ("mp3", (8000, 11025, 22050, 44100, 48000), (1, 2)),
        ("m4a", (8000, 11025, 22050, 44100, 48000), (1, 2)),
        ("opus.ogg", (8000, 16000, 48000), (1, 2)),
        ("vorbis.ogg", (11025, 22050, 44100), (2,)),
    ]
    for sr in rates
    for ch in layouts
]


@pytest.mark.parametrize("ext,sr,channels", AUDIO_MATRIX, ids=[f"{e}-{s}-{c}ch" for e, s, c in AUDIO_MATRIX])
def test_audio_formats_rates_and_layouts(tmp_path, ext, sr, channels):
    path = tmp_path / f"a.{ext}"
    write_audio(path, ext, sr, channels, burst(sr))
    x = read_audio(path)
    if ext == "vorbis.ogg":  # ffmpeg's experimental Vorbis encoder states up to 4 ms more than it was given
        with av.open(str(path)) as c:
            s = c.streams.audio[0]
            assert abs(len(x) / SR - float(s.duration * s.time_base)) <= 1 / SR  # what the file says it lasts
    else:
        assert len(x) == SR and math.ceil(len(x) / 640) == 25  # priming and padding change no frame count
    loud = np.flatnonzero(np.abs(x) > 0.1)
    assert abs(loud[0] / SR - 0.25) < 0.003 and abs(loud[-1] / SR - 0.75) < 0.003  # in place: no codec delay
    assert 0.44 < np.abs(x).max() < 0.56  # a downmix of L = R is L, not 3 dB louder


def test_stereo_downmix_is_the_mean_of_the_channels(tmp_path):
    left, right = burst(SR), burst(SR, on=0.5, off=0.9)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, right], 1), SR, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path), (left + right) / 2, atol=1e-6)
    bad = np.stack([left, right], 1)
    bad[100, 1] = np.inf
    sf.write(tmp_path / "inf.wav", bad, SR, subtype="FLOAT")
    with pytest.raises(MediaError, match="inf.wav: audio has 1 NaN or infinite"):
        read_audio(tmp_path / "inf.wav")


# ------------------------------------------------------------------ video: pixel formats, timing, orientation
def picture(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Red left half, grey right half, a white 8 px square top-left; frame number i as the grey level 40 + 4 i."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2, 0] = 200
    img[:, w // 2 :] = 40 + 4 * i
    img[:8, :8] = 255
    return img


def write_frames(path, frames, *, times=None, codec="libx264", pix_fmt="yuv420p", rotation=0, video_start=0.0,
                 audio=None, audio_start=0.0):  # fmt: skip
    """Frames at ``times`` (s; default 25 fps) from ``video_start``, coded turned by ``rotation`` degrees with a
    display matrix that turns them back; optional 16 kHz mono audio (AAC) from ``audio_start``."""
    times = np.arange(len(frames)) / 25 if times is None else np.asarray(times)
    with av.open(str(path), "w", format="mp4" if codec == "libx264" else "matroska") as c:
        v = c.add_stream(codec, rate=25)
        v.codec_context.time_base = Fraction(1, 1000)
        coded = [np.ascontiguousarray(np.rot90(f, -rotation // 90)) for f in frames]
        v.height, v.width = coded[0].shape[:2]
        v.pix_fmt = pix_fmt
        if rotation:
            v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=48000) if audio is not None else None
        if a is not None:
            a.layout = "mono"
        for t, img in zip(times, coded):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = round(1000 * (video_start + t)), Fraction(1, 1000)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            f = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32)[None], format="flt", layout="mono")
            f.sample_rate, f.pts, f.time_base = SR, round(audio_start * SR), Fraction(1, SR)
            for p in [*a.encode(f), *a.encode(None)]:
                c.mux(p)


@pytest.mark.parametrize("codec,pix_fmt", [("libx264", "yuv420p10le"), ("libx264", "yuv444p"), ("ffv1", "gray"),
                                           ("ffv1", "yuv420p10le")])  # fmt: skip
def test_ten_bit_and_grayscale_video_read_as_rgb(tmp_path, codec, pix_fmt):
    path = tmp_path / f"v_{pix_fmt}.{'mp4' if codec == 'libx264' else 'mkv'}"
    write_frames(path, [picture(i) for i in range(5)], codec=codec, pix_fmt=pix_fmt)
    video, fps = read_video(path)
    assert video.dtype == np.uint8 and video.shape == (5, 48, 64, 3) and fps == 25
    red, grey = video[:, 24, 12].astype(int), video[:, 24, 50].astype(int)
    if pix_fmt == "gray":
        assert (video[..., 0] == video[..., 1]).all() and (video[..., 1] == video[..., 2]).all()
        assert np.abs(red - 60).max() <= 4  # the luma of (200, 0, 0)
    else:
        assert np.abs(red - [200, 0, 0]).max() <= 4
    np.testing.assert_allclose(grey[:, 0], 40 + 4 * np.arange(5), atol=3)  # frame i is the i-th frame


def test_variable_frame_rate_with_offsets_lands_on_the_25_fps_grid(tmp_path):
    """Source frames at irregular times from 0.2 s, audio from 0: output frame k shows the source frame
    nearest to k / 25 (the first one held before it starts), ceil(end * 25) of them."""
    times = np.array([0.0, 0.033, 0.05, 0.12, 0.2, 0.21, 0.29, 0.4, 0.47])
    path = tmp_path / "vfr.mp4"
    write_frames(path, [picture(i) for i in range(9)], times=times, video_start=0.2, audio=burst(SR, 0.8))
    video, _ = read_video(path)
    native_rate = len(times) / (times[-1] - times[0])  # the stream's average rate sets the last frame's length
    end = 0.2 + times[-1] + 1 / round(native_rate, 3)
    assert abs(video_end(path) - end) < 0.02 and len(video) == math.ceil(video_end(path) * 25 - 1e-6)
    shown = np.round((video[:, 24, 50, 0].astype(float) - 40) / 4).astype(int)  # source frame number
    t = np.arange(len(video)) / 25
    mids = 0.2 + (times[1:] + times[:-1]) / 2
    np.testing.assert_array_equal(shown, np.searchsorted(mids, t, side="left"))
    assert (shown[t < 0.2] == 0).all()


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_phone_video_reads_upright(tmp_path, rotation):
    path = tmp_path / f"r{rotation}.mp4"
    write_frames(path, [picture(i) for i in range(3)], rotation=rotation)
    video, _ = read_video(path)
    assert video.shape == (3, 48, 64, 3)
    ys, xs = np.nonzero(video[0, ..., 1] > 200)  # the white square (red and grey halves have green < 100)
    assert ys.mean() < 5 and xs.mean() < 5


def test_one_frame_video_streams_one_frame(tmp_path):
    path = tmp_path / "one.mp4"
    write_frames(path, [picture(0)])
    assert len(list(iter_video_frames(path))) == 1 and abs(video_end(path) - 0.04) < 1e-6


# ------------------------------------------------------------------ through teacher-demo (tiny teacher, 1 step)
def demo(tmp_path, video, *extra) -> tuple[np.ndarray, float, list]:
    """Run teacher-demo; (output frames, audio track seconds, the output's video frames' rotation)."""
    out = tmp_path / "out.mp4"
    argv = ["teacher-demo", "--config", "teacher/tiny", "--steps", "1", "--video", str(video), "--out", str(out)]
    assert main([*argv, *extra]) == 0
    frames, fps = read_video(out)
    assert fps == 25
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        seconds = float((a.start_time + a.duration) * a.time_base)
        rotations = [f.rotation for f in c.decode(video=0)][:1]
    return frames, seconds, rotations


def test_demo_audio_of_any_length_gives_ceil_frames(tmp_path):
    video = tmp_path / "v.mp4"
    write_frames(video, [picture(i) for i in range(25)])  # 1 s
    wav = tmp_path / "speech.wav"
    sf.write(wav, burst(22050, 1.03), 22050)  # 1.03 s: 25.75 frames of audio
    frames, seconds, _ = demo(tmp_path, video, "--audio", str(wav))
    assert len(frames) == 26 and abs(seconds - 1.03) <= AAC_FRAME
    assert np.array_equal(frames[25], frames[24]) or np.abs(frames[25].astype(int) - frames[24]).mean() < 2  # ping


def test_demo_video_outlasting_its_audio_keeps_every_frame(tmp_path):
    """2 s of video whose own audio stops at 1.5 s: 50 frames, and the audio track lasts the 2 s (silence)."""
    video = tmp_path / "v.mp4"
    write_frames(video, [picture(i) for i in range(50)], audio=burst(SR, 1.5))
    frames, seconds, _ = demo(tmp_path, video)
    assert len(frames) == 50 and abs(seconds - 2.0) <= AAC_FRAME
    np.testing.assert_allclose(frames[49, 24, 50, 0], 40 + 4 * 49, atol=3)  # the last frame is the last frame


def test_demo_video_after_audio_and_rotated(tmp_path):
    """A rotated video starting 0.4 s after its audio: ceil(T * 25) upright frames with no rotation, the first
    held until the video starts."""
    video = tmp_path / "v.mp4"
    write_frames(video, [picture(i) for i in range(15)], rotation=90, video_start=0.4, audio=burst(SR, 1.0))
    frames, seconds, rotations = demo(tmp_path, video)
    assert frames.shape == (25, 48, 64, 3) and rotations == [0] and abs(seconds - 1.0) <= AAC_FRAME
    shown = np.round((frames[:, 24, 50, 0].astype(float) - 40) / 4).astype(int)
    assert (shown[:10] == 0).all() and shown[10] == 0 and shown[11] == 1 and shown[24] == 14


def test_demo_very_short_clips(tmp_path):
    """One frame of video and 0.1 s of audio: 3 frames (the one frame repeated); audio under one frame: an error."""
    video = tmp_path / "one.mp4"
    write_frames(video, [picture(3)], audio=burst(SR, 0.1))
    frames, seconds, _ = demo(tmp_path, video)
    assert len(frames) == 3 and abs(seconds - 0.1) <= AAC_FRAME
    assert np.abs(frames.astype(int) - frames[0]).max() <= 2
    wav = tmp_path / "blip.wav"
    sf.write(wav, np.zeros(300, np.float32), SR)
    out = tmp_path / "x" / "out.mp4"
    assert main(["teacher-demo", "--config", "teacher/tiny", "--video", str(video), "--audio", str(wav),
                 "--out", str(out)]) == 2  # fmt: skip
    assert not out.parent.exists()
