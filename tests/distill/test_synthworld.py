"""The synthetic talking-face world: audio determines the mouth, pixels show it, seeds fix it."""

from __future__ import annotations

import importlib.util
import json
import time

import cv2
import numpy as np
import pytest

from distill.synthworld import (
    LOWER_HALF_REGION,
    NUM_IDENTITIES,
    PHONES,
    SHAPE_NAMES,
    SHAPE_OPEN,
    SHAPE_ROUND,
    SHAPE_SPREAD,
    clip_seed,
    frame_truth,
    make_clip,
    measure_mouth,
    read_sidecar,
    region_from_face_box,
    sample_timeline,
    speak,
)

FPS, SR, HOP = 25, 16000, 640


@pytest.fixture(scope="module")
def clips256():
    """One 4 s clip per identity at 256 px (shared by the pixel tests)."""
    return [make_clip(100 + k, identity=k, resolution=256) for k in range(NUM_IDENTITIES)]


def _windows(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """LatentSync's audio window per frame: 80 ms past .. 120 ms future, ``[T, 3200]``."""
    padded = np.pad(audio, (2 * HOP, 3 * HOP))
    return np.stack([padded[HOP * i : HOP * i + 5 * HOP] for i in range(num_frames)])


def _band_features(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """Log energies of 8 bands in each 40 ms slice of the window, ``[T, 40]``."""
    w = _windows(audio, num_frames).reshape(num_frames, 5, HOP) * np.hanning(HOP)
    spec = np.abs(np.fft.rfft(w, axis=-1)) ** 2
    edges = np.geomspace(4, 320, 9).astype(int)
    bands = np.stack([spec[..., a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:])], -1)
    return np.log(bands + 1e-6).reshape(num_frames, -1)


# ---------------------------------------------------------------- audio


def test_audio_length_range_and_determinism():
    a = make_clip(3, identity=2, resolution=64, seconds=2.0)
    b = make_clip(3, identity=2, resolution=64, seconds=2.0)
    c = make_clip(4, identity=2, resolution=64, seconds=2.0)
    assert a.num_frames == 50 and a.audio.shape == (50 * HOP,) and a.audio.dtype == np.float32
    assert np.isfinite(a.audio).all() and np.abs(a.audio).max() <= 1.0
    assert np.abs(a.audio).max() > 0.1  # speech, not silence
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, c.audio)
    odd = make_clip(5, resolution=64, seconds=1.23)
    assert odd.num_frames == 31 and len(odd.audio) == 31 * HOP


def test_speak_is_optional():
    out = speak("hello")  # None without espeak-ng
    assert out is None or (out.dtype == np.float32 and out.ndim == 1 and len(out) > 1000)


# ---------------------------------------------------------------- ground truth


def test_mouth_truth_ranges_and_smoothness():
    for seed in range(20):
        timeline = sample_timeline(np.random.default_rng(seed), 4.0)
        durs = np.array([s.end - s.start for s in timeline if s.label != "sil"])
        assert durs.min() >= 0.06 - 1e-9 and durs.max() <= 0.25 + 1e-9
        gt = frame_truth(timeline, 100, FPS)
        o, w = gt["mouth_open"], gt["mouth_width"]
        assert o.min() >= 0 and o.max() <= 1 and w.min() >= 0 and w.max() <= 1
        assert np.abs(np.diff(o)).max() < 0.7  # no teleporting between frames
        assert np.abs(np.diff(o)).mean() < 0.15
        assert set(gt["phoneme"]) <= set(PHONES)
        assert all(PHONES[p].shape == s for p, s in zip(gt["phoneme"], gt["mouth_shape"]))
        assert gt["mouth_shape"].min() >= 0 and gt["mouth_shape"].max() < len(SHAPE_NAMES)


def test_silence_and_bilabials_close_the_mouth():
    for seed in range(10):
        timeline = sample_timeline(np.random.default_rng(seed), 6.0)
        t = np.arange(0, 6.0, 0.005)
        o = frame_truth(timeline, 150, FPS)["mouth_open"]
        from distill.synthworld.phonemes import articulation

        dense = articulation(timeline, t)["open"]
        for seg in timeline:
            mid = (t > seg.start + 0.1) & (t < seg.end - 0.1)
            if seg.label == "sil" and mid.any():
                assert dense[mid].max() < 0.02
            if seg.label in ("p", "b", "m") and seg.end < 6.0:
                assert dense[np.argmin(np.abs(t - 0.5 * (seg.start + seg.end)))] < 0.08
        assert o.max() > 0.5  # and vowels open it


# ---------------------------------------------------------------- audio -> mouth


def test_audio_window_determines_mouth():
    clips = [make_clip(200 + k, identity=k % NUM_IDENTITIES, resolution=32) for k in range(7)]
    for c in clips:  # loudness of LatentSync's window alone tracks the jaw
        rms = np.sqrt((_windows(c.audio, c.num_frames) ** 2).mean(1))
        assert np.corrcoef(rms, c.mouth_open)[0, 1] > 0.6
    # a linear read-out of the window's band energies, fitted on 4 clips, predicts 3 others
    x = np.concatenate([_band_features(c.audio, c.num_frames) for c in clips[:4]])
    x = np.c_[x, np.ones(len(x))]
    y = np.concatenate([c.mouth_open for c in clips[:4]])
    coef = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)
    for c in clips[4:]:
        xt = np.c_[_band_features(c.audio, c.num_frames), np.ones(c.num_frames)]
        assert np.corrcoef(xt @ coef, c.mouth_open)[0, 1] > 0.85


def test_vowel_sound_determines_lip_shape():
    """Open / rounded / spread vowels are told apart by the spectrum of the frame's audio."""
    clips = [make_clip(300 + k, identity=k % NUM_IDENTITIES, resolution=32) for k in range(7)]

    def spectrum_shape(c):  # log band energies of the frame's own 40 ms, level removed
        f = _band_features(c.audio, c.num_frames).reshape(c.num_frames, 5, 8)[:, 2]
        return f - f.mean(1, keepdims=True)

    vowel = [np.isin(c.mouth_shape, (SHAPE_OPEN, SHAPE_ROUND, SHAPE_SPREAD)) for c in clips]
    x = np.concatenate([spectrum_shape(c)[v] for c, v in zip(clips[:4], vowel)])
    y = np.concatenate([c.mouth_shape[v] for c, v in zip(clips[:4], vowel)])
    classes = np.unique(y)
    centroids = np.stack([x[y == k].mean(0) for k in classes])
    acc = []
    for c, v in zip(clips[4:], vowel[4:]):
        d = ((spectrum_shape(c)[v][:, None] - centroids[None]) ** 2).sum(-1)
        acc.append(np.mean(classes[d.argmin(1)] == c.mouth_shape[v]))
    assert np.mean(acc) > 0.65 and min(acc) > 0.5, acc


# ---------------------------------------------------------------- pixels


def test_clip_arrays(clips256):
    c = clips256[1]
    assert c.frames.shape == (100, 256, 256, 3) and c.frames.dtype == np.uint8
    assert c.mouth_open.shape == c.mouth_width.shape == c.blink.shape == (100,)
    assert c.mouth_shape.dtype == np.int64 and c.phoneme.shape == (100,)
    assert c.face_box.shape == (100, 4) and c.identity == 1
    x0, y0, x1, y1 = c.face_box.mean(0)
    assert 0 < x0 < 128 < x1 < 256 and 0 < y0 < 128 < y1 < 256
    assert 0 <= make_clip(9, resolution=32, seconds=0.2).identity < NUM_IDENTITIES
    assert c.blink.max() > 0.9  # at least one blink in 4 s (seeded)


def test_measure_mouth_matches_truth(clips256):
    corr = {c.identity: np.corrcoef(measure_mouth(c.frames), c.mouth_open)[0, 1] for c in clips256}
    for s in (0, 1, 2):  # other seeds and identities at 256 and 384 px
        c = make_clip(s, identity=2 * s, resolution=(256, 384)[s % 2], seconds=2.0)
        corr[(s, c.identity)] = np.corrcoef(measure_mouth(c.frames), c.mouth_open)[0, 1]
    assert min(corr.values()) >= 0.95, corr
    c = clips256[0]
    m = measure_mouth(c.frames)
    assert np.abs(m - c.mouth_open).mean() < 0.06  # calibrated to the opening, not just correlated
    assert m[c.mouth_open < 0.01].max(initial=0.0) < 0.05
    # small frames lose sub-pixel openings: weaker but still strong agreement at 128 px
    c = make_clip(3, identity=5, resolution=128, seconds=4.0)
    assert np.corrcoef(measure_mouth(c.frames), c.mouth_open)[0, 1] >= 0.85


def test_measure_mouth_on_face_crops(clips256):
    """A region box reads the lower half of face crops (as aligned crops of the pipeline)."""
    for c in clips256[::3]:
        crops = []
        for frame, (x0, y0, x1, y1) in zip(c.frames, c.face_box):
            cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, y1 - y0
            src = np.float32([[cx - s / 2, cy - s / 2], [cx + s / 2, cy - s / 2], [cx - s / 2, cy + s / 2]])
            M = cv2.getAffineTransform(src, np.float32([[0, 0], [256, 0], [0, 256]]))
            crops.append(cv2.warpAffine(frame, M, (256, 256), borderMode=cv2.BORDER_REPLICATE))
        m = measure_mouth(np.stack(crops), region=LOWER_HALF_REGION)
        assert np.corrcoef(m, c.mouth_open)[0, 1] >= 0.95
        px = measure_mouth(np.stack(crops), region=(38, 128, 218, 251))  # same box in pixels
        np.testing.assert_allclose(px, m, atol=1e-6)


def test_measure_mouth_with_face_box_hint(clips256):
    """Far from the canonical layout (a 40 px shift) a face box tells where to look."""
    c = clips256[4]
    M = np.float32([[1, 0, 40], [0, 1, -30]])
    moved = np.stack([cv2.warpAffine(f, M, (256, 256), borderMode=cv2.BORDER_REPLICATE) for f in c.frames])
    boxes = region_from_face_box(c.face_box + np.float32([40, -30, 40, -30]))
    assert np.corrcoef(measure_mouth(moved, region=boxes), c.mouth_open)[0, 1] >= 0.95


def test_measure_mouth_reads_pixels_not_truth(clips256):
    c = clips256[2]
    noisy = np.clip(c.frames + np.random.default_rng(0).normal(0, 4, c.frames.shape), 0, 255).astype(np.uint8)
    assert np.corrcoef(measure_mouth(noisy), c.mouth_open)[0, 1] >= 0.95
    # an unsure model blurs the cavity: the measured opening shrinks
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in c.frames])
    assert measure_mouth(blurred).mean() < measure_mouth(c.frames).mean()
    assert measure_mouth(c.frames[0]).shape == (1,)


def test_open_mouth_carries_detail(clips256):
    """Teeth edges, tongue and lip texture: more high-frequency energy when the mouth is open."""
    for c in clips256:
        lap = np.stack([cv2.Laplacian(cv2.cvtColor(f[150:200, 80:176], cv2.COLOR_RGB2GRAY), cv2.CV_32F)
                        for f in c.frames])
        energy = (lap**2).mean((1, 2))
        opened, closed = energy[c.mouth_open > 0.6], energy[c.mouth_open < 0.05]
        assert len(opened) and len(closed)
        assert opened.mean() > 2.0 * closed.mean(), c.identity


def test_mediapipe_finds_every_identity(clips256):
    mp = pytest.importorskip("mediapipe")
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        for c in clips256:
            picks = {0, int(np.argmax(c.mouth_open)), int(np.argmax(c.blink)), c.num_frames - 1}
            for i in sorted(picks):
                found = mesh.process(np.ascontiguousarray(c.frames[i])).multi_face_landmarks
                assert found, f"identity {c.identity} frame {i}"


# ---------------------------------------------------------------- determinism and speed


def test_frames_deterministic():
    a = make_clip(11, resolution=96, seconds=1.0)
    b = make_clip(11, resolution=96, seconds=1.0)
    c = make_clip(12, identity=a.identity, resolution=96, seconds=1.0)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.mouth_open, b.mouth_open)
    assert list(a.phoneme) == list(b.phoneme)
    assert not np.array_equal(a.frames, c.frames)
    assert clip_seed(0, 1) == clip_seed(0, 1) != clip_seed(0, 2) != clip_seed(1, 1)


def test_make_clip_is_fast():
    make_clip(0, identity=3, resolution=256, seconds=0.2)  # warm the face cache
    t = time.perf_counter()
    make_clip(1, identity=3, resolution=256, seconds=4.0)
    assert time.perf_counter() - t < 3.0


# ---------------------------------------------------------------- files


def test_sidecar_roundtrip(tmp_path):
    c = make_clip(5, identity=4, resolution=32, seconds=0.8)
    side = c.sidecar()
    assert side["num_frames"] == 20 and side["num_samples"] == 20 * HOP and side["identity"] == 4
    (tmp_path / "x.json").write_text(json.dumps(side))
    back = read_sidecar(tmp_path / "x.mp4")
    np.testing.assert_allclose(back["mouth_open"], c.mouth_open, atol=1e-5)
    assert list(back["phoneme"]) == list(c.phoneme) and back["seed"] == 5


def test_write_clip_and_dataset(tmp_path):
    if importlib.util.find_spec("av") is None:
        pytest.skip("PyAV not installed")
    try:
        from teacher.media import read_audio, read_video, write_video  # noqa: F401
    except ImportError:
        pytest.skip("teacher.media is not available")
    from distill.synthworld import synth_dataset, write_clip

    c = make_clip(1, identity=0, resolution=64, seconds=0.4)
    path = write_clip(c, tmp_path, "one")
    assert path == tmp_path / "one.mp4" and read_sidecar(path)["num_frames"] == 10
    frames, fps = read_video(path)
    assert frames.shape == (10, 64, 64, 3) and fps == 25
    assert np.abs(frames.astype(float) - c.frames).mean() < 8  # H.264 at crf 18
    assert abs(len(read_audio(path)) - len(c.audio)) < 0.1 * 16000  # AAC pads a little
    paths = synth_dataset(tmp_path / "ds", clips=2, resolution=32, seconds=0.4, seed=3)
    assert [p.name for p in paths] == ["clip_00000.mp4", "clip_00001.mp4"]
    assert read_sidecar(paths[1])["seed"] == clip_seed(3, 1)
