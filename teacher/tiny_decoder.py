"""A tiny latent decoder (TAESD, diffusers ``AutoencoderTiny``) that stands in for the VAE decoder.

At 1-2 U-Net steps the VAE decoder dominates the per-frame compute (counted analytically: SD VAE
decoder 2.48 TFLOP per 512 px frame, TAESD decoder 0.14, 5.6 %). ``TinyDecoder`` takes the same
scaled latents as ``VideoVAE.decode`` (the U-Net's x0) and returns the same pixels, so the
engine can swap one for the other.

Latent convention (read from diffusers' ``autoencoder_tiny.py`` and the TAESD author's answer in
madebyollin/taesd#3): ``AutoencoderTiny.decode`` applies no scaling itself (``latent_magnitude``
and ``latent_shift`` only serve ``scale_latents`` / ``unscale_latents``, the 8-bit PNG storage of
latents); its ``DecoderTiny`` soft-clamps the input to (-3, 3) with ``3 tanh(x / 3)``, runs the
convs and maps the [0, 1] output to [-1, 1]. Pipelines call it like any VAE:

    x = D(z / scaling_factor + shift_factor)      (both read from the AutoencoderTiny config)

The official TAESD for SD 1.x/2.x (``madebyollin/taesd``) was trained on the diffusion model's
latents directly, so its config has ``scaling_factor = 1.0``: it takes the U-Net latents as they
are, NOT divided by 0.18215 (taesd3 / taef1 instead record SD3's / FLUX's scale and shift). Our
toy decoder follows TAESD: trained on the toy VAE's scaled latents with ``scaling_factor = 1.0``.
So one rule, with the convention recorded in the folder's own config, serves both.

Real users: download ``madebyollin/taesd`` (config.json + diffusion_pytorch_model.safetensors) to a
local folder, then ``load_tiny_decoder("checkpoints/taesd", torch.float16)`` decodes the LatentSync
U-Net's latents (the SD VAE's latent space).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderTiny
from torch.utils.flop_counter import FlopCounterMode

from teacher.vae import WEIGHT_FILES, _to_frames, _to_video

# The toy decoder: TAESD's layout (conv, 3 + 3 + 1 + 0 residual blocks between x2 nearest
# upsamplings) at width 12 instead of 64 (DecoderTiny needs one width throughout). Measured on the
# toy VAE's 16 x 16 latents: ~6.6 % of the toy VAE decoder's FLOPs. The encoder is an untrained
# 4-channel stub (AutoencoderTiny always has one); encoding stays with the VAE.
TOY_TINY_DECODER_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "decoder_block_out_channels": [12, 12, 12, 12],
    "num_decoder_blocks": [3, 3, 1, 0],
    "encoder_block_out_channels": [4, 4, 4, 4],
    "num_encoder_blocks": [1, 1, 1, 1],
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "upsampling_scaling_factor": 2,
    "scaling_factor": 1.0,  # decodes the U-Net's (scaled) latents directly, like madebyollin/taesd
    "shift_factor": 0.0,
}


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"tiny decoder folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"tiny decoder folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        names = ", ".join(WEIGHT_FILES)
        raise FileNotFoundError(f"tiny decoder folder {folder} has no weights (expected one of: {names})")


class TinyDecoder(torch.nn.Module):
    """Frame-wise ``AutoencoderTiny`` decoder for latents ``[B, 4, F, h, w]`` (a drop-in for ``VideoVAE.decode``).

    Attributes:
        tae: the wrapped diffusers ``AutoencoderTiny`` (its encoder is not used).
        scaling_factor, shift_factor: the latent convention, from ``tae.config`` (1.0 and 0.0 for TAESD).
    """

    def __init__(self, tae: AutoencoderTiny):
        super().__init__()
        self.tae = tae
        self.scaling_factor = float(tae.config.scaling_factor)
        shift = getattr(tae.config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)

    # ----------------------------------------------------------------- constructors / io
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> TinyDecoder:
        """Load a diffusers ``AutoencoderTiny`` folder (ours, or madebyollin/taesd). Local files only."""
        folder = Path(path)
        _check_folder(folder)
        variant = None if any((folder / name).is_file() for name in WEIGHT_FILES[:2]) else "fp16"
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # AutoencoderTiny warns about its own saved block_out_channels
        try:
            tae = AutoencoderTiny.from_pretrained(
                str(folder), torch_dtype=torch_dtype, local_files_only=True, variant=variant
            )
        finally:
            diffusers_logging.set_verbosity(level)
        return cls(tae)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TinyDecoder:
        """A randomly initialised decoder from an ``AutoencoderTiny`` config dict."""
        return cls(AutoencoderTiny.from_config(dict(config)))

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> TinyDecoder:
        """A random ``TOY_TINY_DECODER_CONFIG`` decoder built without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls.from_config({**TOY_TINY_DECODER_CONFIG, **overrides})

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """config.json + diffusion_pytorch_model.safetensors, in the weights' current dtype."""
        self.tae.save_pretrained(str(folder), safe_serialization=True)
        return Path(folder)

    # ----------------------------------------------------------------- properties
    @property
    def scale_factor(self) -> int:
        """Spatial upsampling factor, up ** (stages - 1): 8 for TAESD."""
        cfg = self.tae.config
        return int(cfg.upsampling_scaling_factor) ** (len(cfg.decoder_block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.tae.config.latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.tae.dtype

    @property
    def device(self) -> torch.device:
        return self.tae.device

    # ----------------------------------------------------------------- decode
    def decode(self, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Latents [B, 4, F, h, w] -> video [B, 3, F, 8h, 8w] in about [-1, 1], unclamped like ``VideoVAE.decode``:
        x = D(z / scaling + shift) with the ``AutoencoderTiny`` config's scaling and shift."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, F, h, w], got {tuple(latents.shape)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        b, _, f = latents.shape[:3]
        z = _to_frames(latents.to(device=self.device, dtype=self.dtype))
        z = z / self.scaling_factor + self.shift_factor
        frames = torch.cat([self.tae.decode(chunk).sample for chunk in z.split(chunk_size)])
        return _to_video(frames, b, f)

    def forward(self, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Same as :meth:`decode` (differentiable: the training script calls it with gradients on)."""
        return self.decode(latents, chunk_size=chunk_size)


def load_tiny_decoder(
    path: str | os.PathLike | None = None, torch_dtype: torch.dtype | None = None, seed: int = 0
) -> TinyDecoder:
    """Config entry point: the ``AutoencoderTiny`` folder at ``path`` (e.g. ``assets/toy_student/tiny_decoder``
    or a local copy of ``madebyollin/taesd``), or a random ``TOY_TINY_DECODER_CONFIG`` decoder when None."""
    if path is None:
        return TinyDecoder.tiny(seed=seed)
    return TinyDecoder.from_pretrained(path, torch_dtype=torch_dtype)


@torch.no_grad()
def decoder_flops(module: torch.nn.Module, latent_hw: int | tuple[int, int]) -> int:
    """FLOPs (torch's ``FlopCounterMode``, 2 per multiply-add) of ``module.decode`` on one frame of
    latents ``[1, C, 1, h, w]``: works for ``TinyDecoder`` and ``VideoVAE`` alike."""
    h, w = (latent_hw, latent_hw) if isinstance(latent_hw, int) else latent_hw
    z = torch.zeros(1, module.latent_channels, 1, h, w, device=module.device, dtype=module.dtype)
    with FlopCounterMode(display=False) as counter:
        module.decode(z)
    return int(counter.get_total_flops())
