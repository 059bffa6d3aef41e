"""StableSyncNet: official configs build the official shapes, a checkpoint in the official format loads (and a
wrong one fails with one clear error), embeddings are unit-norm, gradient checkpointing changes nothing."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import configs
import losses
from losses.syncnet import StableSyncNet, SyncNetCheckpointError

TOY = configs.resolve("syncnet/toy")
OFFICIAL = configs.resolve("syncnet/stable_syncnet_16")


def toy_model_config() -> dict:
    return OmegaConf.to_container(configs.load("syncnet/toy").model)


def toy_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 24, 64, 128, generator=g) * 2 - 1   # 8 frames x RGB, lower half of 128 px
    mel = torch.rand(batch, 1, 80, 26, generator=g) * 8 - 4
    return images, mel


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = StableSyncNet(toy_model_config())
    with torch.no_grad():  # move norms and biases off their init so a mis-wired load shows
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("syncnet") / "stable_syncnet.pt"
    torch.save({"state_dict": net.state_dict(), "global_step": 7}, path)  # LatentSync's format
    return path, net


def test_official_config_builds_the_official_network():
    cfg = configs.load("syncnet/stable_syncnet_16")
    with torch.device("meta"):
        net = StableSyncNet(OmegaConf.to_container(cfg.model))
        v, a = net(torch.zeros(1, 48, 128, 256), torch.zeros(1, 1, 80, 52))
    assert v.shape == a.shape == (1, 2048)
    # parameter count of the official module built from syncnet_16_pixel_attn.yaml (measured on the upstream code)
    assert sum(p.numel() for p in net.parameters()) == 401_306_080
    keys = list(net.state_dict())
    assert keys[0] == "audio_encoder.conv_in.weight" and keys[-1] == "visual_encoder.norm_out.bias"
    assert "visual_encoder.down_blocks.5.attn.to_out.0.weight" in keys
    assert "audio_encoder.down_blocks.4.ff.net.0.proj.weight" in keys
    assert "audio_encoder.down_blocks.0.downsample_conv.weight" in keys


@pytest.mark.parametrize("as_path", [True, False])
def test_load_toy_checkpoint(toy_ckpt, as_path):
    path, src = toy_ckpt
    net = losses.load_syncnet(path, TOY if as_path else toy_model_config())
    images, mel = toy_inputs()
    with torch.no_grad():
        v, a = net(images, mel)
        v_ref, a_ref = src(images, mel)
    assert v.shape == a.shape == (2, 128)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    assert (v >= 0).all() and (a >= 0).all()  # ReLU before the norm: cosine similarity in [0, 1]
    assert torch.equal(v, v_ref) and torch.equal(a, a_ref)
    assert not net.training


def test_fresh_weights_without_checkpoint():
    net = losses.load_syncnet(None, TOY)
    assert net.embed_dim == 128


def test_wrong_checkpoints_fail_with_one_clear_error(toy_ckpt, tmp_path):
    path, src = toy_ckpt
    state = dict(src.state_dict())
    wrong = dict(state)
    wrong["visual_encoder.conv_in.weight"] = torch.zeros(32, 48, 3, 3)   # a 16-frame net's input conv
    del wrong["audio_encoder.norm_out.weight"]
    wrong["module.extra"] = torch.zeros(1)
    p = tmp_path / "wrong.pt"
    torch.save({"state_dict": wrong}, p)
    with pytest.raises(SyncNetCheckpointError) as err:
        losses.load_syncnet(p, TOY)
    msg = str(err.value)
    assert "1 missing keys: audio_encoder.norm_out.weight" in msg
    assert "1 unexpected keys: module.extra" in msg
    assert "visual_encoder.conv_in.weight: checkpoint (32, 48, 3, 3) vs model (32, 24, 3, 3)" in msg

    torch.save(state, tmp_path / "bare.pt")   # a bare state dict is not LatentSync's format
    with pytest.raises(SyncNetCheckpointError, match="expected a dict with key 'state_dict'"):
        losses.load_syncnet(tmp_path / "bare.pt", TOY)
    with pytest.raises(FileNotFoundError):
        losses.load_syncnet(tmp_path / "nope.pt", TOY)
    with pytest.raises(SyncNetCheckpointError, match="does not match"):  # the official config on a toy file
        losses.load_syncnet(path, {**toy_model_config(), "visual_encoder": {
            **toy_model_config()["visual_encoder"], "block_out_channels": [32, 32, 64, 64, 64, 128, 256]},
            "audio_encoder": {**toy_model_config()["audio_encoder"],
                              "block_out_channels": [32, 32, 64, 64, 128, 256]}})


def test_bad_configs():
    cfg = toy_model_config()
    with pytest.raises(SyncNetCheckpointError, match="unknown keys"):
        losses.load_syncnet(None, {**cfg, "audio_encoder": {**cfg["audio_encoder"], "layers": 2}})
    with pytest.raises(SyncNetCheckpointError, match="divisible by the 32 GroupNorm groups"):
        losses.load_syncnet(None, {**cfg, "audio_encoder": {**cfg["audio_encoder"],
                                                           "block_out_channels": [32, 32, 64, 100, 128, 128]}})
    with pytest.raises(SyncNetCheckpointError, match="differ in width"):
        losses.load_syncnet(None, {**cfg, "audio_encoder": {**cfg["audio_encoder"],
                                                           "block_out_channels": [32, 32, 64, 64, 128, 64]}})


def test_gradient_checkpointing_gives_the_same_gradients(toy_ckpt):
    path, _ = toy_ckpt
    images, mel = toy_inputs(batch=1)
    grads = []
    for ckpt in (False, True):
        net = losses.load_syncnet(path, TOY, gradient_checkpointing=ckpt)
        x = images.clone().requires_grad_(True)
        v, a = net(x, mel)
        (v * a).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert grads[0].abs().sum() > 0
