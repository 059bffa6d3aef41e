"""Faces as users film them: which face of several, smoothing restarts at scene cuts, small faces, turned-away
frames passing through (teacher.face, teacher.face_backends)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from teacher.face import (
    AlignState,
    FaceAligner,
    SceneCut,
    align_video,
    build_aligner,
    choose_face,
    face_template,
    parse_choice,
)
from teacher.face_backends import FaceCandidate, MediaPipeLandmarker


def candidate(x: float, y: float, size: float) -> FaceCandidate:
    """A face whose brows / nose follow LatentSync's template, its box's top-left at (x, y), ``size`` px wide."""
    t, _ = face_template(256)
    anchors = (t - t.min(axis=0)) / np.ptp(t[:, 0]) * size * 0.5 + (x + size * 0.25, y + size * 0.3)
    return FaceCandidate(anchors, (x, y, x + size, y + size * 1.2))


class ScriptedFaces:
    """A back-end returning pre-set faces per call (a list of FaceCandidate lists)."""

    def __init__(self, per_frame):
        self.per_frame, self.calls = list(per_frame), 0
        self.too_small, self.turned_away = None, False

    def faces(self, frame):
        faces = self.per_frame[min(self.calls, len(self.per_frame) - 1)]
        self.calls += 1
        return faces

    def __call__(self, frame):
        raise AssertionError("the aligner asks for all faces")


def test_choose_face_largest_index_box():
    left, mid, right = candidate(10, 40, 60), candidate(120, 30, 90), candidate(260, 50, 50)
    faces = [left, mid, right]
    assert choose_face(faces, "largest") is mid
    assert choose_face(faces, 0) is left and choose_face(faces, 2) is right and choose_face(faces, -1) is right
    assert choose_face(faces, 3) is None and choose_face([], "largest") is None
    assert choose_face(faces, (250.0, 40.0, 320.0, 120.0)) is right
    assert choose_face(faces, (0.0, 300.0, 10.0, 310.0)) is None  # nobody there: pass through


def test_parse_choice():
    assert parse_choice("largest") == "largest" and parse_choice("Largest") == "largest"
    assert parse_choice(1) == 1 and parse_choice("1") == 1 and parse_choice("-1") == -1
    box = (1.0, 2.0, 30.0, 40.0)
    assert parse_choice([1, 2, 30, 40]) == box == parse_choice("1,2,30,40") == parse_choice("[1,2,30,40]")
    for bad in ("biggest", [1, 2, 3], [5, 5, 1, 1], True, None):
        with pytest.raises(ValueError, match="face.choose"):
            parse_choice(bad)


def test_presets_face_section_builds_the_aligner():
    import configs

    for preset in ("teacher/toy", "teacher/latentsync-1.6"):
        aligner = configs.instantiate(configs.load(preset).face)
        assert aligner.choose == "largest" and aligner.scene_cut == SceneCut()
        assert aligner.landmarker.min_box_size == (50, 80)  # LatentSync's minimum face box
    cfg = configs.load("teacher/toy", ["face.choose=[10,20,110,220]", "face.scene_cut=false", "face.small_faces=true"])
    aligner = configs.instantiate(cfg.face)
    assert aligner.choose == (10.0, 20.0, 110.0, 220.0) and aligner.scene_cut is None
    assert aligner.resolution == 128 and aligner.landmarker.small_faces
    with pytest.raises(ValueError, match="face.choose"):
        configs.instantiate(configs.load("teacher/toy", ["face.choose=biggest"]).face)


def test_several_faces_the_choice_is_stated_once_and_followed(caplog):
    frame = np.full((200, 400, 3), 90, np.uint8)
    left, right = candidate(20, 40, 70), candidate(250, 30, 100)
    for choose, want in (("largest", right), (0, left), ((0, 0, 120, 150), left)):
        aligner = FaceAligner(64, ScriptedFaces([[left, right]]), choose=choose)
        with caplog.at_level(logging.WARNING, logger="teacher.face"):
            caplog.clear()
            out = align_video([frame] * 4, aligner)
        np.testing.assert_array_equal(out[0].landmarks, np.round(want.anchors))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and lines[0].startswith("2 faces in frame 0: lip-syncing"), lines
        assert "({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*want.box) in lines[0]
    # the chosen face absent from a frame: that frame passes through, the others are edited
    aligner = FaceAligner(64, ScriptedFaces([[left, right], [right], [left, right]]), choose=1)
    out = align_video([frame] * 3, aligner)
    assert out[0] is not None and out[1] is None and out[2] is not None
    # one face only: nothing to state
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="teacher.face"):
        align_video([frame] * 2, FaceAligner(64, ScriptedFaces([[left]])))
    assert not caplog.records


def _translation_restarts(aligner: FaceAligner, frames, anchors) -> list[bool]:
    """Per frame: whether its alignment equals a fresh clip's first frame (the EMA restarted there)."""
    state, restarted = None, []
    for frame, a in zip(frames, anchors):
        face, state = aligner.align_step(frame, state)
        fresh = aligner.align_anchors(frame, a, None)[0]
        restarted.append(bool(np.allclose(face.matrix, fresh.matrix)))
    return restarted


class Anchors:
    def __init__(self, anchors):
        self.anchors, self.i = list(anchors), 0

    def __call__(self, frame):
        self.i += 1
        return self.anchors[self.i - 1]


def test_smoothing_restarts_at_a_scene_cut():
    rng = np.random.default_rng(0)
    shot_a = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    shot_b = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    t, _ = face_template(64)
    base = (t - t.mean(0)) * 0.6 + (64, 48)
    wobble = [base + rng.normal(0, 1.5, (3, 2)) for _ in range(6)]  # a face moving a little, as in one shot
    frames = [shot_a] * 3 + [shot_b] * 3  # a cut between frame 2 and 3 (same face position: only the picture jumps)
    got = _translation_restarts(FaceAligner(64, Anchors(wobble)), frames, wobble)
    assert got == [True, False, False, True, False, False]
    never = FaceAligner(64, Anchors(wobble), scene_cut=None)  # LatentSync: the EMA runs through the cut
    assert _translation_restarts(never, frames, wobble) == [True] + [False] * 5
    # the face jumps (same picture): a cut too; a faceless stretch keeps the EMA unless the picture changed
    jump = wobble[:3] + [w + (40, 0) for w in wobble[3:]]
    assert _translation_restarts(FaceAligner(64, Anchors(jump)), [shot_a] * 6, jump) == [True, False, False, True,
                                                                                          False, False]  # fmt: skip
    aligner = FaceAligner(64, Anchors([wobble[0], None, wobble[1]]))
    _, s = aligner.align_step(shot_a, None)
    _, s = aligner.align_step(shot_b, s)  # no face, but the picture cut: the EMA is dropped
    assert isinstance(s, AlignState) and s.bias is None and s.cuts == 1
    assert SceneCut().frame_diff > 2  # within a shot the thumbnails differ by < 2 levels (cases, synthetic world)


def test_profile_frames_pass_through_counted(caplog):
    frame = np.full((120, 160, 3), 80, np.uint8)
    face = candidate(40, 20, 60)

    class Turning(ScriptedFaces):
        def faces(self, frame):
            faces = super().faces(frame)
            self.turned_away = not faces
            return faces

    aligner = FaceAligner(64, Turning([[face], [], [], [face]]))
    with caplog.at_level(logging.WARNING, logger="teacher.face"):
        out = align_video([frame] * 4, aligner)
    assert [o is None for o in out] == [False, True, True, False]
    assert any("no face in 2 of 4 frames (1-2)" in r.getMessage() and "2 turned away or in profile" in r.getMessage()
               for r in caplog.records)  # fmt: skip


@pytest.fixture(scope="module")
def small_face_frame():
    """A synthetic-world face shrunk to 40 px wide in a 1280 x 720 frame, and where its anchors must be."""
    from distill.synthworld import make_clip

    clip = make_clip(3, resolution=256, seconds=0.08)
    big = MediaPipeLandmarker()(clip.frames[0])
    box = clip.face_box[0]
    s = 40 / (box[2] - box[0])
    small = cv2.resize(clip.frames[0], None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), (70, 90, 110), np.uint8)
    frame[300 : 300 + small.shape[0], 700 : 700 + small.shape[1]] = small
    return frame, big * s + (700, 300)


def test_small_faces_option_finds_a_40px_face_in_720p(small_face_frame):
    frame, expected = small_face_frame
    assert MediaPipeLandmarker()(frame) is None  # the official minimum box (and the whole-frame detector) miss it
    lm = MediaPipeLandmarker(small_faces=True)
    anchors = lm(frame)
    assert anchors is not None and np.abs(anchors - expected).max() < 2.0  # px, on a 40 px face
    aligner = build_aligner(128, small_faces=True)
    assert aligner.align(frame) is not None and aligner.landmarker.min_box_size == (16, 16)
    # in a video the tiles run once; later frames look where the face was first (one mesh call)
    tiles, calls = aligner.landmarker._meshes_from_tiles, []
    aligner.landmarker._meshes_from_tiles = lambda f: calls.append(1) or tiles(f)
    shifted = np.roll(frame, (2, 3), axis=(0, 1))
    out = align_video([frame, shifted, shifted], aligner)
    assert all(a is not None for a in out) and len(calls) == 1
    np.testing.assert_allclose(out[1].landmarks - out[0].landmarks, [[3, 2]] * 3, atol=1.5)


def test_c15_small_face_is_found_with_the_option_and_named_without_it():
    from pathlib import Path

    from teacher.face import too_small_message
    from teacher.media import read_video

    path = Path(__file__).resolve().parents[3] / "shared" / "cases" / "c15_tiny_face45px_640x360_3s.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not here")
    frames, _ = read_video(str(path), fps=25)
    frames = frames[:3]
    official = build_aligner(128)
    assert align_video(frames, official) == [None] * 3
    assert too_small_message(official).startswith("face too small (")
    found = align_video(frames, build_aligner(128, small_faces=True))
    assert all(a is not None for a in found)
