"""teacher.media: PyAV write / read round trip, 30 -> 25 fps resampling, audio, decord access, errors,
display rotation, stream start offsets on the file's timeline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from teacher.media import (
    MediaError,
    VideoReader,
    VideoWriter,
    iter_video_frames,
    nearest_frame_indices,
    orientation_from_matrix,
    read_audio,
    read_video,
    write_video,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR = 16000
FPS_IN = 30


def moving_pattern(t: int, h: int = 96, w: int = 128) -> np.ndarray:
    """Smooth RGB pattern that moves 4 px per frame, plus a frame-numbered blue level."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    r = 128 + 100 * np.sin(2 * np.pi * (x + 4 * t) / 64)
    g = 128 + 100 * np.cos(2 * np.pi * y / 48)
    b = np.full_like(x, 8.0 * t % 256)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def tone(seconds: float = 1.0, hz: float = 1000.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1.0 s: 30 frames at 30 fps, 96 x 128, with a 1 kHz tone at 16 kHz."""
    path = str(tmp_path_factory.mktemp("media") / "clip.mp4")
    frames = np.stack([moving_pattern(t) for t in range(FPS_IN)])
    write_video(path, frames, fps=FPS_IN, audio=tone(), sample_rate=SR)
    return path, frames


def test_written_file_is_h264_yuv420p_with_aac(clip):
    path, _ = clip
    with av.open(path) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert a.codec_context.name == "aac"
        assert (v.width, v.height) == (128, 96)
        assert float(v.average_rate) == FPS_IN


def test_native_read_close_to_input(clip):
    path, frames = clip
    video, fps = read_video(path, fps=None)
    assert fps == FPS_IN and video.shape == frames.shape and video.dtype == np.uint8
    err = video.astype(np.float64) - frames
    # crf 18 + 4:2:0 chroma on a saturated pattern; swscale's yuv->rgb reads about 1 level low
    assert np.abs(err).mean() < 4.0 and abs(err.mean()) < 2.0
    assert np.abs(err[..., 1]).mean() < 3.0  # green follows luma most closely


def test_resample_30_to_25_picks_nearest_frames(clip):
    path, _ = clip
    native, _ = read_video(path, fps=None)
    video, fps = read_video(path, fps=25)
    assert fps == 25 and len(video) == 25
    idx = nearest_frame_indices(np.arange(FPS_IN) / FPS_IN, 1.0, 25)
    # k / 25 s -> nearest of i / 30 s: 0, 1, 2, 4, 5, 6, 7, 8, 10, ...
    np.testing.assert_array_equal(idx[:10], [0, 1, 2, 4, 5, 6, 7, 8, 10, 11])
    np.testing.assert_array_equal(video, native[idx])
    streamed = list(iter_video_frames(path, fps=25))
    assert len(streamed) == 25 and np.array_equal(np.stack(streamed), video)


def test_nearest_frame_indices_upsampling():
    # 10 fps -> 25 fps over 0.5 s: 12.5 -> 13 output frames, each the nearest of 5 sources
    idx = nearest_frame_indices(np.arange(5) / 10, 0.5, 25)
    np.testing.assert_array_equal(idx, [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4])


def test_audio_duration_and_tone(clip):
    path, _ = clip
    audio = read_audio(path, SR)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SR - 1.0) <= 0.03  # AAC frame padding
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.argmax(spec) * SR / len(audio) - 1000.0) < 3.0
    rms = np.sqrt(np.mean(audio[1000:-1000] ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.05


def test_read_audio_wav_resamples_and_downmixes(tmp_path):
    sr = 44100
    t = np.arange(int(0.5 * sr)) / sr
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1)
    path = tmp_path / "a.wav"
    sf.write(path, stereo, sr)
    audio = read_audio(path, 16000)
    assert abs(len(audio) - 8000) <= 2
    spec = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spec) * 16000 / len(audio) - 440) < 3


def test_decord_reader_matches_av(clip):
    path, _ = clip
    native, _ = read_video(path, fps=None)
    reader = VideoReader(path)
    assert len(reader) == FPS_IN and reader.fps == pytest.approx(FPS_IN)
    assert reader.shape == (96, 128, 3)
    batch = reader.get_frames([0, 7, 29])
    assert batch.dtype == np.uint8 and batch.shape == (3, 96, 128, 3)
    assert np.abs(batch.astype(np.float64) - native[[0, 7, 29]]).mean() < 1.0
    idx = reader.index_map(25)
    np.testing.assert_array_equal(idx, nearest_frame_indices(np.arange(FPS_IN) / FPS_IN, 1.0, 25))
    assert np.array_equal(reader.get_frames_at([3]), reader.get_frames([idx[3]]))
    with pytest.raises(IndexError):
        reader.get_frames([30])


def test_decord_imported_before_av_in_one_process(tmp_path):
    """decord issue #128: importing decord first was reported to break av. One fresh process."""
    code = textwrap.dedent(f"""
        import decord
        import av
        import numpy as np
        from teacher.media import VideoReader, read_audio, read_video, write_video
        frames = np.full((10, 64, 64, 3), 90, np.uint8)
        x = (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 500)).astype(np.float32)
        write_video({str(tmp_path / "d.mp4")!r}, frames, fps=25, audio=x)
        v, _ = read_video({str(tmp_path / "d.mp4")!r})
        r = VideoReader({str(tmp_path / "d.mp4")!r})
        a = read_audio({str(tmp_path / "d.mp4")!r})
        print(len(v), len(r), round(len(a) / 16000, 2), int(abs(int(r.get_frames([5]).mean()) - 90) <= 2))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n_av, n_decord, seconds, close = out.stdout.split()[-4:]
    assert (n_av, n_decord, close) == ("10", "10", "1") and abs(float(seconds) - 1.0) <= 0.03


def test_streaming_writer_and_odd_size(tmp_path):
    path = tmp_path / "s.mp4"
    x = tone(0.4)
    with VideoWriter(path, fps=25, sample_rate=SR) as w:
        w.write_audio(x[:3000])  # before the first frame: buffered
        for t in range(10):
            w.write(moving_pattern(t, 33, 47))
        w.write_audio(x[3000:])
    video, _ = read_video(path)
    assert video.shape == (10, 34, 48, 3)  # padded to even by edge replication
    assert np.abs(video[:, :33, :47].astype(np.float64) - np.stack([moving_pattern(t, 33, 47)
                                                                  for t in range(10)])).mean() < 4
    assert abs(len(read_audio(path)) / SR - 0.4) <= 0.03
    assert sorted(os.listdir(tmp_path)) == ["s.mp4"]


def test_atomic_write_no_clobber_no_temp(tmp_path):
    path = tmp_path / "out.mp4"
    write_video(path, np.zeros((3, 32, 32, 3), np.uint8))
    before = path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]

    def frames_then_crash():
        yield np.full((32, 32, 3), 200, np.uint8)
        raise RuntimeError("renderer died")

    with pytest.raises(RuntimeError, match="renderer died"):
        write_video(path, frames_then_crash())
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["out.mp4"]

    with pytest.raises(MediaError, match="frame 1"):  # size change mid-stream
        write_video(path, [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)])
    with pytest.raises(MediaError, match="uint8"):
        write_video(path, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(MediaError, match="no frames"):
        write_video(path, [])
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing.mp4")
    for fn in (read_video, read_audio, VideoReader):
        with pytest.raises(MediaError, match="missing.mp4: file not found"):
            fn(missing)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    for fn in (read_video, read_audio, VideoReader):
        with pytest.raises(MediaError, match="corrupt.mp4"):
            fn(corrupt)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4"):
        read_video(empty)
    silent = tmp_path / "silent.mp4"
    write_video(silent, np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(MediaError, match="silent.mp4: no audio stream"):
        read_audio(silent)
    sf.write(tmp_path / "speech.wav", tone(0.1), SR)
    with pytest.raises(MediaError, match="speech.wav: no video stream"):
        read_video(tmp_path / "speech.wav")
    assert issubclass(MediaError, ValueError)


def test_errors_truncated_unsupported_and_bad_samples(tmp_path, clip):
    path, _ = clip
    data = open(path, "rb").read()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])  # the moov atom is at the end
    (tmp_path / "notes.mp4").write_text("not a video\n")
    for name in ("truncated.mp4", "notes.mp4"):
        for fn in (read_video, read_audio, VideoReader):
            with pytest.raises(MediaError, match=name):
                fn(tmp_path / name)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(MediaError, match="empty.wav: audio stream has no decodable samples"):
        read_audio(tmp_path / "empty.wav")
    for bad in (np.nan, np.inf, -np.inf):
        x = tone(0.1)
        x[100] = bad
        sf.write(tmp_path / "bad.wav", x, SR, subtype="FLOAT")
        with pytest.raises(MediaError, match="bad.wav: audio has 1 NaN or infinite samples"):
            read_audio(tmp_path / "bad.wav")


# ------------------------------------------------------------------ display rotation and stream start offsets
def upright_picture(i: int = 0, h: int = 64, w: int = 96) -> np.ndarray:
    """An asymmetric picture: a white 16 px square top-left, frame number ``i`` in the green level (3 i)."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[..., 1] = 3 * i
    img[:16, :16] = 255
    return img


def write_av(path, n_frames: int, *, fps: int = 25, rotation: int = 0, hflip: bool = False, video_start=0.0,
             audio_seconds: float = 0.0, audio_start: float = 0.0, sr: int = 48000) -> None:
    """Write ``upright_picture(i)`` frames the way a phone or an editor does: coded frames plus a display
    matrix (PyAV: rotate ``rotation`` degrees counter-clockwise, then mirror) and stream start times
    (exact for 25 and 30 fps: 1/3000 s video ticks); an optional 440 Hz tone track."""
    with av.open(str(path), "w", format="mp4") as c:
        v = c.add_stream("libx264", rate=fps)
        v.codec_context.time_base = Fraction(1, 3000)
        coded = np.rot90(upright_picture()[:, ::-1] if hflip else upright_picture(), -rotation // 90)
        v.height, v.width = coded.shape[:2]
        v.pix_fmt = "yuv420p"
        if rotation or hflip:
            v.set_display_rotation(rotation, hflip=hflip)
        a = None
        if audio_seconds:
            a = c.add_stream("aac", rate=sr)
            a.layout = "mono"
        for i in range(n_frames):
            img = upright_picture(i)
            coded = np.rot90(img[:, ::-1] if hflip else img, -rotation // 90)
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(coded), format="rgb24")
            f.pts, f.time_base = round(3000 * video_start) + i * 3000 // fps, Fraction(1, 3000)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        if a is not None:
            x = tone(audio_seconds, 440.0, sr)
            s0 = round(audio_start * sr)
            for j in range(0, len(x), 4800):
                f = av.AudioFrame.from_ndarray(x[None, j : j + 4800].copy(), format="flt", layout="mono")
                f.sample_rate, f.pts, f.time_base = sr, s0 + j, Fraction(1, sr)
                c.mux(a.encode(f))
            c.mux(a.encode(None))


def marker_centre(img: np.ndarray) -> tuple[float, float]:
    """(y, x) centre of the white square (the only pixels with red > 200)."""
    ys, xs = np.nonzero(img[..., 0] > 200)
    return float(ys.mean()), float(xs.mean())


@pytest.mark.parametrize("rotation,hflip", [(90, False), (180, False), (270, False), (-90, False),
                                            (0, True), (90, True), (180, True), (270, True)])  # fmt: skip
def test_display_rotation_applied_on_decode(tmp_path, rotation, hflip):
    path = tmp_path / f"r{rotation}{'h' if hflip else ''}.mp4"
    write_av(path, 3, rotation=rotation, hflip=hflip)
    with av.open(str(path)) as c:  # the file really stores turned frames with a display matrix
        coded = next(c.decode(video=0)).to_ndarray(format="rgb24")
        assert coded.shape != (64, 96, 3) or marker_centre(coded) != pytest.approx((7.5, 7.5), abs=1.5)
    video, _ = read_video(path)
    native = np.stack(list(iter_video_frames(path, fps=None)))
    reader = VideoReader(path)
    decord_frames = reader.get_frames([0, 2])
    assert video.shape == native.shape == (3, 64, 96, 3) and decord_frames.shape == (2, 64, 96, 3)
    assert reader.shape == (64, 96, 3)
    for img in (video[0], native[2], decord_frames[0], decord_frames[1]):
        y, x = marker_centre(img)
        assert abs(y - 7.5) < 1.5 and abs(x - 7.5) < 1.5, (y, x)
        assert img.flags.c_contiguous
    assert np.abs(decord_frames.astype(np.float64) - native[[0, 2]]).mean() < 1.5


def test_orientation_from_matrix_closed_forms():
    one = 1 << 16
    assert orientation_from_matrix(None) == (0, False)
    assert orientation_from_matrix([one, 0, 0, 0, one, 0, 0, 0, 1 << 30]) == (0, False)  # identity
    assert orientation_from_matrix([0, -one, 0, one, 0, 0, 0, 0, 1 << 30]) == (1, False)  # 90 ccw: rot90 once
    assert orientation_from_matrix([0, one, 0, -one, 0, 0, 0, 0, 1 << 30]) == (-1, False)  # 90 cw (phones)
    assert orientation_from_matrix([-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30]) == (2, False)
    assert orientation_from_matrix([-one, 0, 0, 0, one, 0, 0, 0, 1 << 30]) == (2, True)  # hflip = rot180 + vflip
    assert orientation_from_matrix([one, 0, 0, 0, -one, 0, 0, 0, 1 << 30]) == (0, True)  # vflip
    assert orientation_from_matrix([0, 0, 0, 0, 0, 0, 0, 0, 0]) == (0, False)  # degenerate: left as decoded


def test_writer_stores_upright_frames_without_rotation(clip):
    path, _ = clip
    with av.open(path) as c:
        f = next(c.decode(video=0))
        assert f.rotation == 0 and not any("DISPLAYMATRIX" in str(sd.type) for sd in f.side_data)
        assert (f.width, f.height) == (128, 96)


def test_video_starting_after_audio_holds_first_frame(tmp_path):
    """Video (30 fps, 2.7 s) starts 0.3 s after a 3.0 s audio track: output frame k shows file time k / 25."""
    path = tmp_path / "late_video.mp4"
    write_av(path, 81, fps=30, video_start=0.3, audio_seconds=3.0)
    video, _ = read_video(path)
    assert len(video) == 75  # ceil(3.0 * 25): from the file's start to the last frame's end
    native = np.stack(list(iter_video_frames(path, fps=None)))
    assert len(native) == 81
    shown = np.array([np.flatnonzero((native == f).all(axis=(1, 2, 3)))[0] for f in video])  # source index
    t = np.arange(75) / 25
    expected = np.clip(np.round((t - 0.3) * 30), 0, 80).astype(int)  # no ties: 0.3 s is 9 source frames
    np.testing.assert_array_equal(shown, expected)
    assert (shown[: 8] == 0).all()  # 0 .. 0.28 s: the first frame held
    reader = VideoReader(path)
    np.testing.assert_array_equal(reader.index_map(25), expected)
    audio = read_audio(path)
    assert len(audio) == 3 * SR and np.abs(audio[160:800]).max() > 0.3  # audio starts at 0: nothing prepended


def test_audio_starting_late_gets_silence(tmp_path):
    path = tmp_path / "late_audio.mp4"
    write_av(path, 25, audio_seconds=0.5, audio_start=0.5)
    audio = read_audio(path)
    assert abs(len(audio) / SR - 1.0) <= 1024 / 48000  # 0.5 s of silence + 0.5 s; AAC padding dropped
    onset = np.argmax(np.abs(audio) > 0.05) / SR
    assert abs(onset - 0.5) < 0.002 and np.abs(audio[: int(0.48 * SR)]).max() < 0.01  # AAC pre-echo after
    assert len(read_video(path)[0]) == 25


def test_start_offset_below_tolerance_changes_no_frame_count(tmp_path):
    """A video 10 ms after the audio (priming, muxer rounding) is not moved: 1.0 s gives 25 frames."""
    path = tmp_path / "nudged.mp4"
    write_av(path, 25, video_start=0.01, audio_seconds=1.0)
    video, _ = read_video(path)
    assert len(video) == 25 and len(VideoReader(path).index_map(25)) == 25
    assert len(read_audio(path)) == SR


def test_nearest_frame_indices_with_start():
    # source at 0.3 s + i / 10; output frames from 0: the first source frame is held until it starts
    idx = nearest_frame_indices(0.3 + np.arange(3) / 10, 0.6, 10, start=0.0)
    np.testing.assert_array_equal(idx, [0, 0, 0, 0, 1, 2])


def test_writer_module_imports_in_either_order():
    """The writer lives in teacher.media_write (imports MediaError from teacher.media) and teacher.media re-exports
    it lazily: importing either module first works, and both names are one object."""
    for first in ("import teacher.media_write", "import teacher.media"):
        code = (f"{first}\nfrom teacher.media import AAC_RATE, MediaError, VideoWriter, write_video\n"
                "import teacher.media_write as w\n"
                "assert (w.VideoWriter, w.write_video, w.AAC_RATE) == (VideoWriter, write_video, AAC_RATE)\n"
                "assert w.MediaError is MediaError")
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
