"""Decoded clips as the per-frame images a frame-wise network sees (SyncNet, LPIPS, the lip discriminator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["frame_images"]


def frame_images(frames: torch.Tensor, resolution: int | None = None, lower_half: bool = False) -> torch.Tensor:
    """``[B, 3, F, H, W]`` (VAE output layout) -> ``[B * F, 3, H', W']``, frame-major within each clip.

    ``resolution``: resize each frame (bicubic, as LatentSync's SyncNet and LPIPS inputs) to a square of
    that side first; ``None`` keeps ``H x W``. ``lower_half``: keep rows ``H' // 2 :`` (the mouth half of an
    aligned face). Dtype and device are kept. ValueError for another layout.
    """
    if frames.dim() != 5 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B, 3, F, H, W], got {tuple(frames.shape)}")
    b, c, f, h, w = frames.shape
    x = frames.transpose(1, 2).reshape(b * f, c, h, w)  # (b f) c h w
    if resolution is not None and (h, w) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic")
    return x[:, :, x.shape[2] // 2 :] if lower_half else x
