"""`turbosync synth` -> `turbosync prepare` -> ClipDataset, on the synthetic world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.data import ClipDataset, PrepareConfig, encode_latents, prepare, scene_cuts, segments
from scripts.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("out")
    assert main(["synth", str(src), "--clips", "2", "--resolution", "256", "--seconds", "1.6", "--seed", "3"]) == 0
    (src / "corrupt.mp4").write_bytes(b"\x00\x01 definitely not a video" * 50)
    from teacher.media import write_video

    blank = np.full((30, 128, 128, 3), 90, np.uint8)  # no face anywhere
    write_video(src / "blank.mp4", blank, audio=np.zeros(30 * 640, np.float32))
    cfg = PrepareConfig(resolution=64, min_frames=8)
    report = prepare(src, out, cfg)
    return src, out, cfg, report


def test_prepare_reports_bad_files_and_writes_shards(prepared):
    src, out, cfg, report = prepared
    assert report.sources == 4 and report.prepared == 2 and report.skipped == 2 and report.shards == 2
    reasons = {k.split("/")[-1]: v for k, v in report.skipped_files.items()}
    assert "MediaError" in reasons["corrupt.mp4"]
    assert reasons["blank.mp4"] == "no face found"
    saved = json.loads((out / "report.json").read_text())
    assert saved["skipped"] == 2
    shard = sorted((out / "shards").iterdir())[0]
    meta = json.loads((shard / "meta.json").read_text())
    assert meta["num_frames"] == 40 and meta["resolution"] == 64
    assert len(meta["ground_truth"]["mouth_open"]) == 40  # synthetic sidecar carried along
    assert np.load(shard / "audio.npy").shape == (40 * 640,)


def test_prepare_resumes_without_redoing(prepared):
    src, out, cfg, _ = prepared
    report = prepare(src, out, cfg)
    assert report.resumed == 4 and report.shards == 2


def test_cli_prepare_exit_code(prepared, tmp_path):
    src, _, _, _ = prepared
    assert main(["prepare", str(src), str(tmp_path), "--resolution", "64", "--min-frames", "8"]) == 0
    assert len(list((tmp_path / "shards").iterdir())) == 2


def test_cli_prepare_face_choice(prepared, tmp_path, capsys):
    """--face reaches the aligner: the second face from the left does not exist in the one-face clips, so no
    shard is written (exit 2: nothing to train on); a bad choice is one error line, exit 2."""
    src, _, _, _ = prepared
    assert main(["prepare", str(src), str(tmp_path / "a"), "--resolution", "64", "--min-frames", "8", "--face", "1",
                 "--small-faces"]) == 2  # fmt: skip  (nothing usable: no shard, exit 2)
    assert not (tmp_path / "a" / "shards").exists() or not any((tmp_path / "a" / "shards").iterdir())
    assert "no usable video" in capsys.readouterr().err
    assert main(["prepare", str(src), str(tmp_path / "b"), "--face", "biggest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "face.choose must be" in err[0], err


def test_dataset_items_match_teacher_features(prepared):
    src, out, _, _ = prepared
    from teacher.audio import load_whisper, whisper_features
    from teacher.media import read_audio

    ds = ClipDataset(out, num_frames=8)
    assert len(ds) == 2 * 9  # 40 frames, windows of 8 at stride 4
    item = ds[3]
    assert item["frames"].shape == (3, 8, 64, 64) and item["frames"].min() >= -1 and item["frames"].max() <= 1
    assert item["mask"].shape == (1, 8, 64, 64) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(item["masked_frames"], item["frames"] * item["mask"])
    assert item["ref_frames"].shape == (3, 8, 64, 64) and not torch.equal(item["ref_frames"], item["frames"])
    assert item["audio"].shape == (8 * 640,) and item["mouth_open"].shape == (8,)
    shard = ds.shards[item["shard"]]
    full = whisper_features(read_audio(shard.meta["source"]), load_whisper(None))
    g0 = shard.meta["start_frame"] + item["start"]
    expected = full[g0 : g0 + 8]
    assert item["audio_embeds"].shape == expected.shape == (8, 50, 384)
    err = (item["audio_embeds"] - expected).norm() / expected.norm()
    assert err < 2e-3  # shards store the Whisper steps in float16
    again = ds[3]
    assert torch.equal(again["ref_frames"], item["ref_frames"])  # items are a pure function of the index
    same = ClipDataset(out, num_frames=8, reference="same")[3]
    assert torch.equal(same["ref_frames"], same["frames"])


def test_dataset_mel_negatives_are_off_sync_windows_of_the_same_clip(prepared):
    """mel_negatives=K: K mel windows of the same shard, each F // 2 or more frames from the item's own, equal to
    mel_window at those starts; the other keys are the items without it (their draws are untouched)."""
    from distill.data.dataset import shard_mel
    from losses.mel import mel_window

    _, out, _, _ = prepared
    plain = ClipDataset(out, num_frames=8, mel=True)
    ds = ClipDataset(out, num_frames=8, mel=True, mel_negatives=5)
    for i in (0, 4, len(ds) - 1):
        item, ref = ds[i], plain[i]
        assert item["mel_negatives"].shape == (5, *item["mel"].shape) == (5, 1, 80, 26)
        assert all(torch.equal(item[k], ref[k]) for k in ref if torch.is_tensor(ref[k]))
        whole = torch.from_numpy(shard_mel(ds.shards[item["shard"]]))
        windows = {s: mel_window(whole, s, 8, 25.0) for s in range(40 - 8 + 1)}
        starts = [next(s for s, w in windows.items() if torch.equal(w, neg)) for neg in item["mel_negatives"]]
        assert all(abs(s - item["start"]) >= 4 for s in starts), (item["start"], starts)
        assert len(set(starts)) == 5  # distinct while the shard has enough
        torch.testing.assert_close(ds[i]["mel_negatives"], item["mel_negatives"])  # a pure function of the index
    only = ClipDataset(out, num_frames=8, mel_negatives=2)[0]
    assert "mel" not in only and only["mel_negatives"].shape == (2, 1, 80, 26)
    with pytest.raises(ValueError, match="mel_negatives must be >= 0"):
        ClipDataset(out, num_frames=8, mel_negatives=-1)


def test_latent_cache(prepared):
    _, out, _, _ = prepared
    from teacher.vae import VideoVAE

    vae = VideoVAE.tiny()
    assert encode_latents(out, vae) == 2
    ds = ClipDataset(out, num_frames=8, latents=True)
    item = ds[0]
    assert item["latents"].shape == (4, 8, 8, 8)
    mode = vae.encode(item["frames"][None], sample=False)[0]  # [4, F, h, w]
    cache = np.load(ds.shards[item["shard"]].path / "latents.npz")
    mean = torch.from_numpy(cache["frames_mean"][:8].astype(np.float32)).permute(1, 0, 2, 3) * vae.scaling_factor
    torch.testing.assert_close(mean, mode, atol=2e-2, rtol=1e-2)  # cached posterior mean = VAE mode
    std = torch.from_numpy(cache["frames_std"][:8].astype(np.float32)).permute(1, 0, 2, 3) * vae.scaling_factor
    z = (item["latents"] - mode) / std  # sampled, not the mode: standard normal noise
    assert 0.7 < z.square().mean().item() < 1.3 and abs(z.mean().item()) < 0.1
    torch.testing.assert_close(ds[0]["latents"], item["latents"])


def test_scene_cut_and_segments():
    rng = np.random.default_rng(0)
    a = np.full((10, 32, 32, 3), 40, np.uint8) + rng.integers(0, 3, (10, 32, 32, 3), dtype=np.uint8)
    b = np.full((10, 32, 32, 3), 220, np.uint8)
    assert scene_cuts(np.concatenate([a, b]), 0.3) == [10]
    assert scene_cuts(np.concatenate([a, b]), None) == []
    has_face = np.ones(30, bool)
    has_face[12] = False
    assert segments(30, [20], has_face, 5) == [(0, 12), (13, 20), (20, 30)]
    assert segments(30, [20], has_face, 8) == [(0, 12), (20, 30)]
