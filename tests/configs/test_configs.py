"""Every YAML under configs/ binds to the signature of each object it targets; overrides work."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import configs


@pytest.mark.parametrize("preset", configs.available())
def test_every_target_binds(preset):
    cfg = configs.load(preset)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    nodes = list(configs.target_nodes(cfg))
    assert nodes, f"{preset} builds nothing"
    for path, node in nodes:
        try:
            configs.bind(node)
        except TypeError as err:
            raise AssertionError(f"{preset}:{path} does not bind to {node._target_}: {err}") from err


@pytest.mark.parametrize("preset", [p for p in configs.available() if p.startswith("teacher/")])
def test_teacher_model_sections_are_valid(preset):
    from teacher.unet import normalize_model_config

    cfg = configs.load(preset)
    full = normalize_model_config(OmegaConf.to_container(cfg.model))
    assert full["in_channels"] == 13 and full["out_channels"] == 4 and full["cross_attention_dim"] == 384
    assert cfg.sampler.num_inference_steps == 20 and cfg.sampler.w == 1.5
    assert cfg.scheduler.config.steps_offset == 1 and cfg.scheduler.config.set_alpha_to_one is False


def test_official_presets_match_resolution():
    assert configs.load("teacher/latentsync-1.5").data.resolution == 256
    assert configs.load("teacher/latentsync-1.6").data.resolution == 512
    assert configs.load("teacher/latentsync-1.6").model.block_out_channels == [320, 640, 1280, 1280]


def test_overrides():
    cfg = configs.load("teacher/tiny", ["sampler.w=2.0", "files.unet=/x/u.pt", "+extra.depth=3"])
    assert cfg.sampler.w == 2.0
    assert cfg.unet.ckpt_path == "/x/u.pt"  # interpolation follows the override
    assert cfg.extra.depth == 3
    with pytest.raises(KeyError, match="sampler.guidance"):
        configs.load("teacher/tiny", ["sampler.guidance=2.0"])
    with pytest.raises(ValueError, match="key=value"):
        configs.load("teacher/tiny", ["sampler.w"])
    with pytest.raises(FileNotFoundError, match="presets: .*teacher/tiny"):
        configs.load("teacher/nope")


def test_instantiate_builds_nested_and_partial():
    node = OmegaConf.create(
        {
            "_target_": "builtins.dict",
            "a": {"_target_": "fractions.Fraction", "numerator": 1, "denominator": 3},
            "b": [1, {"_target_": "builtins.abs", "_partial_": True}],
        }
    )
    out = configs.instantiate(node, c=5)
    from fractions import Fraction

    assert out["a"] == Fraction(1, 3) and out["c"] == 5 and out["b"][1](-2) == 2
