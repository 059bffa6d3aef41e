"""The streaming engine on a tiny random student: chunking invariance, frame counts, pass-through,
context, degradation under a clock, and the avatar's failure modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.avatar import AvatarError, load_avatar, pingpong, prepare_avatar
from inference.engine import LEVELS, EngineConfig, flush, start, step


def tiny_export(out: Path, resolution: int = 64, num_frames: int = 4) -> Path:
    """A random tiny student exported with the tiny preset's inference settings (random VAE and Whisper)."""
    import student
    from student.model import StudentUNet
    from tests.student import tiny_teacher

    net = StudentUNet.from_teacher(tiny_teacher()).eval()
    with torch.no_grad():  # a student whose output depends on the audio
        net.guidance_embedding.linear.weight.normal_(0.0, 0.05)
    inference = {"resolution": resolution, "num_frames": num_frames, "steps": 1, "w": 1.5, "vae": None,
                 "whisper": None, "mask": None}  # fmt: skip
    return student.save(net, out, inference=inference)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(bundle, avatar, audio): a tiny student, a 1.2 s synthetic avatar and 1.3 s of its audio (16 kHz)."""
    import student
    from distill.synthworld import make_clip

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("engine")
    bundle = student.load_bundle(tiny_export(root / "student"))
    clip = make_clip(3, resolution=256, seconds=1.2)
    avatar = prepare_avatar(clip.frames, root / "avatar", bundle, progress=False)
    audio = np.concatenate([clip.audio, clip.audio[:1600]]).astype(np.float32)  # outlasts the video: ping-pong
    return bundle, avatar, audio


def run(bundle, avatar, audio, pieces: list[int], cfg: EngineConfig | None = None, **kw) -> list[np.ndarray]:
    state = start(avatar, bundle, cfg or EngineConfig(chunk=4, context=2, degrade=False), **kw)
    out, s = [], 0
    for n in pieces:
        frames, state = step(state, audio[s : s + n])
        out += frames
        s += n
    frames, state = flush(state)
    return out + frames


@pytest.mark.parametrize("blend", [False, True], ids=["plain", "blend"])
def test_same_frames_whatever_the_audio_cut(world, blend):
    """One piece, 20 ms pieces and ragged pieces give the same frames (relative error < 1e-4)."""
    bundle, avatar, audio = world
    cfg = EngineConfig(chunk=4, context=2, degrade=False, blend=blend)
    whole = run(bundle, avatar, audio, [len(audio)], cfg)
    assert len(whole) == -(-len(audio) // 640)  # ceil(samples / 640): the last partial frame gets one
    small = run(bundle, avatar, audio, [320] * (len(audio) // 320 + 1), cfg)
    rng = np.random.default_rng(0)
    ragged = run(bundle, avatar, audio, list(rng.integers(0, 3000, size=len(audio) // 700 + 10)) + [len(audio)], cfg)
    ref = np.stack(whole).astype(np.float64)
    for other in (small, ragged):
        assert len(other) == len(whole)
        err = np.linalg.norm(np.stack(other) - ref) / np.linalg.norm(ref)
        assert err < 1e-4


def test_frames_are_edited_and_follow_the_avatar(world):
    """Every output frame is the ping-pong avatar frame with its lower face replaced: pixels change inside
    the face and stay exactly the source far from it."""
    bundle, avatar, audio = world
    frames = run(bundle, avatar, audio, [len(audio)])
    src = pingpong(np.arange(len(frames)), avatar.num_frames)
    for k, frame in enumerate(frames):
        original = np.asarray(avatar.frames[src[k]])
        assert frame.shape == original.shape
        assert np.abs(frame.astype(int) - original).max() > 10  # edited
        assert np.array_equal(frame[:40], original[:40])  # the top of the frame is never touched


def test_context_changes_the_window_but_not_the_count(world):
    bundle, avatar, audio = world
    # (context >= 1: the tiny test U-Net's 1x1 bottleneck cannot normalise a 1-frame window)
    a = run(bundle, avatar, audio, [len(audio)], EngineConfig(chunk=4, context=1, degrade=False))
    b = run(bundle, avatar, audio, [len(audio)], EngineConfig(chunk=4, context=4, degrade=False))
    assert len(a) == len(b)
    assert np.array_equal(np.stack(a[:4]), np.stack(b[:4]))  # the first chunk has no past either way
    assert not np.array_equal(np.stack(a[4:]), np.stack(b[4:]))  # the context frames enter the U-Net window


def test_blend_cross_fades_the_shared_frames(world):
    """blend: frames that two windows share leave as a cross-fade of both predictions; the rest as before.
    The stream ending on a chunk boundary still emits every frame."""
    bundle, avatar, audio = world
    plain = run(bundle, avatar, audio, [len(audio)], EngineConfig(chunk=4, context=2, degrade=False))
    blend = run(bundle, avatar, audio, [len(audio)], EngineConfig(chunk=4, context=2, degrade=False, blend=True))
    assert len(plain) == len(blend)
    assert np.array_equal(np.stack(plain[:2]), np.stack(blend[:2]))  # frames 0, 1: first window, never shared
    assert not np.array_equal(plain[2], blend[2])  # frame 2: shared by windows [0, 4) and [2, 8)
    exact = run(bundle, avatar, audio[: 16 * 640], [16 * 640], EngineConfig(chunk=4, context=2, degrade=False,
                                                                          blend=True))  # fmt: skip
    assert len(exact) == 16
    with pytest.raises(ValueError, match="chunk >= context"):
        EngineConfig(chunk=2, context=4, blend=True)


def test_faceless_frames_pass_through(world, tmp_path):
    bundle, avatar, audio = world
    blank = np.full((3, 256, 256, 3), 128, np.uint8)
    frames = np.concatenate([np.asarray(avatar.frames[:5]), blank])
    av = prepare_avatar(frames, tmp_path / "av", bundle, progress=False)
    assert av.has_face.tolist() == [True] * 5 + [False] * 3
    state = start(av, bundle, EngineConfig(chunk=4, context=2, degrade=False))
    out, state = step(state, audio[: 8 * 640])
    more, state = flush(state)
    out += more
    assert len(out) == 8 and all(np.array_equal(out[i], blank[0]) for i in (5, 6, 7))
    assert state.stats["passed_through_faceless"] == 3


def test_degradation_under_a_clock(world):
    """A clock that runs far ahead makes every chunk late: the levels climb to pass-through and say so;
    without degrade, or without a clock, nothing changes."""
    bundle, avatar, audio = world
    ticks = iter(np.arange(0, 1e4, 5.0))  # every reading is 5 s later
    state = start(avatar, bundle, EngineConfig(chunk=4, context=2, degrade=True), clock=lambda: float(next(ticks)))
    frames, state = step(state, audio)
    frames2, state = flush(state)
    levels = state.stats["levels"]
    assert sum(levels.values()) == len(frames) + len(frames2)
    assert levels["pass_through"] > 0 and levels["full"] > 0 and LEVELS[state.level] == "pass_through"
    n = levels["full"]
    assert all(np.array_equal(f, np.asarray(avatar.frames[s])) for f, s in
               zip((frames + frames2)[n + 4:], pingpong(np.arange(n + 4, 40), avatar.num_frames)))  # fmt: skip


def test_avatar_failures(world, tmp_path):
    import student

    bundle, avatar, _ = world
    assert load_avatar(avatar.path, bundle).num_frames == avatar.num_frames
    moved = shutil.copytree(bundle.path, tmp_path / "moved_student")  # the same student under another path
    assert load_avatar(avatar.path, student.load_bundle(moved)).num_frames == avatar.num_frames
    broken = tmp_path / "broken"
    shutil.copytree(avatar.path, broken)
    (broken / "ref_latents.npy").unlink()
    with pytest.raises(AvatarError, match="ref_latents.npy"):
        load_avatar(broken)
    other = tmp_path / "other"
    shutil.copytree(avatar.path, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["resolution"] = 128
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AvatarError, match="128 px"):
        load_avatar(other, bundle)
    with pytest.raises(AvatarError, match="not a prepared avatar"):
        load_avatar(tmp_path)
    with pytest.raises(AvatarError, match="no face"):
        prepare_avatar(np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "noface", bundle, progress=False)


def test_pingpong_is_latentsync_looping():
    from teacher.pipeline import loop_frames

    frames = np.arange(5)
    assert pingpong(np.arange(23), 5).tolist() == loop_frames(frames, 23).tolist()
    assert pingpong(np.arange(4), 1).tolist() == [0, 0, 0, 0]


def test_engine_config_rejects_impossible_values():
    for kw in ({"chunk": 0}, {"chunk": 17}, {"chunk": 16, "context": 9}, {"steps": 5}, {"decoder": "taesd"}):
        with pytest.raises(ValueError):
            EngineConfig(**kw)


def test_the_stream_noise_is_the_exports_unless_a_seed_is_given(world, tmp_path):
    """seed=None takes ``noise_seed`` from the export's config.json (written by scripts/select_noise.py);
    an explicit seed overrides it; an export without one uses 0."""
    import dataclasses

    from scripts.select_noise import parse_seeds, write_choice

    bundle, avatar, audio = world
    assert bundle.noise_seed == 0 and parse_seeds("0-2,7") == [0, 1, 2, 7]
    folder = shutil.copytree(bundle.path, tmp_path / "student")
    write_choice(folder, {"chosen_seed": 3, "seeds": {"3": {"sync_score": 0.5}}, "clips": 1, "clip_seed": 2000,
                          "seconds": 1.0, "preset": "engine/toy", "command": "test"})  # fmt: skip
    import student

    chosen = dataclasses.replace(bundle, noise_seed=student.load_bundle(folder).noise_seed)
    assert chosen.noise_seed == 3
    assert json.loads((folder / "config.json").read_text())["noise_selection"]["chosen_seed"] == 3
    short = audio[:16000]
    cfg = EngineConfig(chunk=4, context=2, degrade=False)
    default = np.stack(run(chosen, avatar, short, [len(short)], cfg))
    explicit = np.stack(run(bundle, avatar, short, [len(short)], dataclasses.replace(cfg, seed=3)))
    zero = np.stack(run(bundle, avatar, short, [len(short)], cfg))
    assert np.array_equal(default, explicit)
    assert not np.array_equal(default, zero)
