"""The teacher U-Net: equality with the official LatentSync model, checkpoint loading, errors.

``tests/data/latentsync_golden.safetensors`` holds tiny random weights (widths 32, one layer
per block, motion modules, 384-d audio) and inputs/outputs computed by the *official*
``latentsync.models.unet.UNet3DConditionModel`` (LatentSync commit a229c39, float32, CPU)
for F = 1, 2, 16 frames, with and without motion modules. Its metadata holds the config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import configs
from teacher import CheckpointError, LatentSyncUNet, freeze, load_unet

GOLDEN = Path(__file__).parent.parent / "data" / "latentsync_golden.safetensors"


def _golden():
    with safe_open(str(GOLDEN), "pt") as f:
        cfg = json.loads(f.metadata()["model_config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    weights = {k.removeprefix("weight."): v.float() for k, v in tensors.items() if k.startswith("weight.")}
    return cfg, weights, tensors


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("motion", [True, False])
def test_matches_official_outputs(tmp_path, motion):
    cfg, weights, tensors = _golden()
    cfg = dict(cfg, use_motion_module=motion)
    unet = LatentSyncUNet(**cfg)
    state = {k: v for k, v in weights.items() if k in unet.state_dict()}
    ckpt = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": state, "global_step": 42}, ckpt)
    unet = freeze(load_unet(ckpt, cfg))
    assert unet.global_step == 42
    for frames in (1, 2, 16):
        x = tensors[f"input.f{frames}.sample"]
        a = tensors[f"input.f{frames}.audio"].float()
        t = tensors[f"input.f{frames}.timestep"]
        with torch.no_grad():
            out = unet(x, t, a)
        expected = tensors[f"output.motion{int(motion)}_f{frames}"]
        assert out.shape == expected.shape == (x.shape[0], 4, frames, 8, 8)
        assert rel_err(out, expected) < 1e-4


def test_bare_state_dict_and_int_timestep(tmp_path):
    cfg, weights, tensors = _golden()
    ckpt = tmp_path / "bare.pt"
    torch.save(weights, ckpt)
    unet = load_unet(ckpt, cfg).eval()
    x, a = tensors["input.f2.sample"][:1], tensors["input.f2.audio"][:1].float()
    with torch.no_grad():
        by_int = unet(x, 981, a)
        by_tensor = unet(x, torch.tensor(981), a)
    assert torch.equal(by_int, by_tensor)
    assert rel_err(by_int, tensors["output.motion1_f2"][:1]) < 1e-4


def test_chunk_groupnorm_couples_frames():
    """ResNet GroupNorm spans the chunk (official); per-frame norm makes frames independent."""
    cfg, weights, _ = _golden()
    g = torch.Generator().manual_seed(0)
    x, a = torch.randn(1, 13, 2, 16, 16, generator=g), torch.randn(1, 2, 50, 384, generator=g)
    for per_frame in (False, True):
        c = dict(cfg, use_motion_module=False, use_inflated_groupnorm=per_frame)
        unet = LatentSyncUNet(**c).eval()
        unet.load_state_dict({k: v for k, v in weights.items() if k in unet.state_dict()})
        with torch.no_grad():
            both = unet(x, 500, a)
            first = unet(x[:, :, :1], 500, a[:, :1])
        same = torch.allclose(both[:, :, :1], first, atol=1e-5)
        assert same == per_frame


def test_official_configs_key_inventory():
    """The full-size 1.5/1.6 configs give the official 1246 tensors and 1.267 B parameters."""
    for preset in ("teacher/latentsync-1.5", "teacher/latentsync-1.6"):
        cfg = configs.load(preset)
        from omegaconf import OmegaConf

        with torch.device("meta"):
            unet = LatentSyncUNet(**OmegaConf.to_container(cfg.model))
        state = unet.state_dict()
        assert len(state) == 1246
        assert sum(p.numel() for p in unet.parameters()) == 1_267_099_844
        assert state["conv_in.weight"].shape == (320, 13, 3, 3)
        assert state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 384)
        assert sum(k.endswith("pos_encoder.pe") for k in state) == 40  # 20 modules x 2 attentions


def test_model_config_from_yaml_path(tmp_path):
    cfg, weights, _ = _golden()
    yaml = tmp_path / "stage2.yaml"
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create({"data": {"resolution": 256}, "model": cfg}), yaml)
    ckpt = tmp_path / "u.pt"
    torch.save({"state_dict": weights}, ckpt)
    unet = load_unet(ckpt, yaml)
    assert isinstance(unet, torch.nn.Module)


def test_strict_errors_list_keys(tmp_path):
    cfg, weights, _ = _golden()
    broken = dict(weights)
    broken.pop("conv_out.bias")
    broken["extra.weight"] = torch.zeros(1)
    broken["conv_in.weight"] = torch.zeros(32, 9, 3, 3)
    ckpt = tmp_path / "broken.pt"
    torch.save({"state_dict": broken}, ckpt)
    with pytest.raises(CheckpointError) as err:
        load_unet(ckpt, cfg)
    msg = str(err.value)
    assert str(ckpt) in msg
    assert "missing keys: conv_out.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "conv_in.weight (checkpoint (32, 9, 3, 3) vs model (32, 13, 3, 3))" in msg
    with pytest.warns(UserWarning, match="non-strictly"):
        unet = load_unet(ckpt, cfg, strict=False)
    assert torch.count_nonzero(unet.conv_in.weight) == 0  # mis-shaped tensor skipped, never widened


def test_motion_keys_without_motion_config_are_unexpected(tmp_path):
    cfg, weights, _ = _golden()
    ckpt = tmp_path / "u.pt"
    torch.save({"state_dict": weights}, ckpt)
    with pytest.raises(CheckpointError, match="unexpected keys: .*motion_modules"):
        load_unet(ckpt, dict(cfg, use_motion_module=False))


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty"), (b"not a checkpoint at all", "corrupt or not a torch checkpoint")],
)
def test_corrupt_checkpoint(tmp_path, content, match):
    cfg, _, _ = _golden()
    ckpt = tmp_path / "latentsync_unet.pt"
    ckpt.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_unet(ckpt, cfg)
    assert str(ckpt) in str(err.value)


def test_missing_checkpoint_and_bad_config(tmp_path):
    cfg, _, _ = _golden()
    with pytest.raises(FileNotFoundError, match="fetch-teacher"):
        load_unet(tmp_path / "nope.pt", cfg)
    with pytest.raises(CheckpointError, match="unknown U-Net config keys: \\['blocks_out'\\]"):
        load_unet(None, dict(cfg, blocks_out=3))
    with pytest.raises(CheckpointError, match="mid_block_type"):
        load_unet(None, dict(cfg, mid_block_type="UNetMidBlock2D"))
    yaml = tmp_path / "no_model.yaml"
    yaml.write_text("data: {resolution: 256}\n")
    with pytest.raises(CheckpointError, match="no top-level 'model:'"):
        load_unet(None, yaml)


def test_bad_inputs_raise_clear_errors():
    cfg, _, _ = _golden()
    unet = LatentSyncUNet(**cfg).eval()
    with pytest.raises(ValueError, match="channels"):
        unet(torch.zeros(1, 9, 2, 8, 8), 10, torch.zeros(1, 2, 50, 384))
    with pytest.raises(ValueError, match="do not match"):
        unet(torch.zeros(1, 13, 2, 8, 8), 10, torch.zeros(1, 3, 50, 384))
    with pytest.raises(ValueError, match="temporal positions"):
        unet(torch.zeros(1, 13, 25, 8, 8), 10, torch.zeros(1, 25, 50, 384))


def test_gradient_checkpointing_same_gradients():
    cfg, weights, tensors = _golden()
    x, a = tensors["input.f2.sample"][:1], tensors["input.f2.audio"][:1].float()
    grads = []
    for ckpt in (False, True):
        unet = LatentSyncUNet(**cfg)
        unet.load_state_dict(weights)
        unet.enable_gradient_checkpointing(ckpt)
        unet(x, 500, a).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    assert rel_err(grads[1], grads[0]) < 1e-5
