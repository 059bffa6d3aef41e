"""Sync loss (LatentSync's SyncNet supervision) and the classic SyncNet metrics (offset, LSE-D, LSE-C).

Loss: LatentSync ``latentsync/utils/util.py`` ``cosine_loss`` (from Wav2Lip's expert
discriminator), applied in stage 2 (``scripts/train_unet.py``) to the decoded prediction:

    s_b   = cos(v_b, a_b)                 StableSyncNet embeddings, in [0, 1] (ReLU + L2 norm)
    L_b   = BCE(s_b, y = 1) = -max(log s_b, -100)

Metrics: joonson/syncnet_python ``SyncNetInstance.evaluate`` (``calc_pdist``), the LSE-D and
LSE-C of the lip-sync literature (Wav2Lip, LatentSync tables):

    d_j   = mean_t || v_t - a_{t + j - S} + 1e-6 ||_2,   j = 0 .. 2S  (a = 0 outside the clip, S = 15)
    offset = S - argmin_j d_j,   LSE-D = min_j d_j,   LSE-C = median_j d_j - min_j d_j
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from losses.frames import frame_images

__all__ = ["SyncLoss", "sync_bce", "SyncScores", "offset_distances", "sync_scores", "VSHIFT"]

VSHIFT = 15  # the original evaluation's +-15 frame search (syncnet_python --vshift default)


def sync_bce(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor, y: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Binary cross-entropy of the cosine similarity against ``y`` (1 = in sync): ``[B, D], [B, D] -> [B]``.

    ``s = cos(v, a)`` is clamped to [0, 1]: StableSyncNet's embeddings are non-negative, so this
    changes nothing for them (LatentSync feeds ``s`` to ``nn.BCELoss`` unclamped, which rejects
    values outside [0, 1]); ``nn.BCELoss``'s floor of -100 on each log is kept. Computed in float32.
    """
    if vision_embeds.shape != audio_embeds.shape or vision_embeds.dim() != 2:
        raise ValueError(f"embeddings must both be [B, D], got {tuple(vision_embeds.shape)}, "
                         f"{tuple(audio_embeds.shape)}")
    s = F.cosine_similarity(vision_embeds.float(), audio_embeds.float(), dim=1).clamp(0.0, 1.0)
    target = torch.as_tensor(y, dtype=s.dtype, device=s.device).expand_as(s)
    return F.binary_cross_entropy(s, target, reduction="none")


class SyncLoss:
    """LatentSync's stage-2 sync loss on decoded frames: ``(frames, mel) -> [B]``.

    Args:
        syncnet: a ``StableSyncNet`` (``losses.load_syncnet``) whose frame count, face
            resolution and mel window fit the data. It is frozen here (eval, no parameter
            gradients); gradients still flow to ``frames``.
        resolution: faces are resized (bicubic, as upstream) to ``resolution x resolution``
            before the lower half is cut; ``None`` keeps their size (256 for the official net).
        lower_half: give SyncNet only the lower half of each face (``data.lower_half``, true upstream).
        gradient_checkpointing: recompute SyncNet's blocks in the backward pass (upstream: on).
        negatives: also push each generated window away from the audio of another window of the batch (the
            previous one, ``a.roll(1)``): ``+ BCE(cos(v_b, a_{b-1}), y = 0)``, the off-sync pair of the SyncNet's
            own training objective (LatentSync ``SyncNetDataset``, y = 0). A change of the frames that raises
            ``cos(v, a)`` for any audio (an audio-agnostic gain) then earns nothing. Needs B >= 2. Not in
            LatentSync's stage-2 loss (positive pairs only); this codebase's own variant.

    Call:
        frames: ``[B, 3, F, H, W]`` decoded pixels in [-1, 1] (VAE output layout).
        mel: ``[B, 1, 80, T]`` SyncNet mel windows of the same frames (``losses.mel.mel_window``).
        mel_negatives: optional ``[B, K, 1, 80, T]``, K off-sync mel windows per window (other times of the same
            clip: ``distill.data.ClipDataset(mel_negatives=K)``). Given, the loss is the cross-entropy of picking
            the window's own audio among its K + 1 candidates, with the SyncNet's cosines as the odds:
            ``-log(s_0 / (s_0 + sum_k s_k))``, ``s_0 = cos(v_b, a_b)``, ``s_k = cos(v_b, a_{b,k})``. Raising every
            cosine by one factor (a face the net likes whatever is said: the ReLU'd embeddings share the positive
            orthant) changes nothing; only matching this audio better than the rest of the clip's does. Not in
            LatentSync (positives only); the SyncNet's own training pairs (LatentSync ``SyncNetDataset``: an
            off-sync window of the same video) used as candidates, as in CLIP-style InfoNCE.
        real_frames: optional ``[B, 3, F, H, W]``, the real frames of the same windows. Given, the loss is
            relative to them: ``max(0, L(frames) - L(real_frames))``, the real frames' value without gradient.
            The reward then stops where a generated window scores as well as its real frames: below that level
            the supervising net has no evidence of a better mouth, and descending it further moved the toy
            world's outputs away from the true mouth (``scripts/probe_sync_reward``, BENCHMARKS section 14).
            Not in LatentSync (its loss is absolute); this codebase's own variant.
    Returns ``[B]`` float32, ``-log cos(v, a)`` (``- log(1 - cos(v_b, a_{b-1}))`` added with ``negatives``;
    ``+ log(s_0 + sum_k s_k)`` with ``mel_negatives``; the excess over the real frames' value of the same with
    ``real_frames``).
    Raises ValueError when ``real_frames`` and ``frames`` differ in shape, with ``negatives`` and B < 2, or when
    ``mel_negatives`` is not ``[B, K, *mel.shape[1:]]``.
    """

    def __init__(self, syncnet: nn.Module, resolution: int | None = None, lower_half: bool = True,
                 gradient_checkpointing: bool = True, negatives: bool = False):
        self.syncnet = syncnet.eval().requires_grad_(False)
        if hasattr(syncnet, "set_gradient_checkpointing"):
            syncnet.set_gradient_checkpointing(gradient_checkpointing)
        self.resolution = resolution
        self.lower_half = lower_half
        self.negatives = negatives

    def images(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` -> SyncNet's visual input ``[B, 3F, H', W']`` (frame-major channels)."""
        x = frame_images(frames, self.resolution, self.lower_half)  # (b f) c h' w'
        b, c, f = frames.shape[:3]
        return x.reshape(b, f * c, *x.shape[-2:])  # b (f c) h' w'

    def __call__(self, frames: torch.Tensor, mel: torch.Tensor, real_frames: torch.Tensor | None = None,
                 mel_negatives: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        if mel_negatives is not None and (mel_negatives.dim() != mel.dim() + 1 or mel_negatives.shape[0] != mel.shape[0]
                                          or mel_negatives.shape[2:] != mel.shape[1:]):  # fmt: skip
            raise ValueError(f"mel_negatives must be [B, K, {', '.join(map(str, mel.shape[1:]))}] for mel "
                             f"{tuple(mel.shape)}, got {tuple(mel_negatives.shape)}")
        loss = self._loss(frames, mel, mel_negatives)
        if real_frames is None:
            return loss
        if real_frames.shape != frames.shape:
            raise ValueError(f"real_frames {tuple(real_frames.shape)} must match frames {tuple(frames.shape)}")
        with torch.no_grad():
            floor = self._loss(real_frames, mel, mel_negatives)
        return torch.relu(loss - floor)

    def _loss(self, frames: torch.Tensor, mel: torch.Tensor, mel_negatives: torch.Tensor | None) -> torch.Tensor:
        param = next(self.syncnet.parameters())
        images = self.images(frames).to(param.dtype)
        v, a = self.syncnet(images, mel.to(device=param.device, dtype=param.dtype))
        loss = sync_bce(v, a, 1.0)
        if self.negatives:
            if v.shape[0] < 2:
                raise ValueError("SyncLoss(negatives=True) needs at least 2 windows: each takes another's audio")
            loss = loss + sync_bce(v, a.roll(1, 0), 0.0)
        if mel_negatives is not None:  # + log(s_0 + sum_k s_k): the candidates' normaliser
            b, k = mel_negatives.shape[:2]
            neg = mel_negatives.reshape(b * k, *mel_negatives.shape[2:]).to(device=param.device, dtype=param.dtype)
            a_neg = self.syncnet.embed_audio(neg).reshape(b, k, -1).float()
            s_neg = torch.einsum("bd,bkd->bk", v.float(), a_neg).clamp(0.0, 1.0)
            s_pos = F.cosine_similarity(v.float(), a.float(), dim=1).clamp(0.0, 1.0)
            loss = loss + torch.log((s_pos + s_neg.sum(1)).clamp_min(math.exp(-100.0)))
        return loss

    def to(self, *args, **kwargs) -> SyncLoss:
        """Move (or cast) the SyncNet (``torch.nn.Module.to`` arguments); returns self."""
        self.syncnet.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return f"SyncLoss(resolution={self.resolution}, lower_half={self.lower_half}, negatives={self.negatives})"


@dataclass(frozen=True)
class SyncScores:
    """One clip's SyncNet scores. ``offset``: video frame t matches audio frame t - offset best
    (positive = the video lags the audio); ``distances``: ``[2S + 1]`` mean distance per shift."""

    offset: int
    lse_d: float
    lse_c: float
    distances: torch.Tensor


def offset_distances(video_embeds: torch.Tensor, audio_embeds: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """``d_j = mean_t ||v_t - a_{t+j-S} + 1e-6||``, ``j = 0 .. 2S``: ``[T, D], [T, D] -> [2S + 1]``.

    As ``calc_pdist`` upstream, audio outside the clip is a zero vector (those frames still
    count in the mean).
    """
    if video_embeds.dim() != 2 or video_embeds.shape != audio_embeds.shape:
        raise ValueError(f"embeddings must both be [T, D], got {tuple(video_embeds.shape)}, "
                         f"{tuple(audio_embeds.shape)}")
    if vshift < 0 or video_embeds.shape[0] == 0:
        raise ValueError(f"need at least one frame and vshift >= 0, got T={video_embeds.shape[0]}, vshift={vshift}")
    v = video_embeds.float()
    a = F.pad(audio_embeds.float(), (0, 0, vshift, vshift))                   # [T + 2S, D], zeros outside
    windows = a.unfold(0, 2 * vshift + 1, 1).transpose(1, 2)                  # [T, 2S + 1, D]: a_{t+j-S}
    return F.pairwise_distance(v[:, None, :].expand_as(windows), windows).mean(0)


def sync_scores(video_embeds: torch.Tensor, audio_embeds: torch.Tensor, vshift: int = VSHIFT) -> SyncScores:
    """Offset, LSE-D (min mean distance) and LSE-C (median - min) of one clip's per-frame embeddings.

    ``video_embeds [T, D]``, ``audio_embeds [T, D]``: embedding ``t`` of each covers the window
    starting at frame ``t`` (``losses.syncnet_v2.window_embeddings`` or StableSyncNet windows).
    ``torch.median`` is the lower median, as upstream (2S + 1 is odd, so it is the median).
    """
    d = offset_distances(video_embeds, audio_embeds, vshift)
    d_min, j = torch.min(d, 0)
    return SyncScores(offset=int(vshift - j), lse_d=float(d_min), lse_c=float(torch.median(d) - d_min), distances=d)
