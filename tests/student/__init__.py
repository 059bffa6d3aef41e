"""Tests of the student package. ``tiny_teacher`` and ``tiny_batch`` are shared with tests/distill.

The tiny teacher is ``configs/teacher/tiny`` shrunk to widths [32, 32, 32, 32] (1.2 M
parameters, motion modules on), with random non-zero weights everywhere: LatentSync
zero-initialises conv_in, conv_out and the motion modules' output, which would make a fresh
U-Net predict eps = 0 and every test below trivially true. Its ResNets use 8 norm groups:
with 32 groups on 32 channels every GroupNorm is per channel and removes the per-channel
time-embedding shift entirely, so t and w would hardly change the output (rel. 5e-4).
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

import configs
from teacher import LatentSyncUNet, freeze

B, F, HW = 2, 2, 8  # batch, frames, latent size


def tiny_config() -> dict:
    cfg = OmegaConf.to_container(configs.load("teacher/tiny").model, resolve=True)
    cfg["block_out_channels"] = [32, 32, 32, 32]
    cfg["norm_num_groups"] = 8
    return cfg


def tiny_teacher(seed: int = 0) -> LatentSyncUNet:
    """A frozen tiny teacher whose eps has std ~ 0.9 on unit inputs."""
    torch.manual_seed(seed)
    unet = LatentSyncUNet(**tiny_config())
    with torch.no_grad():
        for p in unet.parameters():
            if (p == 0).all():
                p.normal_(0.0, 0.1)
    return freeze(unet)


def tiny_batch(b: int = B, f: int = F, hw: int = HW, seed: int = 0) -> dict[str, torch.Tensor]:
    """A distillation batch: latents, mask (lower half = mouth = 0), masked/ref latents, audio."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, 4, f, hw, hw, generator=g)
    mask = torch.ones(b, 1, f, hw, hw)
    mask[..., hw // 2 :, :] = 0.0
    return {
        "latents": latents,
        "mask": mask,
        "masked_latents": latents * mask,
        "ref_latents": torch.randn(b, 4, f, hw, hw, generator=g),
        "audio_embeds": torch.randn(b, f, 50, 384, generator=g),
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()
