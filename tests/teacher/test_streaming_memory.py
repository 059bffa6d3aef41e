"""Memory bounded by the chunk, not the clip (issue 10, item 2): the teacher pipeline and ``prepare`` stream.

The streamed results must equal the whole-clip computation they replace: Whisper features one 30 s
window at a time equal ``whisper_features`` bit for bit; the streamed teacher equals a whole-clip
run (align every frame, then chunks of frames with a face) frame for frame; the looped video read
back from the spill equals ``loop_frames``. And a longer clip must not raise the peak of the numpy
memory a run allocates (tracemalloc; the whole-clip pipeline held every decoded frame).
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch

import configs
from teacher.audio import WhisperAudioEncoder, encode_log_mel, log_mel, whisper_features
from teacher.audio_windows import WhisperWindows
from teacher.media import read_video, write_video
from teacher.pipeline import _generate, build_teacher_parts, lipsync, lipsync_stream, loop_frames
from teacher.video_source import FrameSpill, VideoSource, pingpong_indices


@pytest.fixture(scope="module")
def encoder():
    return WhisperAudioEncoder.random_tiny(0)


def test_whisper_windows_equal_whole_clip_features(encoder):
    rng = np.random.default_rng(0)
    n = int(16000 * 31.3)  # two windows: the second 1.3 s long, the whole-clip maximum in the first
    x = (0.05 * rng.standard_normal(n) * np.linspace(2, 0.1, n)).astype(np.float32)
    ref = whisper_features(x, encoder)
    ww = WhisperWindows(encoder, x)
    assert ww.num_frames == len(ref) == n // 640 and len(ww.windows) == 2
    assert torch.equal(ww.frames(range(ww.num_frames)), ref)
    picks = [780, 3, 749, 750, 751, 0]  # across the 30 s boundary, out of order
    assert torch.equal(ww.frames(picks), ref[picks])
    assert torch.equal(ww.steps(1490, ww.num_steps), encode_log_mel(encoder, log_mel(x))[1490:])
    assert len(ww._cache) <= 2
    with pytest.raises(IndexError):
        ww.frames([ww.num_frames])


def test_whisper_windows_short_and_unusable_audio(encoder):
    x = np.sin(np.arange(1000) / 7).astype(np.float32)
    assert torch.equal(WhisperWindows(encoder, x).frames([0]), whisper_features(x, encoder))
    assert WhisperWindows(encoder, np.zeros(600, np.float32)).num_frames == 0
    with pytest.raises(ValueError, match="NaN"):
        WhisperWindows(encoder, np.full(2000, np.nan, np.float32))


def test_pingpong_indices_and_spill(tmp_path):
    assert pingpong_indices(8, 3).tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    assert pingpong_indices(3, 1).tolist() == [0, 0, 0]
    frames = np.random.default_rng(1).integers(0, 255, (5, 6, 4, 3), dtype=np.uint8)
    assert np.array_equal(loop_frames(frames, 13), frames[pingpong_indices(13, 5)])
    spill = FrameSpill(tmp_path)
    for f in frames:
        spill.append(f)
    assert len(spill) == 5 and all(np.array_equal(spill[i], frames[i]) for i in (4, 0, 2))
    assert list(tmp_path.iterdir()) == []  # unnamed: nothing to leave behind
    spill.close()


def test_video_source_streams_and_loops_a_file(tmp_path):
    rng = np.random.default_rng(2)
    clip = rng.integers(0, 255, (12, 32, 48, 3), dtype=np.uint8)
    clip[:, :16] = np.arange(12)[:, None, None, None] * 20  # a frame-number band that survives H.264
    path = tmp_path / "v.mp4"
    write_video(path, clip)
    decoded, _ = read_video(path)
    with VideoSource(path) as src:
        assert all(np.array_equal(a, b) for a, b in zip(src.frames(7), decoded[:7]))
        assert src.length is None  # a prefix never decodes to the end, nor spills
        ahead, behind = src.frames(30), src.frames(30)  # two iterators, interleaved, share the spill
        got_a = [next(ahead) for _ in range(20)]
        got_b = list(behind)
        got_a += list(ahead)
        assert src.length == 12 and src._spill is not None
        want = loop_frames(decoded, 30)
        assert all(np.array_equal(a, w) for a, w in zip(got_a, want)) and len(got_a) == 30
        assert all(np.array_equal(b, w) for b, w in zip(got_b, want)) and len(got_b) == 30


def _whole_clip_reference(parts, frames, audio, seed):
    """The pipeline as it was before streaming: features and alignment of the whole clip first."""
    from teacher.face import align_video
    from teacher.sampler import repeated_noise

    feats = whisper_features(np.pad(audio, (0, -len(audio) % 640)), parts.whisper)  # ceil(T * 25) frames

    class Feats:  # what _generate asks of the features
        seconds = 0.0

        @staticmethod
        def frames(idx):
            return feats[idx]

    frames = loop_frames(frames, len(feats))
    aligned = align_video(frames, parts.aligner)
    with_face = [i for i, a in enumerate(aligned) if a is not None]
    g = torch.Generator().manual_seed(seed)
    h = parts.resolution // parts.vae.scale_factor
    noise = repeated_noise((1, 4, parts.num_frames, h, h), g)
    out = frames.copy()
    for c in range(0, len(with_face), parts.num_frames):
        chunk = [(i, frames[i], aligned[i]) for i in with_face[c : c + parts.num_frames]]
        for i, f in _generate(parts, chunk, Feats, noise, g).items():
            out[i] = f
    return out, [i for i, a in enumerate(aligned) if a is None]


@pytest.fixture(scope="module")
def parts():
    return build_teacher_parts(configs.load("teacher/tiny"), steps=1)


@pytest.fixture(scope="module")
def gappy_clip(tmp_path_factory):
    """1.6 s of the synthetic talking face with faceless frames inside and across chunks, as an mp4."""
    from distill.synthworld import make_clip

    clip = make_clip(5, resolution=256, seconds=1.6)
    frames = clip.frames.copy()
    frames[3:5] = 90
    frames[18:30] = 40
    path = tmp_path_factory.mktemp("clip") / "gappy.mp4"
    write_video(path, frames, audio=clip.audio)
    return path, clip.audio


def test_streamed_teacher_equals_whole_clip_run(parts, gappy_clip):
    path, audio = gappy_clip
    frames, _ = read_video(path)
    long_audio = np.concatenate([audio, audio[: 16000 * 9 // 10]])  # 2.5 s: the 1.6 s video ping-pongs
    assert len(long_audio) == 62.5 * 640  # so 63 frames, the last one's features over zero padding
    ref, faceless = _whole_clip_reference(parts, frames, long_audio, seed=3)
    got = lipsync(parts, path, long_audio, seed=3, progress=False)  # streamed from the file, via the spill
    assert got.frames.shape == ref.shape == (63, 256, 256, 3) and len(got.audio) == len(long_audio)
    assert np.array_equal(got.frames, ref)
    assert got.faceless == faceless and {3, 4, 18, 29} <= set(faceless)
    line = got.summary()
    assert line.startswith(f"63 frames: {63 - len(faceless)} edited, {len(faceless)} passed through: ")
    assert f"{len(faceless)} with no face (3-4, 18-29" in line and "\n" not in line


def _numpy_peak(parts, path, audio) -> int:
    """Peak bytes traced while streaming ``path`` through the teacher into a sink that drops frames."""
    tracemalloc.start()
    try:
        with VideoSource(path) as src:
            lipsync_stream(parts, src, audio, lambda f: None, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_longer_clip_does_not_raise_the_peak(parts, tmp_path):
    """256 px frames are 197 kB each: holding a 4 s clip would add 15 MB over a 1 s one."""
    from distill.synthworld import make_clip

    clip = make_clip(6, resolution=256, seconds=4.0)
    peaks = []
    for seconds in (1.0, 1.0, 4.0):  # the first run is a warm-up: one-time allocations (31 MB) would hide a clip
        k = int(seconds * 25)
        path = tmp_path / f"talk_{k}.mp4"
        write_video(path, clip.frames[:k], audio=clip.audio[: k * 640])
        peaks.append(_numpy_peak(parts, path, clip.audio[: k * 640]))
    peaks = peaks[1:]
    assert peaks[1] < peaks[0] + 3e6, f"peak {peaks[0] / 1e6:.1f} MB at 1 s, {peaks[1] / 1e6:.1f} MB at 4 s"


def test_prepare_streams_shards_and_counts_every_frame(gappy_clip, tmp_path):
    """Faces at 0-2, 5-17 and 30-39 (40 frames): the two long runs become shards as they stream, the
    3-frame run is dropped, and the one summary line counts frames in shards and left out, by reason."""
    from distill.data import PrepareConfig, prepare
    from teacher.media import read_audio

    path, _ = gappy_clip
    src = tmp_path / "src"
    src.mkdir()
    (src / path.name).write_bytes(path.read_bytes())
    report = prepare(src, tmp_path / "out", PrepareConfig(resolution=64, min_frames=8))
    shards = sorted((tmp_path / "out" / "shards").iterdir())
    assert [s.name.split("_")[-1] for s in shards] == ["s000", "s001"]  # no temporary folder left
    starts = [json.loads((s / "meta.json").read_text())["start_frame"] for s in shards]
    frames = [len(read_video(s / "faces.mp4")[0]) for s in shards]
    assert starts == [5, 30] and frames == [13, 10]
    audio = read_audio(path)
    np.testing.assert_array_equal(np.load(shards[1] / "audio.npy"), audio[30 * 640 : 40 * 640])
    assert report.frames == 40 and report.shard_frames == 23
    assert report.left_out == {"with no face": 14, "in face runs under 8 frames": 3}
    line = report.summary().splitlines()[-1]
    assert line.endswith(
        "2 shards; 40 frames: 23 in shards, 17 left out (14 with no face, 3 in face runs under 8 frames)"
    )


def test_summary_lines_name_each_reason():
    from distill.data.prepare import PrepareReport, SourceRecord
    from teacher.pipeline import LipsyncResult

    r = LipsyncResult(frames=None, audio=np.zeros(0, np.float32), num_frames=30, faceless=[0, 1, 2, 7, 8, 20],
                      too_small=[7, 8], turned=[20], note="face too small (40 x 45 px, minimum 50 x 80 px)",
                      seconds={"align": 1.0})  # fmt: skip
    assert r.summary() == (
        "30 frames: 24 edited, 6 passed through: 3 with no face (0-2); 1 with the face turned away or in profile "
        "(20); 2 with a face too small (40 x 45 px, minimum 50 x 80 px) (7-8) (align 1.00 s)"
    )
    report = PrepareReport(sources=2)
    report.add(SourceRecord("a.mp4", "ok", shards=["a_s000"], frames=50, faceless_frames=6, too_small_frames=2,
                            turned_frames=1, shard_frames=40, short_run_frames=4), min_frames=16)  # fmt: skip
    report.add(SourceRecord("b.mp4", "skipped", "too short: 9 frames with audio (< 16)", frames=9), min_frames=16)
    lines = report.summary().splitlines()
    assert lines[0] == "  skipped b.mp4: too short: 9 frames with audio (< 16)"
    assert lines[1] == (
        "2 source videos: 1 prepared, 1 skipped, 0 already done; 1 shards; 59 frames: 40 in shards, 19 left out "
        "(3 with no face, 2 with a face too small, 1 with the face turned away or in profile, "
        "4 in face runs under 16 frames, 9 in videos too short)"
    )
