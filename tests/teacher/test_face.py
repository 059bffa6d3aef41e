"""teacher.face: LatentSync geometry, MediaPipe anchors, paste-back, EMA smoothing, masks."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from teacher.face import (
    FILL_VALUE,
    AlignedFace,
    BackendUnavailableError,
    FaceAligner,
    FaceAlignmentLandmarker,
    FaceLandmarker,
    InsightFaceLandmarker,
    MediaPipeLandmarker,
    align_video,
    crop_matrix,
    face_template,
    load_mask_image,
    lower_face_mask,
    similarity_from_points,
    smooth_translation,
)
from teacher.face_backends import anchors_plausible


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())  # RGB uint8 [512, 512, 3], face near (225, 110)


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(resolution=512)  # MediaPipe back-end


@pytest.fixture(scope="module")
def aligned(aligner, astronaut) -> AlignedFace:
    face = aligner.align(astronaut)
    assert face is not None
    return face


class ScriptedLandmarker:
    """Returns pre-set anchors in order (None = no face); stands in for a detector."""

    def __init__(self, anchors):
        self.anchors = list(anchors)

    def __call__(self, frame):
        return self.anchors.pop(0)


# --- geometry ------------------------------------------------------------------------------------

def test_template_and_crop_size():
    template, size = face_template(512)
    assert size == (420, 560)  # 3:4, int(75 * 5.6), int(100 * 5.6)
    np.testing.assert_allclose(template, [[17 * 5.6, 20 * 5.6], [58 * 5.6, 20 * 5.6], [37.5 * 5.6, 40 * 5.6]])
    assert face_template(256)[1] == (210, 280)


def test_similarity_recovers_exact_similarity():
    template, _ = face_template(512)
    theta, s, t = 0.3, 0.45, np.array([40.0, -12.0])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = (template - t) @ np.linalg.inv(s * rot).T  # template = s R p + t
    m, _ = similarity_from_points(points, template)
    np.testing.assert_allclose(m, np.concatenate([s * rot, t[:, None]], axis=1), atol=1e-9)
    ref, _ = cv2.estimateAffinePartial2D(points.astype(np.float32), template.astype(np.float32), method=cv2.LMEDS)
    np.testing.assert_allclose(m, ref, atol=1e-2)


def test_similarity_closed_form_on_generic_points():
    """Rotation = argmin sum |R p_n - q_n|^2 (atan2 form), scale = ratio of stds, no reflection."""
    rng = np.random.default_rng(0)
    template, _ = face_template(256)
    for _ in range(5):
        p = template * rng.uniform(0.2, 3) + rng.normal(0, 8, (3, 2)) + rng.uniform(-100, 100, 2)
        m, bias = similarity_from_points(p, template)
        pc, qc = p - p.mean(0), template - template.mean(0)
        theta = np.arctan2(np.sum(pc[:, 0] * qc[:, 1] - pc[:, 1] * qc[:, 0]), np.sum(pc * qc))
        s = qc.std() / pc.std()
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        np.testing.assert_allclose(m[:, :2], s * rot, atol=1e-9)
        np.testing.assert_allclose(m[:, 2], template.mean(0) - s * rot @ p.mean(0), atol=1e-7)
        np.testing.assert_allclose(bias, qc[2] / qc.std(ddof=1) - pc[2] / pc.std(ddof=1), atol=1e-12)
    mirrored = template * [-1, 1]
    m, _ = similarity_from_points(mirrored, template)
    assert np.linalg.det(m[:, :2]) > 0  # a reflection is never returned


def test_crop_matrix_folds_cv2_resize(astronaut):
    template, size = face_template(512)
    affine, _ = similarity_from_points(np.array([[200.0, 90], [252, 93], [225, 124]]), template)
    two_step = cv2.resize(cv2.warpAffine(astronaut, affine, size), (512, 512), interpolation=cv2.INTER_LINEAR)
    one_step = cv2.warpAffine(astronaut, crop_matrix(affine, size, 512), (512, 512))
    assert np.abs(two_step.astype(float) - one_step).mean() < 1.0


# --- MediaPipe back-end on a real portrait ---------------------------------------------------------

def test_mediapipe_anchors_on_astronaut(astronaut, aligned):
    a = aligned.landmarks
    assert isinstance(MediaPipeLandmarker(), FaceLandmarker)
    assert a.shape == (3, 2) and np.all(a == np.round(a))
    assert 185 < a[0, 0] < 215 and 235 < a[1, 0] < 265  # brows: image-left then image-right
    assert 75 < a[0, 1] < 105 and 75 < a[1, 1] < 105
    assert a[0, 0] < a[2, 0] < a[1, 0] and a[2, 1] > a[:2, 1].max() + 15  # nose between, below
    assert aligned.crop.shape == (512, 512, 3) and aligned.crop.dtype == np.uint8
    assert aligned.matrix.shape == (2, 3) and aligned.matrix.dtype == np.float64
    template, size = face_template(512)
    mapped = np.c_[a, np.ones(3)] @ aligned.matrix.T  # anchors land near the resized template
    np.testing.assert_allclose(mapped, template * [512 / size[0], 512 / size[1]], atol=25)


def test_mediapipe_anchors_on_flipped_astronaut(aligner, astronaut, aligned):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    face = aligner.align(flipped)
    assert face is not None
    expect = np.stack([511 - aligned.landmarks[1, 0], 511 - aligned.landmarks[0, 0], 511 - aligned.landmarks[2, 0]])
    np.testing.assert_allclose(face.landmarks[:, 0], expect, atol=4)
    np.testing.assert_allclose(face.landmarks[:, 1], aligned.landmarks[[1, 0, 2], 1], atol=4)
    # mirrored geometry: same scale, opposite roll; the crops are near mirror images
    scale = [np.sqrt(abs(np.linalg.det(m[:, :2]))) for m in (face.matrix, aligned.matrix)]
    roll = [np.arctan2(m[1, 0], m[0, 0]) for m in (face.matrix, aligned.matrix)]
    assert abs(scale[0] / scale[1] - 1) < 0.05 and abs(roll[0] + roll[1]) < 0.03
    centre = (slice(128, 384), slice(128, 384))
    assert np.abs(face.crop[:, ::-1][centre].astype(float) - aligned.crop[centre]).mean() < 15


def test_mediapipe_small_face_in_1080p_frame(aligner, astronaut, aligned):
    frame = np.full((1080, 1920, 3), 60, np.uint8)  # face ~100 px: too small for the mesh's own detector
    frame[300:812, 900:1412] = astronaut
    face = aligner.align(frame)
    assert face is not None  # found through the full-range detector + crop fallback
    np.testing.assert_allclose(face.landmarks, aligned.landmarks + [900, 300], atol=3)


def test_matrix_reproduces_crop(astronaut, aligned):
    border = dict(borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL_VALUE,) * 3)
    rewarp = cv2.warpAffine(astronaut, aligned.matrix, (512, 512), flags=cv2.INTER_LINEAR, **border)
    assert np.abs(rewarp.astype(float) - aligned.crop).mean() < 1.0
    fast = FaceAligner(512, ScriptedLandmarker([aligned.landmarks]), exact_resampling=False).align(astronaut)
    np.testing.assert_array_equal(fast.crop, rewarp)
    np.testing.assert_array_equal(fast.matrix, aligned.matrix)


def test_no_face_on_blank_and_noise(aligner):
    rng = np.random.default_rng(0)
    assert aligner.align(np.zeros((512, 512, 3), np.uint8)) is None
    assert aligner.align(np.full((480, 640, 3), 127, np.uint8)) is None
    assert aligner.align(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) is None


def test_anchor_plausibility():
    template, _ = face_template(256)
    assert anchors_plausible(template, (300, 300))
    assert not anchors_plausible(template[[1, 0, 2]], (300, 300))  # mirrored order
    assert not anchors_plausible(template / 10, (300, 300))  # brows 4 px apart
    flat = template.copy()
    flat[2, 1] = flat[0, 1]
    assert not anchors_plausible(flat, (300, 300))  # nose on the brow line
    assert not anchors_plausible(template + 1000, (300, 300))  # nose off-frame
    assert not anchors_plausible(np.full((3, 2), np.nan), (300, 300))


# --- paste-back ------------------------------------------------------------------------------------

def test_restore_round_trip_psnr(aligner, astronaut, aligned):
    out = aligner.restore(astronaut, aligned.crop, aligned)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    assert psnr(out, astronaut) >= 30.0
    # the face region alone, where all the resampling happened
    ys, xs = np.nonzero((out != astronaut).any(-1))
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert psnr(out[box], astronaut[box]) >= 30.0


def test_restore_accepts_float_chw_and_tensor(aligner, astronaut, aligned):
    ref = aligner.restore(astronaut, aligned.crop, aligned)
    chw = aligned.crop.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_array_equal(aligner.restore(astronaut, chw, aligned), ref)
    np.testing.assert_array_equal(aligner.restore(astronaut, torch.from_numpy(chw), aligned), ref)
    small = cv2.resize(aligned.crop, (256, 256), interpolation=cv2.INTER_AREA)  # other crop sizes
    assert psnr(aligner.restore(astronaut, small, aligned), astronaut) >= 30.0


def test_restore_leaves_far_pixels_untouched(aligner, astronaut, aligned):
    bright = np.clip(aligned.crop.astype(np.int16) + 60, 0, 255).astype(np.uint8)
    out = aligner.restore(astronaut, bright, aligned)
    inv = cv2.invertAffineTransform(aligned.matrix)
    quad = np.array([[-0.5, -0.5, 1], [511.5, -0.5, 1], [511.5, 511.5, 1], [-0.5, 511.5, 1]]) @ inv.T
    near = np.zeros(astronaut.shape[:2], np.uint8)
    cv2.fillConvexPoly(near, np.round(quad).astype(np.int32), 1)
    near = cv2.dilate(near, np.ones((5, 5), np.uint8)).astype(bool)
    assert near.mean() < 0.1
    np.testing.assert_array_equal(out[~near], astronaut[~near])


def test_restore_pastes_and_feathers_without_seams(aligner, aligned):
    frame = np.full((512, 512, 3), 100, np.uint8)
    out = aligner.restore(frame, np.full((512, 512, 3), 160, np.uint8), aligned).astype(np.float64)
    nose = np.round(aligned.landmarks[2]).astype(int)
    assert np.all(out[nose[1], nose[0]] == 160)  # the crop is pasted in the middle
    assert out.min() == 100 and out.max() == 160
    # no seam: the 60-level step is spread over the feathered edge (w_edge = 5 px here)
    step = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert step <= 15
    assert ((out > 100) & (out < 160)).any(-1).sum() > 1000  # a real ramp, not a hard edge


# --- video and smoothing ---------------------------------------------------------------------------

def test_smooth_translation_closed_form():
    rng = np.random.default_rng(1)
    b = rng.normal(size=(6, 2))
    state, out = None, []
    for bt in b:
        s, state = smooth_translation(bt, state)
        out.append(s)
    for t in range(6):
        closed = 0.2**t * b[0] + sum(0.8 * 0.2 ** (t - k) * b[k] for k in range(1, t + 1))
        np.testing.assert_allclose(out[t], closed, atol=1e-12)
    np.testing.assert_array_equal(state, out[-1])
    s, state2 = smooth_translation(b[0], out[-1])
    assert state2 is not s  # the returned state is a copy: callers cannot alias it


def test_align_video_ema_on_matrix_and_faceless_frames(astronaut):
    template, size = face_template(512)
    base = np.array([[200.0, 90], [252, 93], [225, 124]])
    seq = [base, base + [[0, 0], [0, 0], [6, 3]], None, base + [[2, -1], [0, 4], [-5, 2]]]
    frames = [astronaut] * len(seq)
    faces = align_video(frames, FaceAligner(512, ScriptedLandmarker(seq)))
    assert faces[2] is None and all(isinstance(f, AlignedFace) for f in (faces[0], faces[1], faces[3]))
    raw = [similarity_from_points(a, template) for a in (seq[0], seq[1], seq[3])]
    state, expected = None, []
    for _, bias in raw:  # the faceless frame leaves the EMA untouched
        smoothed, state = smooth_translation(bias, state)
        expected.append(smoothed)
    for face, (affine, _), smoothed in zip((faces[0], faces[1], faces[3]), raw, expected):
        shifted = affine.copy()
        shifted[:, 2] += smoothed
        np.testing.assert_allclose(face.matrix, crop_matrix(shifted, size, 512), atol=1e-9)


def test_align_video_real_frames_pass_blank(aligner, astronaut, aligned):
    blank = np.zeros_like(astronaut)
    faces = align_video([astronaut, blank, astronaut], aligner)
    assert faces[1] is None
    for f in (faces[0], faces[2]):  # a static face: bias constant, EMA = bias, same as stateless
        np.testing.assert_allclose(f.matrix, aligned.matrix, atol=1e-9)


# --- other back-ends ---------------------------------------------------------------------------------

def test_face_alignment_missing_weights_clear_error(monkeypatch, tmp_path, astronaut):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    landmarker = FaceAlignmentLandmarker()  # lazy: nothing loaded yet
    with pytest.raises(BackendUnavailableError) as err:
        landmarker(astronaut)
    msg = str(err.value)
    assert "2DFAN4" in msg and "s3fd" in msg and str(tmp_path) in msg
    assert not any(tmp_path.rglob("*.pth*"))  # nothing was downloaded


def test_insightface_missing_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(BackendUnavailableError, match="insightface"):
        InsightFaceLandmarker()


# --- masks -------------------------------------------------------------------------------------------

def test_lower_face_mask_shape_and_regions():
    m = lower_face_mask(512)
    assert m.shape == (512, 512) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
    assert m[:180].min() == 1.0  # forehead, brows, eyes kept
    assert m[500:].min() == 1.0 and m[:, :10].min() == 1.0  # bottom and side margins kept
    assert m[384, 256] == 0.0 and m[300, 40] == 0.0  # mouth / chin and lower cheek regenerated
    assert m[230, 256] == 1.0 and m[230, 60] == 0.0  # nose kept, cheek beside it regenerated
    assert 0.37 < (m == 0).mean() < 0.44  # the official mask blanks about 41 %
    assert np.array_equal(m, m[:, ::-1])  # left-right symmetric
    assert lower_face_mask(256).shape == (256, 256)


def test_load_mask_image_like_official(tmp_path):
    img = np.zeros((256, 256, 3), np.uint8)  # RGB: R = keep mask, G and B decoys
    img[..., 0] = 255
    img[150:240, 20:236, 0] = 0
    img[..., 1] = 0
    img[..., 2] = 255
    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), img[..., ::-1])  # cv2 writes BGR
    m = load_mask_image(path, 512)
    assert m.shape == (512, 512) and m.dtype == np.float32
    expected = cv2.resize(img, (512, 512), interpolation=cv2.INTER_LANCZOS4)[..., 0] / 255.0
    np.testing.assert_allclose(m, expected, atol=1e-6)
    assert m[100, 256] == 1.0 and m[400, 256] == 0.0
    with pytest.raises(FileNotFoundError):
        load_mask_image(tmp_path / "nope.png", 512)


def test_align_video_warns_once_for_faceless_frames(caplog):
    """Faceless frames among faces are counted in one warning line, not one line per frame; a video with no
    face at all is left to the caller (its error or summary) and logs nothing here."""
    import logging

    from teacher.face import FaceAligner, align_video

    class Some:
        def __init__(self, faceless):
            self.faceless, self.i = set(faceless), -1

        def __call__(self, frame):
            self.i += 1
            return None if self.i in self.faceless else np.array([[40.0, 40.0], [88.0, 40.0], [64.0, 70.0]])

    frames = [np.zeros((128, 128, 3), np.uint8)] * 7
    with caplog.at_level(logging.WARNING):
        out = align_video(frames, FaceAligner(resolution=32, landmarker=Some({1, 2, 3, 6})))
    assert [a is None for a in out] == [False, True, True, True, False, False, True]
    lines = [r.getMessage() for r in caplog.records if "no face" in r.getMessage()]
    assert lines == ["no face in 4 of 7 frames (1-3, 6): passed through unedited"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert align_video(frames, FaceAligner(resolution=32, landmarker=Some(range(7)))) == [None] * 7
    assert not [r for r in caplog.records if "no face" in r.getMessage()]
