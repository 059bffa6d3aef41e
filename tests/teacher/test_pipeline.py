"""LatentSync inference end to end on the tiny preset (`turbosync teacher-demo`)."""

from __future__ import annotations

import numpy as np
import pytest

import configs
from scripts.cli import main
from teacher.pipeline import build_teacher_parts, lipsync, loop_frames


def test_loop_frames_ping_pong():
    frames = np.arange(3)[:, None]
    assert loop_frames(frames, 8)[:, 0].tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    assert loop_frames(frames, 2)[:, 0].tolist() == [0, 1]


@pytest.fixture(scope="module")
def parts():
    return build_teacher_parts(configs.load("teacher/tiny"), steps=2)


def test_lipsync_changes_only_the_mouth_and_passes_faceless_frames(parts):
    from distill.synthworld import make_clip

    clip = make_clip(2, resolution=256, seconds=0.8)
    frames = clip.frames.copy()
    frames[5] = 90  # a frame without a face
    result = lipsync(parts, frames, clip.audio, seed=0, progress=False)
    assert result.frames.shape == frames.shape and result.faceless == [5]
    assert np.array_equal(result.frames[5], frames[5])
    diff = np.abs(result.frames.astype(int) - frames.astype(int)).max(axis=-1)  # [T, H, W]
    top, bottom = diff[:, :100].mean(), diff[:, 150:210].mean()
    assert bottom > 5 * top  # the random teacher rewrites the lower face, the eyes stay
    assert len(result.audio) == len(frames) * 640


def test_lipsync_is_deterministic_per_seed(parts):
    from distill.synthworld import make_clip

    clip = make_clip(4, resolution=256, seconds=0.4)
    a = lipsync(parts, clip.frames, clip.audio, seed=1, progress=False).frames
    b = lipsync(parts, clip.frames, clip.audio, seed=1, progress=False).frames
    c = lipsync(parts, clip.frames, clip.audio, seed=2, progress=False).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_teacher_demo_cli_writes_mp4(tmp_path):
    from teacher.media import read_audio, read_video

    out = tmp_path / "demo.mp4"
    assert main(["teacher-demo", "--seconds", "0.64", "--steps", "2", "--out", str(out)]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (16, 256, 256, 3) and fps == 25
    assert abs(len(read_audio(out)) / 16000 - 0.64) < 0.05


def test_short_audio_is_a_clear_error(parts):
    with pytest.raises(ValueError, match="shorter than one video frame"):
        lipsync(parts, np.zeros((4, 64, 64, 3), np.uint8), np.zeros(100, np.float32), progress=False)
