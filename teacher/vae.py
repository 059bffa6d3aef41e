"""The teacher's image VAE (sd-vae-ft-mse) applied to video chunks.

LatentSync encodes and decodes every frame independently with the Stable Diffusion VAE.
Latents are scaled as in the official pipeline:

    z = (E(x) - shift) * scaling          (encode; E samples the posterior, not its mode)
    x = D(z / scaling + shift)            (decode; unclamped, paste-back comes later)

with scaling = 0.18215 and shift = 0 for sd-vae-ft-mse. A 512 x 512 frame gives a
4 x 64 x 64 latent. Frames are run through the VAE in chunks to bound memory; the results
do not depend on the chunk size (the posterior noise is drawn once for the whole video).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)

# A 4-level AutoencoderKL (downsampling factor 8, like sd-vae-ft-mse) with tiny widths:
# for tests and the CPU demo. The real one has widths (128, 256, 512, 512), 2 layers a block.
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

_RANGE_TOL = 1e-3


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B * F, C, H, W] (frame-major within each sample)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _to_video(x: torch.Tensor, b: int, f: int) -> torch.Tensor:
    """[B * F, C, H, W] -> [B, C, F, H, W]."""
    _, c, h, w = x.shape
    return x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class VideoVAE(torch.nn.Module):
    """Frame-wise ``AutoencoderKL`` for video tensors ``[B, C, F, H, W]``.

    Attributes:
        vae: the wrapped diffusers ``AutoencoderKL``.
        scaling_factor: latent scale (0.18215 for sd-vae-ft-mse).
        shift_factor: latent shift (0.0 when the config has none).
    """

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        subfolder: str | None = None,
    ) -> VideoVAE:
        """Load a diffusers VAE folder (config.json + diffusion_pytorch_model.{safetensors,bin}),
        laid out as stabilityai/sd-vae-ft-mse. Local files only."""
        folder = Path(path) / subfolder if subfolder else Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"VAE folder not found: {folder}")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"VAE folder {folder} has no config.json")
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            raise FileNotFoundError(
                f"VAE folder {folder} has no weights (expected one of: {', '.join(WEIGHT_FILES)})"
            )
        variant = None
        if not any((folder / name).is_file() for name in WEIGHT_FILES[:2]):
            variant = "fp16"
        vae = AutoencoderKL.from_pretrained(
            str(folder), torch_dtype=torch_dtype, local_files_only=True, variant=variant
        )
        return cls(vae)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VideoVAE:
        """A randomly initialised VAE from an ``AutoencoderKL`` config dict."""
        return cls(AutoencoderKL.from_config(dict(config)))

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> VideoVAE:
        """A small random VAE (``TINY_VAE_CONFIG``, factor 8) built without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls.from_config({**TINY_VAE_CONFIG, **overrides})

    # ----------------------------------------------------------------- properties
    @property
    def scale_factor(self) -> int:
        """Spatial downsampling factor, 2 ** (levels - 1): 8 for the SD VAE."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    # ----------------------------------------------------------------- checks
    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(f"video must be [B, 3, F, H, W], got shape {tuple(video.shape)}")
        c_in = int(self.vae.config.in_channels)
        if video.shape[1] != c_in:
            raise ValueError(f"video must have {c_in} channels at dim 1, got shape {tuple(video.shape)}")
        h, w = video.shape[-2:]
        if h % self.scale_factor or w % self.scale_factor:
            raise ValueError(f"video H, W must be divisible by {self.scale_factor}, got {h} x {w}")
        if video.numel():
            lo, hi = torch.aminmax(video.detach())
            if lo.item() < -1 - _RANGE_TOL or hi.item() > 1 + _RANGE_TOL:
                raise ValueError(
                    f"video must be in [-1, 1], got values in [{lo.item():.4g}, {hi.item():.4g}]"
                )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, F, h, w], got {tuple(latents.shape)}"
            )
        if latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must have {self.latent_channels} channels at dim 1, got {tuple(latents.shape)}"
            )

    @staticmethod
    def _check_chunk(chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    # ----------------------------------------------------------------- encode / decode
    def encode(
        self,
        video: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
        chunk_size: int = 16,
    ) -> torch.Tensor:
        """Video [B, 3, F, H, W] in [-1, 1] -> latents [B, 4, F, H/8, W/8].

        z = (z_vae - shift) * scaling, where z_vae is a posterior sample (``sample=True``, as
        LatentSync does) or its mode. The posterior noise is one ``randn`` draw of shape
        [B * F, 4, h, w] after all chunks are encoded, which equals a single unchunked
        ``latent_dist.sample(generator)`` on the frame batch.
        """
        self._check_video(video)
        self._check_chunk(chunk_size)
        b, _, f = video.shape[:3]
        frames = _to_frames(video.to(device=self.device, dtype=self.dtype))
        means, stds = [], []
        for chunk in frames.split(chunk_size):
            dist = self.vae.encode(chunk).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        z = torch.cat(means)
        if sample:
            eps = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z + torch.cat(stds) * eps
        z = (z - self.shift_factor) * self.scaling_factor
        return _to_video(z, b, f)

    def decode(self, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Latents [B, 4, F, h, w] -> video [B, 3, F, 8h, 8w], x = D(z / scaling + shift), unclamped."""
        self._check_latents(latents)
        self._check_chunk(chunk_size)
        b, _, f = latents.shape[:3]
        z = _to_frames(latents.to(device=self.device, dtype=self.dtype))
        z = z / self.scaling_factor + self.shift_factor
        frames = torch.cat([self.vae.decode(chunk).sample for chunk in z.split(chunk_size)])
        return _to_video(frames, b, f)

    def forward(self, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Same as :meth:`decode`."""
        return self.decode(latents, chunk_size=chunk_size)


def load_vae(path: str | os.PathLike | None = None, torch_dtype: torch.dtype | None = None, seed: int = 0) -> VideoVAE:
    """Config entry point: the diffusers VAE folder at ``path``, or the tiny random VAE when None."""
    if path is None:
        return VideoVAE.tiny(seed=seed)
    return VideoVAE.from_pretrained(path, torch_dtype=torch_dtype)
