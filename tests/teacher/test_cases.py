"""Inputs users really send (``shared/cases``, see its README): the media path reads them as the file means
them, and unusable ones end in one ``error:`` line with exit code 2.

c08: a phone portrait stored as 320x180 frames with a -90 degree display rotation must read as upright
180x320 frames. c19: audio that starts 0.5 s after the video must keep its place on the file's timeline
(0.5 s of silence first), and the teacher demo on it must write the full 3 s.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from scripts.cli import main
from teacher.media import VideoReader, read_audio, read_video, write_video

# The workplace's shared cases beside the checkout, or wherever TURBOSYNC_CASES points (a clone elsewhere).
CASES = Path(os.environ.get("TURBOSYNC_CASES") or Path(__file__).resolve().parents[3] / "shared" / "cases")
C08 = CASES / "c08_portrait_rot-90_coded320x180_display180x320_3s.mp4"
C19 = CASES / "c19_audio_starts_at_0.5s_256px_3s.mp4"
SR = 16000
AAC_FRAME_48K = 1024 / 48000  # s: what AAC may add or round at the 48 kHz the writer muxes at


def case(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"case file {path.name} not found under {CASES} (the shared cases folder is absent)")
    return path


def onset(x: np.ndarray, sr: int = SR, threshold: float = 0.05) -> float:
    """Seconds of the first sample above ``threshold``."""
    return float(np.argmax(np.abs(x) > threshold)) / sr


# ------------------------------------------------------------------ c08: display rotation
def test_c08_portrait_reads_upright():
    path = case(C08)
    with av.open(str(path)) as c:  # what is in the file: landscape frames and a -90 degree display matrix
        first = next(c.decode(video=0))
        assert (first.width, first.height, first.rotation) == (320, 180, -90)
    video, fps = read_video(path)
    assert video.shape == (75, 320, 180, 3) and fps == 25
    reader = VideoReader(path)
    assert reader.shape == (320, 180, 3)
    assert np.abs(reader.get_frames([0, 40]).astype(np.float64) - video[[0, 40]]).mean() < 1.5
    from teacher.face import FaceAligner

    aligned = FaceAligner(resolution=256).align(video[0])
    assert aligned is not None, "no face in the upright frame"
    roll = np.degrees(np.arctan2(aligned.matrix[1, 0], aligned.matrix[0, 0]))
    assert abs(roll) < 15, f"the face is rolled {roll:.0f} degrees: frames are not upright"
    assert abs(len(read_audio(path)) / SR - 3.0) <= AAC_FRAME_48K


# ------------------------------------------------------------------ c19: audio stream start offset
def test_c19_late_audio_keeps_its_place_on_the_timeline():
    path = case(C19)
    audio = read_audio(path)
    assert abs(len(audio) / SR - 3.0) <= 1024 / SR  # within one AAC frame (the track is AAC at 16 kHz)
    assert np.abs(audio[: SR // 2]).max() < 0.01  # the first 0.5 s is silence
    with av.open(str(path)) as c:  # where the speech starts in the file, by the stream's own timestamps
        assert float(c.streams.audio[0].start_time * c.streams.audio[0].time_base) > 0.4
        in_file = next(f.time + onset(f.to_ndarray()[0], f.sample_rate) for f in c.decode(audio=0)
                       if np.abs(f.to_ndarray()).max() > 0.05)  # fmt: skip
    assert in_file >= 0.5 and abs(onset(audio) - in_file) < 0.002
    video, _ = read_video(path)
    assert len(video) == 75  # the full 3 s of picture


def test_c19_teacher_demo_writes_the_full_clip_in_sync(tmp_path, capsys):
    path = case(C19)
    out = tmp_path / "c19.mp4"
    assert main(["teacher-demo", "--config", "teacher/tiny", "--steps", "1", "--video", str(path),
                 "--out", str(out)]) == 0  # fmt: skip
    assert "75 frames" in capsys.readouterr().out
    video, _ = read_video(out)
    assert len(video) == math.ceil(3.0 * 25)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert abs(float((a.start_time + a.duration) * a.time_base) - 3.0) <= AAC_FRAME_48K
    written = read_audio(out)
    assert abs(len(written) / SR - 3.0) <= AAC_FRAME_48K
    assert abs(onset(written) - onset(read_audio(path))) < 0.005  # speech where it was against the picture


# ------------------------------------------------------------------ unusable input: one line, exit 2
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    write_video(d / "silent.mp4", np.full((10, 64, 64, 3), 90, np.uint8))  # a video without audio
    good = d / "good.mp4"
    write_video(good, np.full((10, 64, 64, 3), 90, np.uint8), audio=np.zeros(6400, np.float32))
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "corrupt.mp4").write_bytes(rng.bytes(4096))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.wav").write_text("not audio\n")
    sf.write(d / "nosamples.wav", np.zeros(0, np.float32), SR)
    x = np.zeros(SR, np.float32)
    x[100] = np.nan
    sf.write(d / "nan.wav", x, SR, subtype="FLOAT")
    sf.write(d / "speech.wav", np.zeros(SR, np.float32), SR)
    return d


DEMO_CASES = [  # (argv after teacher-demo, the file the one line must name)
    (["--video", "missing.mp4"], "missing.mp4"),
    (["--video", "{d}/empty.mp4"], "empty.mp4"),
    (["--video", "{d}/corrupt.mp4"], "corrupt.mp4"),
    (["--video", "{d}/truncated.mp4"], "truncated.mp4"),
    (["--video", "{d}/speech.wav"], "speech.wav"),  # no video stream
    (["--video", "{d}/silent.mp4"], "silent.mp4"),  # no audio stream, and no --audio
    (["--video", "{d}/good.mp4", "--audio", "{d}/nosamples.wav"], "nosamples.wav"),
    (["--video", "{d}/good.mp4", "--audio", "{d}/nan.wav"], "nan.wav"),
    (["--video", "{d}/good.mp4", "--audio", "{d}/notes.wav"], "notes.wav"),
    (["--video", "{d}/good.mp4", "--audio", "{d}/missing.wav"], "missing.wav"),
    (["--steps", "0"], "--steps"),
]


def one_error_line(capfd) -> str:
    """The whole of stderr (including C libraries' output), which must be one ``error:`` line."""
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("argv,named", DEMO_CASES, ids=[n for _, n in DEMO_CASES])
def test_teacher_demo_unusable_input_exits_2_with_one_line(bad_inputs, tmp_path, capfd, argv, named):
    out = tmp_path / "sub" / "out.mp4"
    argv = [a.format(d=bad_inputs) for a in argv]
    capfd.readouterr()
    assert main(["teacher-demo", "--config", "teacher/tiny", *argv, "--out", str(out)]) == 2
    assert named in one_error_line(capfd)
    assert not out.parent.exists()


def test_prepare_unusable_source_exits_2_with_one_line(tmp_path, capfd):
    out = tmp_path / "shards_out"
    capfd.readouterr()
    assert main(["prepare", str(tmp_path / "no_such_folder"), str(out)]) == 2
    assert "no_such_folder" in one_error_line(capfd) and not out.exists()
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty_folder" / "notes.txt").write_text("no videos here\n")
    assert main(["prepare", str(tmp_path / "empty_folder"), str(out)]) == 2
    assert "empty_folder: no videos" in one_error_line(capfd) and not out.exists()
    (tmp_path / "a_file.mp4").write_bytes(b"")
    assert main(["prepare", str(tmp_path / "a_file.mp4"), str(out)]) == 2
    assert "a_file.mp4: not a folder" in one_error_line(capfd) and not out.exists()


# ------------------------------------------------------------------ c15: a face under the minimum box
C15 = CASES / "c15_tiny_face45px_640x360_3s.mp4"


def test_c15_small_face_is_named_not_called_missing(tmp_path, capfd):
    """The 45 px face is found but under LatentSync's 50 x 80 px box: the teacher's summary and the avatar's
    error say "face too small (W x H px, minimum 50 x 80 px)" instead of "no face", in one line each."""
    src = case(C15)
    out = tmp_path / "c15.mp4"
    assert main(["teacher-demo", "--config", "teacher/tiny", "--steps", "1", "--video", str(src),
                 "--out", str(out)]) == 0  # fmt: skip
    captured = capfd.readouterr()
    assert "face too small" in captured.out and "minimum 50 x 80 px" in captured.out
    assert captured.err.count("no face") == 0  # no per-frame warnings, nothing from mediapipe's C++ side
    assert "W0000" not in captured.err
    assert main(["avatar", "prepare", str(src), str(tmp_path / "av")]) == 2
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "face too small" in err[0] and str(C15.name) in err[0]
