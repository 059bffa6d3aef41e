"""SyncNet training: the pair rule, offset estimation and correction (closed forms on a loudness world read by
an oracle network), the step's numbers, a tiny end-to-end ``turbosync train-syncnet`` run and its exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

import configs
from distill import checkpoint as ckpt
from distill import syncnet_train as st
from distill.syncnet_data import SyncPairDataset, SyncWindow, estimate_offsets, heldout_pairs
from losses.mel import mel_window, syncnet_mel
from losses.sync import sync_bce

FRAMES, SPF = 40, 640  # frames per shard, 16 kHz samples per 25 fps frame
WINDOW = SyncWindow(num_frames=4, resolution=32, lower_half=True)
TINY_MODEL = {  # visual (12, 16, 32) -> 16x16, 8, 4, 2, 1; audio (1, 80, 13) -> 40x13, 20x6, 10x3, 5x1, 1x1
    "visual_encoder": {"in_channels": 12, "block_out_channels": [32] * 5,
                       "downsample_factors": [[1, 2], 2, 2, 2, 2], "attn_blocks": [0, 0, 0, 1, 0], "dropout": 0.0},
    "audio_encoder": {"in_channels": 1, "block_out_channels": [32] * 5,
                      "downsample_factors": [[2, 1], 2, 2, 2, [5, 1]], "attn_blocks": [0, 0, 0, 0, 0], "dropout": 0.0},
}


def _loudness(seed: int, n: int = FRAMES) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.02, 1.0, n)


def write_shard(root: Path, name: str, loud: np.ndarray, delay: int = 0, size: int = 64) -> Path:
    """A prepared shard of the loudness world: frame t's grey level encodes log loudness l_t, the audio is noise
    of loudness l_t moved ``delay`` frames later (the audio late; silence where it has no source)."""
    from teacher.media import VideoWriter

    d = root / "shards" / name
    d.mkdir(parents=True)
    n = len(loud)
    level = (np.log(loud) - np.log(0.02)) / -np.log(0.02)                     # 0 .. 1
    with VideoWriter(d / "faces.mp4", 25, crf=1) as w:
        for g in level:
            w.write(np.full((size, size, 3), int(round(30 + 200 * g)), np.uint8))
    base = 0.5 * np.random.default_rng(len(name)).standard_normal(n * SPF) * np.repeat(loud, SPF)
    pad = np.zeros(abs(delay) * SPF)
    audio = (np.concatenate([pad, base])[: n * SPF] if delay >= 0 else np.concatenate([base, pad])[-n * SPF:])
    audio = audio.astype(np.float32)
    np.save(d / "audio.npy", audio)
    (d / "meta.json").write_text(json.dumps({"num_frames": n, "resolution": size}))
    return d


class OracleSyncNet(nn.Module):
    """Embeddings that match only in sync on the loudness world: the centred grey levels of the F frames
    against the centred mean mel level at each frame's centre, both L2-normalised: ``[B, F]``."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.num_frames = num_frames
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f = images.shape[0], self.num_frames
        v = images.reshape(b, f, -1).mean(-1)
        cols = (torch.arange(f) * 3.2 + 1.6).long()
        a = mel[:, 0].mean(1)[:, cols]
        return F.normalize(v - v.mean(1, keepdim=True), dim=1), F.normalize(a - a.mean(1, keepdim=True), dim=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sync_world")
    for k in range(3):
        write_shard(root, f"clip_{k}_s000", _loudness(k))
    return root


def test_pairs_follow_the_rule(world):
    ds = SyncPairDataset(world, WINDOW, min_offset=2, max_offset=4, seed=3)
    assert len(ds) == 3 * (FRAMES - 4 + 1)
    items = [ds[(e, i)] for e in (0, 1) for i in range(0, len(ds), 3)]
    ys = np.array([float(it["y"]) for it in items])
    offsets = np.array([it["offset"] for it in items])
    assert 0.3 < ys.mean() < 0.7
    assert np.all(offsets[ys == 1] == 0) and np.all((np.abs(offsets[ys == 0]) >= 2) & (np.abs(offsets[ys == 0]) <= 4))
    it = items[0]
    assert it["images"].shape == (12, 16, 32) and it["mel"].shape == (1, 80, 13)
    assert float(it["images"].min()) >= -1 and float(it["images"].max()) <= 1
    again = ds[(0, 0)]
    assert torch.equal(again["images"], items[0]["images"]) and torch.equal(again["mel"], items[0]["mel"])
    assert any(ds[(0, i)]["offset"] != ds[(1, i)]["offset"] for i in range(20))  # epochs draw anew
    lazy = SyncPairDataset(world, WINDOW, min_offset=2, max_offset=4, seed=3, cache=False)  # reads F frames an item
    for key in ((0, 5), (1, 40), (0, len(ds) - 1)):
        a, b = ds[key], lazy[key]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["mel"], b["mel"]) and a["y"] == b["y"]
    k, s = ds.index[7]
    audio = np.load(ds.shards[k].path / "audio.npy")
    assert torch.equal(ds.pair(k, s, s)["mel"], mel_window(syncnet_mel(audio), s, 4))
    pairs = heldout_pairs(ds, max_windows=10)
    assert len(pairs) == 20 and sum(p[1] == p[2] for p in pairs) == 10
    with pytest.raises(ValueError, match="min_offset"):
        SyncPairDataset(world, WINDOW, min_offset=0)


def test_grouped_items_pair_every_window_with_every_other(world):
    ds = SyncPairDataset(world, WINDOW, min_offset=2, seed=3, group_size=5)
    item = ds[(0, 7)]
    k, s = ds.index[7]
    assert item["images"].shape == (5, 12, 16, 32) and item["mel"].shape == (5, 1, 80, 13)
    starts = s + item["offset"].numpy()
    assert starts[0] == s and len(set(starts.tolist())) == 5
    for j, st_j in enumerate(starts):  # window j's faces and mel are the pair rule's in-sync pair of its start
        ref = ds.pair(k, int(st_j), int(st_j))
        assert torch.equal(item["images"][j], ref["images"]) and torch.equal(item["mel"][j], ref["mel"])
    d = np.abs(starts[:, None] - starts[None, :])
    assert torch.equal(item["y"], torch.eye(5)) and torch.equal(item["mask"], torch.from_numpy((d == 0) | (d >= 2)))
    assert not torch.equal(ds[(1, 7)]["offset"], item["offset"])  # epochs draw anew
    assert torch.equal(ds[(0, 7)]["offset"], item["offset"])
    short = SyncPairDataset(world, WINDOW, max_offset=1, seed=3, group_size=4)[(0, 0)]  # 1 window in range
    assert torch.equal(short["y"], (short["offset"][:, None] == short["offset"][None, :]).float())
    with pytest.raises(ValueError, match="group_size"):
        SyncPairDataset(world, WINDOW, group_size=0)


def test_grouped_step_weighs_in_sync_and_off_sync_pairs_half_each():
    g = 3
    emb = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.2], [0.3, 1.0], [1.0, 0.5]]), dim=1)

    class Fixed(nn.Module):  # window j of the [2 * 3] batch: faces emb[j], mel emb[5 - j]
        def forward(self, images, mel):
            assert images.shape[0] == mel.shape[0] == 2 * g
            return emb, emb.flip(0)

    mask = torch.ones(2, g, g, dtype=torch.bool)
    mask[1, 0, 2] = False                                                       # a pair too near to score
    out = st.syncnet_step(Fixed(), {"images": torch.zeros(2, g, 1, 1, 1), "mel": torch.zeros(2, g, 1, 1, 1),
                                    "y": torch.eye(g).expand(2, g, g), "mask": mask})
    v, a = emb.reshape(2, g, 2), emb.flip(0).reshape(2, g, 2)
    s = torch.einsum("bad,bvd->bav", a, v).clamp(0, 1)                          # s[b, mel a, faces v]
    eye = torch.eye(g, dtype=torch.bool).expand(2, g, g)
    pos, neg = s[eye], s[~eye & mask]
    want = 0.5 * (-torch.log(pos).mean() - torch.log(1 - neg).mean())
    torch.testing.assert_close(out["loss"], want)
    acc = 0.5 * ((pos > 0.5).float().mean() + (neg <= 0.5).float().mean())
    torch.testing.assert_close(out["accuracy"], acc)
    torch.testing.assert_close(out["cos_neg"], neg.mean())
    hard = st.syncnet_step(Fixed(), {"images": torch.zeros(2, g, 1, 1, 1), "mel": torch.zeros(2, g, 1, 1, 1),
                                     "y": torch.eye(g).expand(2, g, g), "mask": mask}, hard_negatives=1)
    top = s.masked_fill(eye | ~mask, -1.0).amax(2).flatten()                    # each mel row's hardest negative
    torch.testing.assert_close(hard["loss"], 0.5 * (-torch.log(pos).mean() - torch.log(1 - top).mean()))
    torch.testing.assert_close(hard["accuracy"], acc)                          # the numbers count every pair


@pytest.mark.parametrize("delay", [3, -5])
def test_estimate_offsets_finds_a_known_delay(tmp_path, delay):
    """The oracle network finds the audio delay of each shard; the sign is the frames the audio is late."""
    write_shard(tmp_path, "late_s000", _loudness(11, 60), delay=delay)
    write_shard(tmp_path, "sync_s000", _loudness(12, 60))
    found = estimate_offsets(tmp_path, OracleSyncNet(4), WINDOW, vshift=8)
    assert found["late_s000"]["offset"] == delay and found["sync_s000"]["offset"] == 0
    assert found["sync_s000"]["lse_c"] > 0.3
    assert json.loads((tmp_path / "sync_offsets.json").read_text()) == found


def test_offset_correction_restores_the_in_sync_audio(tmp_path):
    """A shard whose audio is 5 frames (= 16 mel hops) late, read with its offset, gives the in-sync shard's
    mel windows; a confidence floor leaves shards out."""
    loud = _loudness(21, 60)
    write_shard(tmp_path / "a", "x_s000", loud)
    write_shard(tmp_path / "b", "x_s000", loud, delay=5)
    plain = SyncPairDataset(tmp_path / "a", WINDOW)
    fixed = SyncPairDataset(tmp_path / "b", WINDOW, offsets={"x_s000": {"offset": 5, "lse_c": 1.0}})
    assert len(fixed) == len(plain) - 5
    for s in (0, 10, 30, 50):
        torch.testing.assert_close(fixed.pair(0, s, s)["mel"], plain.pair(0, s, s)["mel"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no shard"):
        SyncPairDataset(tmp_path / "b", WINDOW, offsets={"x_s000": {"offset": 5, "lse_c": 1.0}}, min_confidence=2.0)


def test_step_numbers_match_closed_forms():
    class Fixed(nn.Module):
        def forward(self, images, mel):
            v = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), dim=1)
            a = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 3.0], [1.0, 0.2], [0.1, 1.0]]), dim=1)
            return v, a

    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    out = st.syncnet_step(Fixed(), {"images": None, "mel": None, "y": y})
    s = torch.tensor([1 / np.hypot(1, 0.1), 1 / np.hypot(1, 3), 1 / np.hypot(1, 0.2), 0.1 / np.hypot(0.1, 1)])
    bce = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
    torch.testing.assert_close(out["loss"], bce.float())
    torch.testing.assert_close(out["loss"], sync_bce(*Fixed()(None, None), y).mean())
    assert float(out["accuracy"]) == 0.5  # right: pair 0 (in sync, s > .5) and pair 3 (off sync, s < .5)
    torch.testing.assert_close(out["cos_neg"], s[2:].mean().float())


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _config(tmp_path: Path, world: Path, out: Path, *extra: str):
    preset = tmp_path / "tiny_syncnet.yaml"
    OmegaConf.save(OmegaConf.create({"name": "tiny", "files": {"syncnet": None}, "model": TINY_MODEL,
                                     "data": {"num_frames": 4, "resolution": 32, "lower_half": True}}), preset)
    return [f"syncnet.preset={preset}", "syncnet.overrides={}", f"data.root={world}", f"data.heldout_root={world}",
            "data.synthetic=null", "data.heldout_synthetic=null", "data.heldout_windows=6", "data.batch_size=4",
            "run.max_steps=4", "run.checkpoint_every=2", "run.eval_every=2", "run.log_every=1", "optim.warmup_steps=1",
            f"run.output_dir={out}", *extra]


def _losses(run: Path) -> list[dict]:
    return [{k: v for k, v in ln.items() if k != "pairs_per_s"} for ln in ckpt.read_jsonl(run / "losses.jsonl")]


def test_train_syncnet_end_to_end_and_exact_resume(tmp_path, world, monkeypatch):
    """`turbosync train-syncnet` writes a LatentSync-format network, its preset and a held-out accuracy; a run
    that crashed after its step-2 checkpoint and resumed with run.resume=auto ends bit-identical."""
    from losses.syncnet import load_syncnet
    from scripts.cli import main

    straight = tmp_path / "straight"
    assert main(["train-syncnet", "--config", "syncnet/train_toy", *_config(tmp_path, world, straight)]) == 0
    summary = json.loads((straight / "heldout.json").read_text())
    assert summary["step"] == 4 and summary["heldout"]["pairs"] == 12
    assert 0.0 <= summary["heldout"]["accuracy"] <= 1.0
    assert len(ckpt.read_jsonl(straight / "heldout.jsonl")) == 2  # step 2 and the end
    net = load_syncnet(straight / "syncnet.pt", straight / "syncnet.yaml")
    assert ckpt.weights_hash(net) == summary["syncnet_sha256"]
    scfg = configs.load(straight / "syncnet.yaml")
    assert Path(scfg.files.syncnet) == (straight / "syncnet.pt").resolve() and scfg.data.num_frames == 4
    small = st.export_syncnet(straight, tmp_path / "export")  # float16 weights, computed in float32
    half = load_syncnet(configs.load(small / "syncnet.yaml").files.syncnet, small / "syncnet.yaml")
    assert next(half.parameters()).dtype == torch.float32
    for a, b in zip(half.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(a, b.half().float())

    crashed = tmp_path / "crashed"
    real_save = st.save_checkpoint

    def save_then_crash(run):
        real_save(run)
        if run.state.step == 2:
            raise KeyboardInterrupt("killed after the step-2 checkpoint")

    monkeypatch.setattr(st, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        st.train_syncnet(configs.load("syncnet/train_toy", _config(tmp_path, world, crashed)))
    monkeypatch.setattr(st, "save_checkpoint", real_save)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(FileExistsError, match="run.resume=auto"):
        st.train_syncnet(configs.load("syncnet/train_toy", _config(tmp_path, world, crashed)))
    AcceleratorState._reset_state(reset_partial_state=True)
    st.train_syncnet(configs.load("syncnet/train_toy", _config(tmp_path, world, crashed, "run.resume=auto")))
    resumed = json.loads((crashed / "heldout.json").read_text())
    assert resumed["syncnet_sha256"] == summary["syncnet_sha256"]
    assert _losses(crashed) == _losses(straight)
    assert resumed["heldout"] == summary["heldout"]
