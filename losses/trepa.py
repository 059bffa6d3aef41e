"""TREPA, temporal representation alignment (LatentSync paper eq. 6), and its VideoMAE feature extractor.

Paper eq. 6: ``L_trepa = E || T(D(z0_hat)_{f:f+16}) - T(x_{f:f+16}) ||_2^2`` with ``T`` a self-supervised video
encoder's embedding before the head (VideoMAE-v2). As upstream computes it (bytedance/LatentSync
``latentsync/trepa/loss.py`` ``TREPALoss``, stage-2 weight 10)::

    x  = frames [B, 3, F, H, W] in [-1, 1]  ->  bicubic resize of every frame to 224 x 224
    x  = clamp(x / 2 + 0.5, 0, 1)                          [0, 1]; no mean/std normalisation
    f  = VideoMAEv2.forward_features(x)                    fc_norm(mean over tokens of the last block), [B, D]
    L  = mse(normalize(f_fake, dim=1), normalize(f_real, dim=1))

Here ``L`` is returned per sample (mean over D) -> ``[B]``; its batch mean is upstream's value. The whole face
and all F frames of the clip are used (F = the encoder's frame count: 16 for the official ViT-g). The real clip's
features are computed without gradient (they are the target; upstream's real pixels carry none either).

Backbones, all a transformers ``VideoMAEModel`` inside ``VideoMAEFeatures``: ``load_videomae`` (a local
``save_pretrained`` folder), ``losses.videomae_v2.load_videomae_v2`` (the official ViT-g file LatentSync uses),
``toy_videomae`` (small and random: tests and the toy world only). transformers is imported on use (~3 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from transformers import VideoMAEModel

__all__ = ["TREPALoss", "VideoMAEFeatures", "load_videomae", "toy_videomae", "TOY_SOURCE"]

TOY_SOURCE = "random (toy: an untrained VideoMAE, tests and the toy world only)"


class VideoMAEFeatures(nn.Module):
    """A VideoMAE encoder's clip embedding: ``[B, 3, T, H, W]`` in [0, 1] -> ``[B, D]`` float32.

    ``h = videomae(video).last_hidden_state`` ([B, N, D], N = T/tubelet * (H/patch)^2 tokens), then
        ``fc_norm(mean_N h)``  with ``fc_norm`` (VideoMAE-v2 ``forward_features``; transformers' classifier),
        ``mean_N h``           mean pooling without ``fc_norm`` (a bare ``VideoMAEModel`` folder),
        ``h[:, 0]``            ``use_mean_pooling`` false (``VideoMAEModel`` applied its final layernorm).

    Args:
        videomae: a transformers ``VideoMAEModel``; frozen here (eval, no parameter gradients).
        fc_norm: the LayerNorm after mean pooling, or ``None``.
        source: where the weights came from (shown in ``repr``; ``TOY_SOURCE`` for a random toy).
        gradient_checkpointing: recompute each block in the backward pass when gradients are on (upstream
            ``with_cp``; transformers' own switch only acts in train mode, and this encoder stays in eval).
    Raises ``ValueError`` when the clip's frame count or size differs from the encoder's.
    """

    def __init__(
        self,
        videomae: VideoMAEModel,
        fc_norm: nn.LayerNorm | None = None,
        source: str = "",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.videomae = videomae
        self.fc_norm = fc_norm
        self.source = source
        self.gradient_checkpointing = gradient_checkpointing
        self.eval().requires_grad_(False)

    @property
    def num_frames(self) -> int:
        return int(self.videomae.config.num_frames)

    @property
    def image_size(self) -> int:
        return int(self.videomae.config.image_size)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        t, s = self.num_frames, self.image_size
        if video.dim() != 5 or video.shape[1] != 3 or tuple(video.shape[2:]) != (t, s, s):
            raise ValueError(f"video must be [B, 3, {t}, {s}, {s}] for this encoder, got {tuple(video.shape)}")
        pixels = video.transpose(1, 2).to(self.videomae.dtype)  # transformers takes [B, T, C, H, W]
        if self.gradient_checkpointing and torch.is_grad_enabled():
            h = self.videomae.embeddings(pixels, None)
            for layer in self.videomae.encoder.layer:
                h = checkpoint(layer, h, use_reentrant=False)
            if self.videomae.layernorm is not None:
                h = self.videomae.layernorm(h)
        else:
            h = self.videomae(pixel_values=pixels).last_hidden_state
        if self.fc_norm is not None:
            return self.fc_norm(h.mean(1)).float()
        return (h.mean(1) if self.videomae.config.use_mean_pooling else h[:, 0]).float()

    def extra_repr(self) -> str:
        return f"source={self.source!r}, frames={self.num_frames}, image_size={self.image_size}"


def load_videomae(path: str | Path, gradient_checkpointing: bool = False) -> VideoMAEFeatures:
    """A transformers VideoMAE from a local ``save_pretrained`` folder (never the hub).

    A ``VideoMAEForVideoClassification`` folder gives its encoder and ``fc_norm`` (the classifier is unused);
    any other (``VideoMAEModel``, ``VideoMAEForPreTraining``) gives the encoder alone.
    Raises ``FileNotFoundError`` (one line) when ``path`` is not a folder with a ``config.json``.
    """
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEModel

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no VideoMAE model folder (config.json) at {path}")
    config = VideoMAEConfig.from_pretrained(path, local_files_only=True)
    if "VideoMAEForVideoClassification" in (config.architectures or []):
        model = VideoMAEForVideoClassification.from_pretrained(path, local_files_only=True)
        return VideoMAEFeatures(model.videomae, model.fc_norm, str(path), gradient_checkpointing)
    model = VideoMAEModel.from_pretrained(path, local_files_only=True)
    return VideoMAEFeatures(model, None, str(path), gradient_checkpointing)


def toy_videomae(
    image_size: int = 64,
    num_frames: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    patch_size: int = 16,
    tubelet_size: int = 2,
    seed: int = 0,
) -> VideoMAEFeatures:
    """A small RANDOM VideoMAE (the official ViT layout at toy widths, with ``fc_norm``): tests and the toy only.

    Defaults: 64 px, 8 frames, 4 x 4 x 4 = 64 tokens of width 64, 2 blocks, 4 heads. Weights are transformers'
    initialisation drawn from ``seed`` (the global RNG is left as it was); ``source`` says it is random.
    Its embeddings hardly depend on the clip (the fixed positions dominate the token mean): TREPA values are
    ~1e-6 for a noisy copy, ~1e-5 for another clip. It exercises the computation and its cost, not a prior.
    """
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        num_frames=num_frames,
        tubelet_size=tubelet_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qv_bias=True,
        use_mean_pooling=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoMAEModel(config)
    return VideoMAEFeatures(model, nn.LayerNorm(hidden_size, eps=1e-6), TOY_SOURCE)


class TREPALoss:
    """TREPA (paper eq. 6, LatentSync's ``TREPALoss``): ``(x0_frames, frames) -> [B]``.

    Args:
        encoder: a ``VideoMAEFeatures`` (``load_videomae``, ``losses.videomae_v2.load_videomae_v2``,
            ``toy_videomae``); frozen. Clips must have its frame count; frames are resized to its image size
            (224 for the official ViT-g, as upstream).

    Call (fed by name by the distillation step; no ``inputs`` map needed):
        x0_frames: ``[B, 3, F, H, W]`` the student's decoded prediction in [-1, 1].
        frames: ``[B, 3, F, H, W]`` the real clip in [-1, 1].
    Returns ``[B]`` float32: ``mean_D (n(f_fake) - n(f_real))^2`` with ``n`` the L2 normalisation over D.
    """

    def __init__(self, encoder: VideoMAEFeatures):
        self.encoder = encoder.eval().requires_grad_(False)

    def clips(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` in [-1, 1] -> the encoder's input ``[B, 3, F, S, S]`` in [0, 1] (S = image size)."""
        if frames.dim() != 5 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [B, 3, F, H, W], got {tuple(frames.shape)}")
        b, c, f, h, w = frames.shape
        s = self.encoder.image_size
        x = frames.transpose(1, 2).reshape(b * f, c, h, w)  # (b f) c h w
        if (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic")
        x = (x / 2 + 0.5).clamp(0, 1)  # upstream: "model expects pixel range [0, 1]"
        return x.reshape(b, f, c, s, s).transpose(1, 2)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """The L2-normalised clip embeddings ``[B, D]`` float32 of ``[B, 3, F, H, W]`` frames in [-1, 1]."""
        return F.normalize(self.encoder(self.clips(frames)).float(), p=2, dim=1)

    def __call__(self, x0_frames: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        if x0_frames.shape != frames.shape:
            raise ValueError(f"x0_frames {tuple(x0_frames.shape)} and frames {tuple(frames.shape)} differ")
        fake = self.features(x0_frames)
        with torch.no_grad():
            real = self.features(frames.to(x0_frames.device))
        return (fake - real).square().mean(1)

    def to(self, *args, **kwargs) -> TREPALoss:
        """Move (or cast) the encoder (``torch.nn.Module.to`` arguments); returns self."""
        self.encoder.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        e = self.encoder
        return f"TREPALoss(source={e.source!r}, frames={e.num_frames}, image_size={e.image_size})"
