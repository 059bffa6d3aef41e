"""StableSyncNet: LatentSync's SyncNet, the network behind its sync loss, and its checkpoint loader.

The architecture is the one of LatentSync's ``latentsync/models/stable_syncnet.py`` (v1.5/1.6),
configured by the ``model:`` section of ``configs/syncnet/syncnet_16_pixel_attn.yaml``
(here ``configs/syncnet/stable_syncnet_16.yaml``): two ``DownEncoder2D`` stacks of
ResNet blocks that each downsample (a strided 3x3 conv after asymmetric zero padding), with
self-attention blocks at the configured stages, a final GroupNorm + ReLU and an L2
normalisation of the flattened ``[B, C, 1, 1]`` output.

    visual: [B, 3F, H, W]  (F frames, lower half of the face, frames stacked on channels)
    audio:  [B, 1, 80, T]  (SyncNet mel window, ``losses.mel``)
    official: F = 16, H x W = 128 x 256, T = 52, C = 2048

Parameter names are the official ones, so a real ``stable_syncnet.pt`` (a torch pickle
``{"state_dict": ...}``) loads strictly.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["StableSyncNet", "SyncNetCheckpointError", "load_syncnet", "resolve_syncnet_config", "window_embeddings"]

ENCODER_KEYS = ("in_channels", "block_out_channels", "downsample_factors", "attn_blocks", "dropout")
NORM_GROUPS = 32  # official: DownEncoder2D's default, never overridden by StableSyncNet
NORM_EPS = 1e-6
ATTN_HEADS = 8


class SyncNetCheckpointError(ValueError):
    """A SyncNet config or checkpoint that does not match the architecture (one message lists every problem)."""


def _downsample_padding(factor: int | tuple[int, int]) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) before the stride-``factor`` 3x3 conv, as upstream.

    Upstream: (0, 1, 0, 1) in general; a factor (1, s) pads H by 1 on both sides (keeps H);
    a factor (s, 1) pads W by 1 on both sides (keeps W).
    """
    if isinstance(factor, tuple):
        if factor[0] == 1:
            return (0, 1, 1, 1)
        if factor[1] == 1:
            return (1, 1, 0, 1)
    return (0, 1, 0, 1)


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, a residual (1x1 conv when widths differ), then the downsampling conv.

    ``[B, C_in, H, W] -> [B, C_out, H', W']``; H' = floor((H + pad_h - 3) / s_h) + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 downsample_factor: int | Sequence[int] = 2):
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, in_channels, eps=NORM_EPS, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_channels, eps=NORM_EPS, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.act_fn = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        factor = tuple(downsample_factor) if isinstance(downsample_factor, Sequence) else downsample_factor
        if factor == 1:  # only the integer 1 skips the conv; a (1, 1) factor keeps it (as upstream)
            self.downsample_conv = None
        else:
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=factor, padding=0)
            self.pad = _downsample_padding(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act_fn(self.norm1(x)))
        h = self.conv2(self.dropout(self.act_fn(self.norm2(h))))
        h = h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad, mode="constant", value=0.0))
        return h


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    ``[B, N, C] -> [B, N, C]``; softmax(q k^T / sqrt(C / heads)) v per head.
    """

    def __init__(self, dim: int, heads: int = ATTN_HEADS, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=True)
        self.to_k = nn.Linear(dim, dim, bias=True)
        self.to_v = nn.Linear(dim, dim, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, heads, N, C / heads]
            return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

        h = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        h = h.transpose(1, 2).reshape(b, n, c)
        return self.to_out[1](self.to_out[0](h))


class GEGLU(nn.Module):
    """``proj(x) = [h, g]`` -> ``h * gelu(g)`` (Shazeer 2020; diffusers' ``GEGLU``, exact GELU): [.., C] -> [.., C']."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """diffusers' ``FeedForward(dim, activation_fn="geglu")`` as upstream uses it: GEGLU to 4C, dropout, linear
    back to C; parameter names ``net.0.proj``, ``net.2``. ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, dim: int, dropout: float = 0.0, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class AttentionBlock2D(nn.Module):
    """GroupNorm, 1x1 conv in, pre-LayerNorm self-attention and GEGLU feed-forward over the H*W tokens,
    1x1 conv out, plus the block input. ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        if dim % ATTN_HEADS or dim % NORM_GROUPS:
            raise ValueError(f"attention block width {dim} must be divisible by {NORM_GROUPS} and {ATTN_HEADS}")
        self.norm1 = nn.GroupNorm(NORM_GROUPS, dim, eps=NORM_EPS, affine=True)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)
        self.conv_in = nn.Conv2d(dim, dim, kernel_size=1)
        self.conv_out = nn.Conv2d(dim, dim, kernel_size=1)
        self.attn = Attention(dim, heads=ATTN_HEADS, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)  # [B, H*W, C]
        t = self.attn(self.norm2(t)) + t
        t = self.ff(self.norm3(t)) + t
        t = t.transpose(1, 2).reshape(b, c, h, w).contiguous()
        return self.conv_out(t) + x


class DownEncoder2D(nn.Module):
    """conv_in, one ResNet block per stage (+ an attention block where ``attn_blocks[i] == 1``),
    GroupNorm + ReLU. ``[B, C_in, H, W] -> [B, block_out_channels[-1], h, w]`` (h = w = 1 when
    the downsampling factors fit the input; the embedding is its flattening).
    """

    def __init__(self, in_channels: int, block_out_channels: Sequence[int], downsample_factors: Sequence[Any],
                 attn_blocks: Sequence[int], dropout: float = 0.0, gradient_checkpointing: bool = False):
        super().__init__()
        if not len(block_out_channels) == len(downsample_factors) == len(attn_blocks):
            raise ValueError("block_out_channels, downsample_factors and attn_blocks must have one entry per stage, "
                             f"got {len(block_out_channels)}, {len(downsample_factors)}, {len(attn_blocks)}")
        bad = [c for c in block_out_channels if c % NORM_GROUPS]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not divisible by the {NORM_GROUPS} GroupNorm groups")
        self.gradient_checkpointing = gradient_checkpointing
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        width = block_out_channels[0]
        for out, factor, attn in zip(block_out_channels, downsample_factors, attn_blocks, strict=True):
            self.down_blocks.append(ResnetBlock2D(width, out, dropout=dropout, downsample_factor=factor))
            if attn == 1:
                self.down_blocks.append(AttentionBlock2D(out, dropout=dropout))
            width = out
        self.norm_out = nn.GroupNorm(NORM_GROUPS, block_out_channels[-1], eps=NORM_EPS)
        self.act_fn_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return self.act_fn_out(self.norm_out(h))


class StableSyncNet(nn.Module):
    """LatentSync's StableSyncNet. ``forward(images, mel) -> (vision_embeds, audio_embeds)``.

    Args:
        config: the official ``model:`` mapping ``{audio_encoder: {...}, visual_encoder: {...}}``,
            each with ``in_channels, block_out_channels, downsample_factors, attn_blocks, dropout``.
        gradient_checkpointing: recompute each block in the backward pass (the sync loss on
            the student's x0 uses it, as LatentSync's stage 2 does).

    Shapes: images ``[B, 3F, H, W]`` in [-1, 1] (LatentSync's ImageProcessor range), mel
    ``[B, 1, 80, T]``; both embeddings ``[B, C]`` with unit L2 norm and non-negative entries
    (ReLU before the norm), so their cosine similarity lies in [0, 1].
    """

    def __init__(self, config: Mapping[str, Any], gradient_checkpointing: bool = False):
        super().__init__()
        cfg = _check_config(config)
        self.config = cfg
        self.audio_encoder = DownEncoder2D(**cfg["audio_encoder"], gradient_checkpointing=gradient_checkpointing)
        self.visual_encoder = DownEncoder2D(**cfg["visual_encoder"], gradient_checkpointing=gradient_checkpointing)
        self.eval()

    @property
    def embed_dim(self) -> int:
        return self.config["visual_encoder"]["block_out_channels"][-1]

    def set_gradient_checkpointing(self, enabled: bool = True) -> StableSyncNet:
        self.audio_encoder.gradient_checkpointing = enabled
        self.visual_encoder.gradient_checkpointing = enabled
        return self

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3F, H, W]`` -> unit, non-negative vision embeddings ``[B, C]``."""
        v = self.visual_encoder(images)  # [B, C, 1, 1]
        return F.normalize(v.reshape(v.shape[0], -1), p=2, dim=1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 80, T]`` -> unit, non-negative audio embeddings ``[B, C]``."""
        a = self.audio_encoder(mel)
        return F.normalize(a.reshape(a.shape[0], -1), p=2, dim=1)

    def forward(self, images: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_images(images), self.embed_audio(mel)


def _check_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A plain, validated copy of the ``model:`` mapping (downsample factors as int or (h, w) tuple)."""
    out: dict[str, dict[str, Any]] = {}
    extra = set(config) - {"audio_encoder", "visual_encoder"}
    if extra:
        raise SyncNetCheckpointError(f"unknown SyncNet model keys {sorted(extra)}; expected audio_encoder, "
                                     "visual_encoder")
    for name in ("audio_encoder", "visual_encoder"):
        if name not in config:
            raise SyncNetCheckpointError(f"SyncNet model config lacks {name!r}")
        enc = dict(config[name])
        missing = [k for k in ENCODER_KEYS if k not in enc and k != "dropout"]
        unknown = set(enc) - set(ENCODER_KEYS)
        if missing or unknown:
            raise SyncNetCheckpointError(f"SyncNet {name}: missing keys {missing}, unknown keys {sorted(unknown)}")
        enc["block_out_channels"] = [int(c) for c in enc["block_out_channels"]]
        enc["downsample_factors"] = [f if isinstance(f, int) else tuple(int(x) for x in f)
                                     for f in enc["downsample_factors"]]
        enc["attn_blocks"] = [int(a) for a in enc["attn_blocks"]]
        enc["dropout"] = float(enc.get("dropout", 0.0))
        out[name] = enc
    if out["audio_encoder"]["block_out_channels"][-1] != out["visual_encoder"]["block_out_channels"][-1]:
        raise SyncNetCheckpointError("audio and visual embeddings differ in width: "
                                     f"{out['audio_encoder']['block_out_channels'][-1]} vs "
                                     f"{out['visual_encoder']['block_out_channels'][-1]}")
    return out


def resolve_syncnet_config(model_config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The official ``model:`` section as a plain dict, from a mapping or a YAML path.

    A YAML with a top-level ``model:`` key (the official ``syncnet_16_pixel_attn.yaml``, our
    ``configs/syncnet/*.yaml``) yields that section; otherwise the file is the section itself.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(model_config, str | os.PathLike):
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"SyncNet config not found: {path}")
        cfg = OmegaConf.load(path)
        model_config = cfg.model if "model" in cfg else cfg
    if isinstance(model_config, DictConfig):
        model_config = OmegaConf.to_container(model_config, resolve=True)
    if not isinstance(model_config, Mapping):
        raise SyncNetCheckpointError(f"SyncNet model config must be a mapping, got {type(model_config).__name__}")
    return dict(model_config)


def _read_state_dict(ckpt_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SyncNetCheckpointError(f"{path} is not a StableSyncNet checkpoint (torch.load: {reason})") from None
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        keys = sorted(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise SyncNetCheckpointError(f"{path} is not a StableSyncNet checkpoint: expected a dict with key "
                                     f"'state_dict' (as LatentSync saves stable_syncnet.pt), got {keys}")
    return dict(ckpt["state_dict"])


def state_dict_problems(model: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 8) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` for ``model`` (empty when it loads strictly)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    out = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            out.append(f"{len(items)} {label} keys: {', '.join(items[:limit])}{more}")
    return out


def load_syncnet(
    ckpt_path: str | os.PathLike | None,
    model_config: Mapping[str, Any] | str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
) -> StableSyncNet:
    """Build a StableSyncNet from its official ``model:`` config and load ``stable_syncnet.pt``.

    Args:
        ckpt_path: a torch pickle ``{"state_dict": {...}}`` with the official key names
            (``audio_encoder.conv_in.weight``, ...); ``None`` keeps the fresh random weights
            (a network that must be trained before it means anything).
        model_config: the ``model:`` section (mapping) or a path to a YAML holding it.
        device, dtype: where the weights live and their type (None: float32, whatever the file stores).
        gradient_checkpointing: see ``StableSyncNet``.

    Returns the network in eval mode. Its parameters keep ``requires_grad``: freeze it where
    it is used as a loss (``.requires_grad_(False)``).

    Raises:
        FileNotFoundError: no such checkpoint or config file.
        SyncNetCheckpointError: a malformed config, a file that is not ``{"state_dict": ...}``,
            or any missing, unexpected or mis-shaped key (listed in one message; loading is strict).
    """
    cfg = resolve_syncnet_config(model_config)
    try:  # with a checkpoint, build on the meta device: no random init of 400 M weights that are replaced anyway
        with torch.device("meta" if ckpt_path is not None else "cpu"):
            net = StableSyncNet(cfg, gradient_checkpointing=gradient_checkpointing)
    except (TypeError, ValueError) as err:
        if isinstance(err, SyncNetCheckpointError):
            raise
        raise SyncNetCheckpointError(f"SyncNet config: {err}") from err
    if ckpt_path is not None:
        state = _read_state_dict(ckpt_path)
        problems = state_dict_problems(net, state)
        if problems:
            raise SyncNetCheckpointError(f"SyncNet checkpoint {ckpt_path} does not match the config: "
                                         + "; ".join(problems))
        net.load_state_dict(state, strict=True, assign=True)
        dtype = dtype or torch.float32  # as a copy into float32 parameters would give
    if dtype is not None:
        net.to(dtype=dtype)
    return net.to(device).eval()


@torch.no_grad()
def window_embeddings(net: StableSyncNet, faces: torch.Tensor, mel: torch.Tensor, num_frames: int,
                      fps: float = 25.0, lower_half: bool = True, batch_size: int = 8
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame StableSyncNet embeddings of a clip, for the LSE metrics (``losses.sync.sync_scores``).

    Window ``t`` = faces ``t .. t + F - 1`` (lower halves, frame-major channels) against the mel
    window of the same frames (``losses.mel.mel_window``); windows run while both fit.

    Args:
        faces: ``[T, 3, R, R]`` aligned faces in [-1, 1] at the network's resolution.
        mel: ``[80, M]`` ``losses.mel.syncnet_mel`` of the clip's audio.
    Returns ``(video [N, C], audio [N, C])`` float32 on the CPU. Raises ValueError when no window fits.
    """
    from losses.mel import MEL_FPS, mel_window, mel_window_length

    length = mel_window_length(num_frames, fps)
    count = 0
    while count + num_frames <= faces.shape[0] and int(MEL_FPS * (count / fps)) + length <= mel.shape[-1]:
        count += 1
    if count == 0:
        raise ValueError(f"a {num_frames}-frame SyncNet window does not fit {faces.shape[0]} frames / "
                         f"{mel.shape[-1]} mel frames")
    param = next(net.parameters())
    x = faces[:, :, faces.shape[2] // 2:] if lower_half else faces
    vids, auds = [], []
    for i in range(0, count, batch_size):
        ts = range(i, min(count, i + batch_size))
        images = torch.stack([x[t:t + num_frames].reshape(-1, *x.shape[2:]) for t in ts])   # [n, 3F, h, w]
        mels = torch.stack([mel_window(mel, t, num_frames, fps) for t in ts])              # [n, 1, 80, L]
        v, a = net(images.to(param.device, param.dtype), mels.to(param.device, param.dtype))
        vids.append(v.float().cpu())
        auds.append(a.float().cpu())
    return torch.cat(vids), torch.cat(auds)
