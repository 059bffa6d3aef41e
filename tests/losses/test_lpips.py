"""LPIPSLoss against lpips.LPIPS itself with the same VGG16 weights (a random trunk written in torchvision's
format: the real file cannot be downloaded here), the offline trunk lookup and its one-line errors."""

from __future__ import annotations

import types

import lpips
import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

import configs
from losses.perceptual import RANDOM, VGG16_FILE, LPIPSLoss, build_lpips, load_vgg16_trunk


def random_vgg16_features(seed: int = 0) -> torch.nn.Sequential:
    """torchvision's VGG16 ``features`` with random weights (std sqrt(2 / fan_in), biases too)."""
    g = torch.Generator().manual_seed(seed)
    features = make_layers(cfgs["D"])
    with torch.no_grad():
        for m in features:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return features


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A VGG16 trunk in torchvision's file format (``features.{i}.weight``; the classifier is left out)."""
    path = tmp_path_factory.mktemp("hub") / "checkpoints" / VGG16_FILE
    path.parent.mkdir()
    torch.save({f"features.{k}": v for k, v in random_vgg16_features().state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def reference(vgg_file):
    """``lpips.LPIPS(net="vgg")`` as upstream builds it, with torchvision's download replaced by the file."""

    def vgg16(pretrained=False, **_):
        assert pretrained  # lpips asks torchvision for the ImageNet trunk
        features = make_layers(cfgs["D"])
        sd = torch.load(vgg_file, weights_only=True)
        features.load_state_dict({k.removeprefix("features."): v for k, v in sd.items()}, strict=True)
        return types.SimpleNamespace(features=features)

    with pytest.MonkeyPatch.context() as mp:  # only while the reference is built
        mp.setattr(lpips.pretrained_networks.tv, "vgg16", vgg16)
        return lpips.LPIPS(net="vgg", verbose=False)


@pytest.fixture(scope="module")
def loss(vgg_file):
    return LPIPSLoss(build_lpips(vgg_file))


def test_loss_equals_lpips_on_lower_half_crops(loss, reference):
    g = torch.Generator().manual_seed(1)
    x0 = (torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1).requires_grad_(True)
    real = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    out = loss(x0, real)
    assert out.shape == (2,) and out.dtype == torch.float32

    def crops(v):  # upstream: (b f) c h w, rows H // 2:, [-1, 1]
        return v.detach().permute(0, 2, 1, 3, 4).reshape(6, 3, 32, 32)[:, :, 16:]

    with torch.no_grad():
        ref = reference(crops(x0), crops(real)).reshape(2, 3).mean(1)
    torch.testing.assert_close(out.detach(), ref)
    assert (ref > 0).all() and loss(real, real).abs().max() < 1e-6

    out.sum().backward()
    assert x0.grad[:, :, :, 16:].abs().sum() > 0 and x0.grad[:, :, :, :16].abs().sum() == 0
    assert all(p.grad is None and not p.requires_grad for p in loss.net.parameters())
    assert not loss.net.training and VGG16_FILE in repr(loss)


def test_resolution_and_frame_stride(loss, reference):
    g = torch.Generator().manual_seed(2)
    x0, real = (torch.rand(2, 3, 5, 24, 24, generator=g) * 2 - 1 for _ in range(2))
    cheap = LPIPSLoss(loss.net, resolution=32, frame_stride=2)  # frames 0, 2, 4 at 32 px
    out = cheap(x0, real)

    def crops(v):
        v = v[:, :, ::2].permute(0, 2, 1, 3, 4).reshape(6, 3, 24, 24)
        return torch.nn.functional.interpolate(v, size=(32, 32), mode="bicubic")[:, :, 16:]

    with torch.no_grad():
        torch.testing.assert_close(out, reference(crops(x0), crops(real)).reshape(2, 3).mean(1))
    assert "frame_stride=2" in repr(cheap)
    with pytest.raises(ValueError, match="frame_stride"):
        LPIPSLoss(loss.net, frame_stride=0)


def test_missing_file_is_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        build_lpips(tmp_path / "nope.pth")
    assert VGG16_FILE in str(err.value) and str(tmp_path / "nope.pth") in str(err.value)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=f"hub cache.*{tmp_path / 'hub' / 'checkpoints'}"):
        build_lpips()


def test_hub_cache_is_the_default(vgg_file, monkeypatch, loss):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(vgg_file.parent.parent))
    net = build_lpips()
    assert net.backbone_source == str(vgg_file)
    assert torch.equal(getattr(net.net.slice5, "28").weight, getattr(loss.net.net.slice5, "28").weight)


def test_trunk_loader_is_strict(loss):
    sd = {f"features.{k}": v for k, v in random_vgg16_features(2).state_dict().items()}
    with pytest.raises(ValueError, match="missing.*features.28.bias"):
        load_vgg16_trunk(loss.net.net, {k: v for k, v in sd.items() if k != "features.28.bias"})
    with pytest.raises(ValueError, match="unexpected.*head.weight"):
        load_vgg16_trunk(loss.net.net, {**sd, "head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="features.0.weight: shape"):
        load_vgg16_trunk(loss.net.net, {**sd, "features.0.weight": torch.zeros(64, 3, 1, 1)})


def test_shape_errors(loss):
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="differ"):
        loss(torch.zeros(1, 3, 2, 16, 16), torch.zeros(1, 3, 1, 16, 16))


def test_toy_preset_builds_a_random_backbone_and_says_so(loss):
    state = torch.random.get_rng_state()
    built = configs.instantiate(configs.load("losses/lpips_toy").loss)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded apart from the global RNG
    assert isinstance(built, LPIPSLoss) and built.net.backbone_source == RANDOM
    assert "backbone='random'" in repr(built)
    assert not torch.equal(built.net.net.slice1[0].weight, loss.net.net.slice1[0].weight)
