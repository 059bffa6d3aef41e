"""TREPA: features equal transformers' VideoMAE for the same weights, the loss against its closed form, and the
official VideoMAE-v2 loader against a straight re-implementation of the official ViT forward on a tiny random
checkpoint written in the official format (``{"module": state_dict}``, ``blocks.i.attn.qkv`` + q/v biases)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEModel

import configs
from losses.trepa import TOY_SOURCE, TREPALoss, VideoMAEFeatures, load_videomae, toy_videomae
from losses.videomae_v2 import OFFICIAL_FILE, convert_videomae_v2, load_videomae_v2

D, HEADS, DEPTH, MLP, PATCH, SIZE = 32, 4, 2, 64, 14, 28  # tiny ViT in the official layout: 2 x 2 patches


def tiny_config(**kw) -> VideoMAEConfig:
    base = dict(
        image_size=32,
        patch_size=16,
        num_frames=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        layer_norm_eps=1e-6,
    )
    return VideoMAEConfig(**{**base, **kw})


def official_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official ``vit_giant_patch14_224`` key names, at tiny widths."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2, offset=0.0):
        return torch.randn(shape, generator=g) * scale + offset

    sd = {"patch_embed.proj.weight": r(D, 3, 2, PATCH, PATCH, scale=0.05), "patch_embed.proj.bias": r(D)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": r(D, offset=1.0),
            b + "norm1.bias": r(D),
            b + "attn.qkv.weight": r(3 * D, D),
            b + "attn.q_bias": r(D),
            b + "attn.v_bias": r(D),
            b + "attn.proj.weight": r(D, D),
            b + "attn.proj.bias": r(D),
            b + "norm2.weight": r(D, offset=1.0),
            b + "norm2.bias": r(D),
            b + "mlp.fc1.weight": r(MLP, D),
            b + "mlp.fc1.bias": r(MLP),
            b + "mlp.fc2.weight": r(D, MLP),
            b + "mlp.fc2.bias": r(D),
        }
    return sd | {
        "fc_norm.weight": r(D, offset=1.0),
        "fc_norm.bias": r(D),
        "head.weight": r(174, D),
        "head.bias": r(174),
    }


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """Official ``get_sinusoid_encoding_table``: angle pos / 10000^(2 (j // 2) / d), sin on even j, cos on odd."""
    j = torch.arange(d, dtype=torch.float64)
    angle = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (2 * (j // 2) / d)
    return torch.where(j % 2 == 0, angle.sin(), angle.cos()).float()[None]


def official_forward_features(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """VideoMAEv2 ``VisionTransformer.forward_features`` written out: ``[B, 3, T, H, W]`` -> ``[B, D]``."""
    b, _, t, h, w = x.shape
    z = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, PATCH, PATCH))
    z = z.flatten(2).transpose(1, 2)  # [B, N, D]
    gh, gw = h // PATCH, w // PATCH
    pos = sinusoid_table(8 * gh * gw, D)  # the checkpoint's 16 frames -> 8 tubelets
    if t // 2 != 8:  # interpolate_pos_encoding
        pos = pos.permute(0, 2, 1).reshape(1, D, 8, gh, gw)
        pos = F.interpolate(pos, scale_factor=((t // 2 + 0.1) / 8, 1, 1), mode="trilinear")
        pos = pos.reshape(1, D, -1).permute(0, 2, 1)
    z = z + pos
    for i in range(DEPTH):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(z, (D,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        qkv_bias = torch.cat((p["attn.q_bias"], torch.zeros_like(p["attn.v_bias"]), p["attn.v_bias"]))
        qkv = F.linear(y, p["attn.qkv.weight"], qkv_bias).reshape(b, -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) / math.sqrt(D // HEADS)).softmax(-1) @ v
        z = z + F.linear(attn.transpose(1, 2).reshape(b, -1, D), p["attn.proj.weight"], p["attn.proj.bias"])
        y = F.layer_norm(z, (D,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        z = z + F.linear(
            F.gelu(F.linear(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"]
        )
    return F.layer_norm(z.mean(1), (D,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps=1e-6)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("videomae") / OFFICIAL_FILE
    torch.save({"module": official_checkpoint()}, path)
    return path


@pytest.mark.parametrize("frames", [16, 8])
def test_official_loader_matches_the_official_forward(official_file, frames):
    enc = load_videomae_v2(official_file, num_frames=frames, image_size=SIZE, num_attention_heads=HEADS)
    assert enc.num_frames == frames and enc.image_size == SIZE and OFFICIAL_FILE in repr(enc)
    assert all(not p.requires_grad and p.device.type == "cpu" for p in enc.parameters())
    x = torch.rand(2, 3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(enc(x), official_forward_features(official_checkpoint(), x), atol=2e-5, rtol=1e-4)


def test_official_key_map_is_complete_and_strict():
    sd = official_checkpoint()
    encoder, fc_norm, dropped = convert_videomae_v2(sd)
    config = tiny_config(image_size=SIZE, patch_size=PATCH, num_frames=16)
    assert set(encoder) == set(VideoMAEModel(config).state_dict())  # every weight filled, nothing extra
    assert set(fc_norm) == {"weight", "bias"} and sorted(dropped) == ["head.bias", "head.weight"]
    q, k, v = (encoder[f"encoder.layer.1.attention.attention.{n}.weight"] for n in ("query", "key", "value"))
    torch.testing.assert_close(torch.cat((q, k, v)), sd["blocks.1.attn.qkv.weight"])
    assert torch.equal(encoder["encoder.layer.0.attention.attention.value.bias"], sd["blocks.0.attn.v_bias"])
    with pytest.raises(ValueError, match="blocks.0.gamma_1"):
        convert_videomae_v2({**sd, "blocks.0.gamma_1": torch.ones(D)})


def test_bias_names_follow_the_installed_transformers():
    """transformers 4.x keeps VideoMAE's query / value biases as ``q_bias`` / ``v_bias`` parameters."""
    from losses.videomae_v2 import installed_bias_names

    a = "encoder.layer.0.attention.attention."
    enc = {a + "query.bias": torch.ones(2), a + "value.bias": torch.zeros(2), a + "query.weight": torch.ones(2, 2)}
    v4 = {a + "q_bias": None, a + "v_bias": None, a + "query.weight": None}
    assert set(installed_bias_names(enc, v4)) == set(v4)
    v5 = {a + "query.bias": None, a + "value.bias": None, a + "query.weight": None}
    assert installed_bias_names(enc, v5) == enc


def test_official_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=OFFICIAL_FILE):
        load_videomae_v2(tmp_path / "nope.pth")
    sd = official_checkpoint()
    del sd["blocks.1.mlp.fc2.bias"]
    torch.save({"model": sd}, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="lacks weights for.*encoder.layer.1.output.dense.bias"):
        load_videomae_v2(tmp_path / "cut.pth", image_size=SIZE, num_attention_heads=HEADS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("videomae_folder")
    torch.manual_seed(0)
    VideoMAEModel(tiny_config()).save_pretrained(path)
    return path


def test_trepa_features_equal_videomae_model(folder):
    loss = TREPALoss(load_videomae(folder))
    frames = torch.rand(2, 3, 4, 48, 40, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x = F.interpolate(frames.transpose(1, 2).reshape(8, 3, 48, 40), size=(32, 32), mode="bicubic")
    x = (x / 2 + 0.5).clamp(0, 1).reshape(2, 4, 3, 32, 32)  # [B, T, C, H, W], transformers' layout
    with torch.no_grad():
        ref = VideoMAEModel.from_pretrained(folder).eval()(pixel_values=x).last_hidden_state.mean(1)
        torch.testing.assert_close(loss.features(frames), F.normalize(ref, dim=1))
    assert str(folder) in repr(loss)


def test_classifier_folder_gives_its_fc_norm(tmp_path):
    torch.manual_seed(0)
    model = VideoMAEForVideoClassification(tiny_config(num_labels=5)).eval()
    with torch.no_grad():
        model.fc_norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    enc = load_videomae(tmp_path)
    x = torch.rand(2, 3, 4, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values=x.transpose(1, 2)).logits
        torch.testing.assert_close(model.classifier(enc(x)), logits)


def test_loss_closed_form_gradient_and_checkpointing():
    enc = toy_videomae(image_size=32, num_frames=4, hidden_size=32, patch_size=16)
    loss = TREPALoss(enc)
    g = torch.Generator().manual_seed(3)
    real = torch.rand(3, 3, 4, 40, 40, generator=g) * 2 - 1
    x0 = (real + 0.3 * torch.randn(real.shape, generator=g)).requires_grad_(True)
    out = loss(x0, real)
    assert out.shape == (3,) and out.dtype == torch.float32
    fake_f, real_f = F.normalize(enc(loss.clips(x0.detach())), dim=1), F.normalize(enc(loss.clips(real)), dim=1)
    torch.testing.assert_close(out.detach(), F.mse_loss(fake_f, real_f, reduction="none").mean(1))
    assert (out > 0).all() and loss(real, real).abs().max() < 1e-10
    out.sum().backward()
    assert x0.grad.abs().sum() > 0 and all(p.grad is None for p in enc.parameters())
    grad = x0.grad.clone()
    x0.grad = None
    enc.gradient_checkpointing = True
    out_cp = loss(x0, real)
    out_cp.sum().backward()
    torch.testing.assert_close(out_cp.detach(), out.detach())
    torch.testing.assert_close(x0.grad, grad)
    with pytest.raises(ValueError, match=r"\[B, 3, 4, 32, 32\]"):
        loss(torch.zeros(1, 3, 5, 32, 32), torch.zeros(1, 3, 5, 32, 32))


def test_toy_preset_is_random_and_says_so():
    state = torch.random.get_rng_state()
    loss = configs.instantiate(configs.load("losses/trepa_toy").loss)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(loss, TREPALoss) and isinstance(loss.encoder, VideoMAEFeatures)
    assert loss.encoder.source == TOY_SOURCE and "random" in repr(loss)
    assert loss.encoder.num_frames == 8 and loss.encoder.image_size == 64
    frames = torch.rand(2, 3, 8, 128, 128) * 2 - 1
    assert loss(frames.flip(2), frames).shape == (2,)
