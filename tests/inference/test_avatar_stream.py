"""Avatar preparation streamed: ``NpyStream`` writes a valid ``.npy`` row by row, a video file is prepared
frame by frame with the same result as its decoded frames, and the face options reach the aligner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.avatar import AvatarError, NpyStream, iter_source, prepare_avatar, read_source
from inference.run import load_student

STUDENT = "assets/toy_student"


@pytest.mark.parametrize(("dtype", "row"), [(np.uint8, (5, 7, 3)), (np.float64, (2, 3)), (np.bool_, ()),
                                            (np.float32, (4, 16, 16))])  # fmt: skip
def test_npy_stream_round_trip(tmp_path, dtype, row):
    rng = np.random.default_rng(0)
    rows = (rng.random((11, *row)) * 200).astype(dtype)
    st = NpyStream(tmp_path / "a.npy", dtype, row)
    for piece in (rows[:1], rows[1:1], rows[1:7], rows[7:]):
        st.append(piece)
    assert not (tmp_path / "a.npy").exists()  # nothing visible before close
    st.close()
    back = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert back.dtype == np.dtype(dtype) and back.shape == rows.shape
    np.testing.assert_array_equal(back, rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_npy_stream_rejects_another_row_shape_and_discards(tmp_path):
    st = NpyStream(tmp_path / "f.npy", np.uint8, (4, 4, 3))
    st.append(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"row 2 is \(5, 4, 3\)"):
        st.append(np.zeros((1, 5, 4, 3), np.uint8))
    st.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def bundle():
    return load_student(STUDENT)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    from distill.synthworld import make_clip
    from teacher.media import write_video

    clip = make_clip(7, resolution=256, seconds=1.2)
    path = tmp_path_factory.mktemp("clip") / "face.mp4"
    write_video(path, clip.frames, audio=clip.audio, sample_rate=16000)
    return path


def test_video_file_prepared_as_a_stream_equals_its_frames(tmp_path, bundle, clip_file):
    frames = read_source(clip_file)  # the decoded frames, all at once
    a = prepare_avatar(clip_file, tmp_path / "from_file", bundle, progress=False, chunk=4)
    b = prepare_avatar(frames, tmp_path / "from_array", bundle, progress=False, chunk=4)
    assert a.num_frames == len(frames) == 30 and a.has_face.all()
    for name in ("frames", "crops", "matrices", "has_face", "masked_latents", "ref_latents"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    assert not [p.name for p in (tmp_path / "from_file").iterdir() if p.name.startswith(".")]  # no temporary left
    assert a.manifest["frame_size"] == [256, 256] and a.manifest["faces"] == 30


def test_face_options_reach_the_aligner_and_the_manifest(tmp_path, bundle, clip_file):
    av = prepare_avatar(clip_file, tmp_path / "av", bundle, progress=False,
                        face={"choose": 0, "small_faces": True, "scene_cut": False})  # fmt: skip
    face = json.loads((tmp_path / "av" / "manifest.json").read_text())["aligner"]["face"]
    assert face == {"choose": 0, "small_faces": True, "scene_cut": False} and av.has_face.all()
    no_third_face = "no face matching face choice 2 .--face. found in any of its 30 frames"  # 3rd from the left
    with pytest.raises(AvatarError, match=no_third_face):
        prepare_avatar(clip_file, tmp_path / "none", bundle, progress=False, face={"choose": 2})
    assert not (tmp_path / "none" / "manifest.json").exists() and not any((tmp_path / "none").iterdir())
    with pytest.raises(AvatarError, match="face.choose must be"):
        prepare_avatar(clip_file, tmp_path / "bad", bundle, progress=False, face={"choose": "biggest"})


def test_iter_source_errors(tmp_path):
    with pytest.raises(AvatarError, match="file not found"):
        next(iter_source(tmp_path / "missing.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(AvatarError):
        next(iter_source(tmp_path / "junk.mp4"))
    with pytest.raises(AvatarError, match="uint8"):
        next(iter_source(np.zeros((2, 8, 8, 3), np.float32)))
