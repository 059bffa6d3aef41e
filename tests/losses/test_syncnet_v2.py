"""The original SyncNet (syncnet_v2.model format): original key names, loading a random checkpoint written the
way the 2017 file is (a bare state dict without BatchNorm counters), clear errors, and per-frame embeddings."""

from __future__ import annotations

import pytest
import torch

import losses
from losses.mel import mfcc
from losses.syncnet import SyncNetCheckpointError
from losses.syncnet_v2 import SyncNetV2, load_syncnet_v2, num_windows, window_embeddings

# a few of the 88 tensors of syncnet_v2.model, by name and shape (SyncNetModel.py, class S)
ORIGINAL_SHAPES = {
    "netcnnaud.0.weight": (64, 1, 3, 3),
    "netcnnaud.18.weight": (512, 256, 5, 4),
    "netcnnaud.19.running_var": (512,),
    "netfcaud.1.running_mean": (512,),
    "netfcaud.3.weight": (1024, 512),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7),
    "netcnnlip.4.weight": (256, 96, 1, 5, 5),
    "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netfclip.3.bias": (1024,),
}


@pytest.fixture(scope="module")
def v2_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = SyncNetV2()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point:
                t.add_(0.05 * torch.randn_like(t))
                if "running_var" in name:
                    t.abs_().add_(0.5)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("syncnet_v2") / "syncnet_v2.model"
    torch.save(state, path)
    return path, net, state


def test_original_names_and_shapes(v2_ckpt):
    _, net, state = v2_ckpt
    assert len(state) == 88  # 16 conv/linear layers (weight, bias) + 14 BatchNorms (4 tensors)
    for name, shape in ORIGINAL_SHAPES.items():
        assert tuple(state[name].shape) == shape, name


def test_load_and_embed(v2_ckpt):
    path, src, _ = v2_ckpt
    net = losses.load_syncnet_v2(path)
    assert not net.training and net.embed_dim == 1024
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(8, 3, 224, 224, generator=g) * 255        # BGR 0..255 crops
    audio = (torch.randn(8 * 640 + 100, generator=g) * 3000).to(torch.int16).numpy()
    count = num_windows(8, audio.size)
    assert count == 3                                              # min(8, 8) - 5
    v, a = window_embeddings(net, frames, mfcc(audio), count, batch_size=2)
    assert v.shape == a.shape == (3, 1024)
    with torch.no_grad():                                          # window 2 by hand: frames 2..6, MFCCs 8..28
        v2, a2 = src(frames[2:7].transpose(0, 1)[None], mfcc(audio)[None, None, :, 8:28])
    torch.testing.assert_close(v[2:], v2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(a[2:], a2, rtol=1e-5, atol=1e-4)
    s = losses.sync_scores(v, a, vshift=2)
    assert s.distances.shape == (5,) and s.lse_c >= 0


def test_wrong_checkpoints_fail_clearly(v2_ckpt, tmp_path):
    _, _, state = v2_ckpt
    bad = dict(state)
    del bad["netcnnlip.0.weight"]
    bad["netcnnaud.0.weight"] = torch.zeros(64, 1, 5, 5)
    torch.save(bad, tmp_path / "bad.model")
    with pytest.raises(SyncNetCheckpointError) as err:
        load_syncnet_v2(tmp_path / "bad.model")
    assert "1 missing keys: netcnnlip.0.weight" in str(err.value)
    assert "netcnnaud.0.weight: checkpoint (64, 1, 5, 5) vs model (64, 1, 3, 3)" in str(err.value)
    torch.save({"state_dict": {"audio_encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "stable.pt")
    with pytest.raises(SyncNetCheckpointError, match="not a syncnet_v2.model"):
        load_syncnet_v2(tmp_path / "stable.pt")
    with pytest.raises(FileNotFoundError):
        load_syncnet_v2(tmp_path / "none.model")
