"""Adversarial losses for the student's x0: a lip-region PatchGAN on decoded frames and a latent-space variant.

Both share one interface, so the step drives either the same way:

    g   = adv(frames=x0_frames, mask=mask)                          generator loss [B], gradient to the frames
    d   = adv.discriminator_loss(real=frames, fake=x0_frames.detach(), mask=mask)   [B], gradient to D only
    adv.discriminator                                              the trainable nn.Module (own optimizer)

``input_name`` names the parameter of ``__call__`` that takes the generated tensor ("frames" or "x0").

Losses (hinge GAN, Lim & Ye 2017; Miyato et al. 2018 eq. 17; the hinge of StyleGAN-T / ADD / LADD):

    L_D(x_r, x_g) = E_patches[ max(0, 1 - D(x_r)) ] + E_patches[ max(0, 1 + D(x_g)) ]
    L_G(x_g)      = - E_patches[ D(x_g) ]
    R1(x_r)       = gamma / 2 * || grad_x sum_s E_patches D_s(x_r) ||^2      (Mescheder et al. 2018, eq. 9)

each per crop, then averaged over the crops (frames) of a sample and over the scales: ``[B]``.

PatchGAN: pix2pix's ``NLayerDiscriminator`` (Isola et al. 2017: 4x4 convs, stride 2, LeakyReLU 0.2, a
1-channel logit map of 70x70-receptive-field patches) at 3 scales, the input average-pooled by 2 between
them (pix2pixHD's multi-scale discriminator, Wang et al. 2018). pix2pix normalises the inner convs with
BatchNorm; here GroupNorm (``groups``, default 4), which keeps items apart (R1 per item stays exact). Without
it, and with Adam's beta1 = 0, the discriminator does not leave chance in a few hundred steps on real vs
1-step student lip crops: the items' colour (the identity, shared by the real and the fake crop of an item)
moves every logit alike from batch to batch, and the real-vs-fake difference stays buried under it
(BENCHMARKS section 17). ``DISC_LR`` / ``DISC_BETAS``: its optimizer's defaults (pix2pix's beta1 0.5).
DESIGN section 4: 96x96 lip crops, hinge loss, generator weight 0.1 after a warm-up (``DEFAULT_WEIGHT``; the
warm-up is the step's weight schedule, ``distill.step.step_weights``).

The lip box: ``box`` as fractions (x0, y0, x1, y1) of the aligned face, or, with ``box=None``, from the mask
tensor the step already has (1 = keep, 0 = generated; pixel or latent resolution): the rows where the mask's
centre column is generated (LatentSync's mask keeps a band over the nose and regenerates the jaw below it),
and a square of that height centred horizontally. For ``teacher.face.lower_face_mask`` that is
y 0.50-0.95, x 0.275-0.725, around the mouth.

The latent variant (``LatentAdversarial``) puts small conv heads on the feature maps of a frozen feature
extractor passed in (e.g. the teacher U-Net's down blocks, ``distill.step.UNetFeatures``), as latent
adversarial diffusion distillation does (LADD, Sauer et al. 2024); no decode is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_WEIGHT", "DISC_BETAS", "DISC_LR", "GROUPS", "LipAdversarial", "LatentAdversarial", "MultiScalePatchGAN",
    "PatchGAN", "d_hinge", "g_hinge", "lip_crops", "mask_box", "r1_penalty",
]

DEFAULT_WEIGHT = 0.1  # generator weight after the warm-up (DESIGN section 4)
DISC_LR, DISC_BETAS = 2e-4, (0.5, 0.99)  # the discriminator's AdamW (recipe.build_disc_optimizer's defaults)
GROUPS = 4  # GroupNorm groups of the PatchGAN's inner convs
CROP = 96


# --------------------------------------------------------------------------- formulas
def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge ``[N, ...] x2 -> [N]``: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    return F.relu(1.0 - real_logits.float()).flatten(1).mean(1) + F.relu(1.0 + fake_logits.float()).flatten(1).mean(1)


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge ``[N, ...] -> [N]``: -mean(D(fake))."""
    return -fake_logits.float().flatten(1).mean(1)


def r1_penalty(scores: torch.Tensor, inputs: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 ``[N] -> [N]``: gamma / 2 * ||d scores_n / d inputs_n||^2 (``inputs [N, ...]`` requires grad; items must
    not interact inside D, so one backward of ``scores.sum()`` gives every item's own gradient). Differentiable
    (create_graph) so the penalty trains D."""
    (grad,) = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return 0.5 * float(gamma) * grad.float().square().flatten(1).sum(1)


# --------------------------------------------------------------------------- lip crops
def mask_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) fractions of the lip box from a mask ``[..., H, W]`` (1 = keep; the first map is used):
    the rows where the centre column is generated, a square of that height centred horizontally.
    Raises ValueError when the centre column is never generated."""
    m = mask.reshape(-1, *mask.shape[-2:])[0] < 0.5
    h, w = m.shape
    rows = torch.nonzero(m[:, w // 2]).flatten()
    if rows.numel() == 0:
        raise ValueError("the mask's centre column has no generated pixel: pass the lip box as numbers")
    y0, y1 = float(rows.min()) / h, float(rows.max() + 1) / h
    half = (y1 - y0) / 2
    return (max(0.0, 0.5 - half), y0, min(1.0, 0.5 + half), y1)


def lip_crops(frames: torch.Tensor, box: Sequence[float], size: int = CROP) -> torch.Tensor:
    """``[B, 3, F, H, W]`` -> ``[B * F, 3, size, size]`` (frame-major within a sample): the box (fractions)
    cut and resized bilinearly (differentiable)."""
    if frames.dim() != 5:
        raise ValueError(f"frames must be [B, C, F, H, W], got {tuple(frames.shape)}")
    b, c, f, h, w = frames.shape
    x0, y0, x1, y1 = box
    r0, r1 = int(round(y0 * h)), max(int(round(y1 * h)), int(round(y0 * h)) + 1)
    c0, c1 = int(round(x0 * w)), max(int(round(x1 * w)), int(round(x0 * w)) + 1)
    crop = frames[:, :, :, r0:r1, c0:c1].transpose(1, 2).reshape(b * f, c, r1 - r0, c1 - c0)
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- discriminators
class PatchGAN(nn.Module):
    """pix2pix ``NLayerDiscriminator``: ``[N, C, H, W] -> [N, 1, H', W']`` patch logits. ``groups`` > 0: GroupNorm
    after the inner convs (pix2pix's BatchNorm, per item: items never interact, so R1 per item is exact); 0: none.
    Raises ValueError when a normalised conv's width is not a multiple of ``groups``."""

    def __init__(self, in_channels: int = 3, channels: int = 32, layers: int = 3, groups: int = GROUPS):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            if groups and out % groups:
                raise ValueError(f"PatchGAN: {out} channels (layer {i}) do not split into {groups} GroupNorm groups")
            seq.append(nn.Conv2d(ch, out, 4, 2 if i < layers else 1, 1))
            if groups:
                seq.append(nn.GroupNorm(groups, out))
            seq.append(nn.LeakyReLU(0.2))
            ch = out
        seq.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScalePatchGAN(nn.Module):
    """``scales`` PatchGANs, scale k seeing the input average-pooled k times (3x3, stride 2): ``[N, C, H, W] ->
    [logits_k [N, 1, h_k, w_k]]`` (pix2pixHD)."""

    def __init__(self, scales: int = 3, in_channels: int = 3, channels: int = 32, layers: int = 3,
                 groups: int = GROUPS):
        super().__init__()
        self.discriminators = nn.ModuleList(PatchGAN(in_channels, channels, layers, groups) for _ in range(scales))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, d in enumerate(self.discriminators):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


def _per_item(logits: list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return torch.stack([fn(x) for x in logits]).mean(0)  # mean over scales: [N]


def _per_sample(values: torch.Tensor, b: int) -> torch.Tensor:
    return values.reshape(b, -1).mean(1)  # [B * F] -> [B], mean over the sample's crops


class _Adversarial:
    """Shared hinge / R1 logic; subclasses give ``_inputs`` (D's input items [N, ...] and B) and ``_logits``."""

    input_name = "frames"

    def __init__(self, discriminator: nn.Module, r1_gamma: float = 0.0):
        if r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0, got {r1_gamma}")
        self.discriminator = discriminator
        self.r1_gamma = float(r1_gamma)

    def _inputs(self, x: torch.Tensor, context: dict) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def to(self, *args, **kwargs) -> _Adversarial:
        """Move (or cast) the discriminator (``torch.nn.Module.to`` arguments); returns self. A latent term's
        feature extractor is not moved: it wraps the frozen teacher, which lives where the recipe put it."""
        self.discriminator.to(*args, **kwargs)
        return self

    def _logits(self, items: torch.Tensor, context: dict) -> list[torch.Tensor]:
        out = self.discriminator(items)
        return out if isinstance(out, (list, tuple)) else [out]

    def generator_loss(self, fake: torch.Tensor, **context) -> torch.Tensor:
        """L_G per sample ``[B]``; D's parameters get no gradient (only the generated tensor does)."""
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        self.discriminator.requires_grad_(False)
        try:
            items, b = self._inputs(fake, context)
            return _per_sample(_per_item(self._logits(items, context), g_hinge), b)
        finally:
            for p, flag in zip(self.discriminator.parameters(), flags):
                p.requires_grad_(flag)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, **context) -> torch.Tensor:
        """L_D (+ R1 on the real items when ``r1_gamma`` > 0) per sample ``[B]``; ``fake`` is detached here."""
        real_items, b = self._inputs(real.detach(), context)
        fake_items, _ = self._inputs(fake.detach(), context)
        if self.r1_gamma:
            real_items = real_items.detach().requires_grad_(True)
        with torch.set_grad_enabled(torch.is_grad_enabled() or bool(self.r1_gamma)):  # R1 needs grad
            real_logits = self._logits(real_items, context)
            fake_logits = self._logits(fake_items, context)
            loss = _per_item(list(zip(real_logits, fake_logits)), lambda rf: d_hinge(*rf))
            if self.r1_gamma:
                scores = torch.stack([x.float().flatten(1).mean(1) for x in real_logits]).sum(0)  # [N]
                loss = loss + r1_penalty(scores, real_items, self.r1_gamma)
        return _per_sample(loss, b)


class LipAdversarial(_Adversarial):
    """The lip-region PatchGAN: ``(frames [B, 3, F, H, W] in [-1, 1], mask=None) -> [B]`` generator hinge.

    Args:
        discriminator: ``[N, 3, crop, crop] -> [logits]`` (default: ``MultiScalePatchGAN(3 scales, 32 channels)``).
        box: the lip box (x0, y0, x1, y1) as fractions of the face; None = from ``mask`` (``mask_box``).
        crop: crop size (96).
        r1_gamma: weight of the R1 penalty on real crops (0 = off).
    """

    input_name = "frames"

    def __init__(self, discriminator: nn.Module | None = None, box: Sequence[float] | None = None,
                 crop: int = CROP, r1_gamma: float = 0.0):
        super().__init__(discriminator if discriminator is not None else MultiScalePatchGAN(), r1_gamma)
        self.box = None if box is None else tuple(float(v) for v in box)
        self.crop = int(crop)

    def _box(self, mask: torch.Tensor | None) -> tuple[float, ...]:
        if self.box is not None:
            return self.box
        if mask is None:
            raise ValueError("LipAdversarial without a box needs the mask tensor (1 = keep)")
        return mask_box(mask)

    def _inputs(self, x: torch.Tensor, context: dict) -> tuple[torch.Tensor, int]:
        return lip_crops(x, self._box(context.get("mask")), self.crop), x.shape[0]

    def __call__(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator_loss(frames, mask=mask)

    def __repr__(self) -> str:
        return f"LipAdversarial(box={self.box}, crop={self.crop}, r1_gamma={self.r1_gamma})"


class LatentAdversarial(_Adversarial):
    """Discriminator heads on a frozen feature extractor: ``(x0 [B, 4, F, h, w], **context) -> [B]``.

    Args:
        channels: channel count of each feature map the extractor returns (one head per map).
        features: ``features(x [B, C, F, h, w], **context) -> [maps [B, C_k, F, h_k, w_k]]``, frozen, differentiable
            in x (gradients reach x0 through it); may be set after construction (``.features = ...``).
        hidden: width of each head (conv3x3 -> LeakyReLU -> conv1x1 -> 1 logit map).
        r1_gamma: R1 on the real latents (through the extractor).
    Context keywords (``mask``, ``masked_latents``, ``ref_latents``, ``audio_embeds``) go to the extractor.
    """

    input_name = "x0"

    def __init__(self, channels: Sequence[int], features: Callable[..., list[torch.Tensor]] | None = None,
                 hidden: int = 64, r1_gamma: float = 0.0):
        heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(int(c), hidden, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, 1, 1))
            for c in channels
        )
        super().__init__(heads, r1_gamma)
        self.features = features

    def _inputs(self, x: torch.Tensor, context: dict) -> tuple[torch.Tensor, int]:
        return x, x.shape[0]

    def _logits(self, items: torch.Tensor, context: dict) -> list[torch.Tensor]:
        if self.features is None:
            raise ValueError("LatentAdversarial has no feature extractor: set .features (distill.step.UNetFeatures)")
        maps = self.features(items, **{k: v for k, v in context.items() if v is not None})
        if len(maps) != len(self.discriminator):
            raise ValueError(f"the extractor gave {len(maps)} feature maps for {len(self.discriminator)} heads")
        out = []
        for head, m in zip(self.discriminator, maps):
            b, c, f, h, w = m.shape  # per frame: [B * F, C, h, w], frame-major within a sample
            out.append(head(m.transpose(1, 2).reshape(b * f, c, h, w)).reshape(b, -1))
        return out

    def __call__(self, x0: torch.Tensor, mask: torch.Tensor | None = None, masked_latents: torch.Tensor | None = None,
                 ref_latents: torch.Tensor | None = None, audio_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator_loss(x0, mask=mask, masked_latents=masked_latents, ref_latents=ref_latents,
                                   audio_embeds=audio_embeds)  # fmt: skip

    def __repr__(self) -> str:
        return f"LatentAdversarial(heads={len(self.discriminator)}, r1_gamma={self.r1_gamma})"
