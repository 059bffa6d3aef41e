"""Real-data reconstruction of the student's x0 in latent space; one value per sample [B].

LatentSync's stage 2 supervises its U-Net with ``recon_loss`` (weight 1): MSE between the predicted and the
true noise (``scripts/train_unet.py``). A consistency student predicts x0, so the real-data term here is the
same kind of supervision on x0 against the clean latents of the real frames, with an optional extra weight on
the generated region (the mouth). Scale note: for one timestep, x0-MSE = eps-MSE * (1 - alpha_bar) / alpha_bar,
so the same weight leans harder on high-noise steps than LatentSync's eps-MSE does.
"""

from __future__ import annotations

import torch


class LatentReconstruction:
    """Mouth-weighted mean of |x0 - latents|^power over C, F, h, w; [B], float32.

    loss_b = sum(m * |x0 - latents|^p) / sum(m),  m = 1 + (mouth_weight - 1) * (1 - mask) per latent
    pixel (broadcast over the channels): the generated region (mask == 0) counts ``mouth_weight`` times
    the kept one (mask == 1). power 2 = MSE, 1 = L1; mouth_weight 1 = the plain mean.

    Args (call):
        x0: [B, 4, F, h, w] the student's x0 latents.
        latents: [B, 4, F, h, w] the real frames' clean latents.
        mask: [B, 1, F, h, w] latent-size mask, 1 = keep, 0 = the generated mouth region.
    Raises: ValueError for power <= 0, mouth_weight < 0 or shapes that do not match.
    """

    def __init__(self, power: float = 2, mouth_weight: float = 1.0):
        if not power > 0:
            raise ValueError(f"reconstruction power must be > 0 (2 = MSE, 1 = L1), got {power}")
        if not mouth_weight >= 0:
            raise ValueError(f"mouth_weight must be >= 0, got {mouth_weight}")
        self.power = power
        self.mouth_weight = float(mouth_weight)

    def __call__(self, x0: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x0.shape != latents.shape or x0.dim() != 5:
            raise ValueError(
                f"x0 and latents must both be [B, C, F, h, w], got {tuple(x0.shape)}, {tuple(latents.shape)}"
            )
        if mask.shape[:1] + mask.shape[2:] != x0.shape[:1] + x0.shape[2:] or mask.shape[1] != 1:
            raise ValueError(f"mask must be [B, 1, F, h, w] for x0 {tuple(x0.shape)}, got {tuple(mask.shape)}")
        err = (x0.float() - latents.float()).abs() ** self.power  # [B, C, F, h, w]
        mouth = 1.0 - mask.float()  # [B, 1, F, h, w], 1 inside the mouth
        weight = (1.0 + (self.mouth_weight - 1.0) * mouth).expand_as(err)
        return (weight * err).flatten(1).sum(1) / weight.flatten(1).sum(1)

    def __repr__(self) -> str:
        return f"LatentReconstruction(power={self.power}, mouth_weight={self.mouth_weight})"
