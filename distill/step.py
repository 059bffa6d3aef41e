"""One latent consistency distillation (LCD) step as a function, plus the target network's update.

LCM (Luo et al. 2023) Algorithm 1 with the teacher's guided DDIM solver, as diffusers' LCD
script does it, for LatentSync's video U-Net:

    n ~ U{0, ..., N-1};  t = t_{n+k} (solver grid 19, 39, ..., 999),  s = t_n = max(t - k, 0)
    x_t  = sqrt(alpha_bar_t) x0_real + sqrt(1 - alpha_bar_t) eps          eps from ``noise`` mode
    w    ~ U[w_min, w_max]                                                guidance scale s of LatentSync
    x_s  = DDIM(x_t -> s, eps_u + w (eps_c - eps_u))                      frozen teacher, 2B batch
    L    = d(f_student(x_t, t, w), f_target(x_s, s, w))                   d = ``losses.consistency``
    loss = mean_B(L + sum_j weight_j * aux_j(x0_student, ...))

Optional trajectory anchor (``weights.anchor`` > 0; off by default, not part of LCD): the first
``anchor.samples`` items of the batch take n = N-1 (t = 999, where the 1-step student works) and
their student x0 is also pulled, with the same distance d, toward the guided teacher's own
``anchor.steps``-step trailing DDIM run from that x_t (guidance w of the sample). The consistency
target reaches t = 999 only through N bootstrapped jumps; the anchor gives the endpoint a direct
teacher target at the cost of ``anchor.steps`` guided teacher calls on those items.

The losses live in ``losses/`` and are built once from the config by ``build_losses`` (the recipe
keeps the result and passes it to every step). Each auxiliary loss is a callable of tensors returning
[B], fed by keyword from the step's tensors: ``x0`` (the student's x0 latents [B, 4, F, h, w]),
``x0_frames`` (x0 decoded once by ``decode``, [B, 3, F, H, W] in [-1, 1], only when some loss takes
it) and every key of the batch (``latents``, ``mask``, ``audio_embeds``, real ``frames`` when the data
gives them, ...). A loss parameter takes the tensor of the same name unless ``inputs`` maps it to
another (``{frames: x0_frames}``).

Pixel terms on the 1-step x0 (``pixel_items: one_step``): the terms that take ``x0_frames`` then see only the
items drawn at t = t_max = 999 (the first ``anchor.samples`` items are drawn there even with anchor weight 0),
i.e. the student's 1-step x0 from pure noise, the output a 1-step student serves; only those items are
decoded, their batch tensors are sliced to match, and the other items' values are 0. ``all`` (default): every
item, at its own t.

Adversarial terms (an aux loss with a ``discriminator_loss`` method, ``losses.adversarial``): the term is the
generator loss; the step also computes the discriminator's loss on the real tensor named by the node's
``real`` (``frames`` for the lip PatchGAN, ``latents`` for the latent variant) and the detached generated one,
returned as the differentiable ``disc_loss`` for the recipe's discriminator optimizer. The latent variant's
frozen feature extractor (``UNetFeatures`` on the teacher) is passed to ``build_losses``.

Step-dependent weights live in one place, ``step_weights(cfg, step)``: ``weights[name]`` is the final weight
and ``schedules[name] = {start, warmup}`` ramps it linearly from 0 at step ``start`` to the full weight at
``start + warmup`` (the adversarial generator weight's warm-up, the sync reward's schedule).

No accelerate, DeepSpeed or optimizer here: the recipe wraps this function.

Config keys (``cfg``, a mapping or DictConfig; missing keys take ``DEFAULTS``):
    num_train_timesteps, num_ddim_timesteps   solver grid (1000, 50 -> k = 20)
    noise, mixed_noise_alpha                   structure of eps over frames (see ``DEFAULT_NOISE``)
    w_min, w_max                               guidance-scale range, around the official 1.5
    consistency                                _target_ node of the distance d (default
                                               ``losses.consistency.PseudoHuber``, c = 0.001)
    sigma_data, timestep_scaling               boundary scalings (0.5, 10)
    aux: {name: {loss, inputs, real} or null}  auxiliary losses on the student's x0: ``loss`` a _target_
                                               node, ``inputs`` {loss parameter: step tensor} (optional;
                                               default: same name), ``real`` (adversarial terms only).
                                               ``recon``: the real-data ``losses.reconstruction.LatentReconstruction``
    weights: {name: weight}                    one weight per auxiliary term and ``anchor``
    schedules: {name: {start, warmup}}         linear ramps of those weights over optimizer steps
    pixel_items                                "all" or "one_step" (see above)
    anchor: {samples, steps}                   the optional trajectory anchor (see above)
    target, ema_decay                          ``make_target`` / ``ema_update``
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import configs
from student.consistency import SIGMA_DATA, TIMESTEP_SCALING, add_noise, solver_pairs
from student.denoiser import DenoiserSettings, StudentDenoiser
from student.sampler import video_noise
from teacher.conditioning import condition_channels
from teacher.sampler import GuidedTeacher, ddim_step, ddim_timesteps
from teacher.sampler import alphas_cumprod as official_alphas_cumprod

Batch = Mapping[str, torch.Tensor]
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Default noise for x_t: "mixed" (alpha 1), the teacher's own stage-2 training distribution.
# Why: (1) LCD trusts the teacher's one-step DDIM target only where the teacher is accurate,
# i.e. on inputs like those it was trained on -- mixed noise, frame correlation 0.5;
# "shared" (correlation 1) is its inference regime but an edge of its training data, and
# "per_frame" (correlation 0) is the other edge. (2) The student then faces exactly the
# teacher's own train/inference gap when it is sampled from one repeated noise frame, a gap
# known to work for the teacher. (3) Mixed noise contains both components, so the student
# learns to remove frame-shared and per-frame noise alike, whichever the sampler re-noises
# with. "shared" is the obvious alternative (inference-matched): measure both.
DEFAULT_NOISE = "mixed"

DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "num_ddim_timesteps": 50,
    "noise": DEFAULT_NOISE,
    "mixed_noise_alpha": 1.0,
    "w_min": 1.0,
    "w_max": 2.0,
    "consistency": {"_target_": "losses.consistency.PseudoHuber", "c": 0.001},
    "sigma_data": SIGMA_DATA,
    "timestep_scaling": TIMESTEP_SCALING,
    "aux": {},
    "weights": {"anchor": 0.0},
    "schedules": {},
    "pixel_items": "all",
    "anchor": {"samples": 1, "steps": 4},
    "target": "auto",
    "ema_decay": 0.95,
}


def _opt(cfg: Mapping[str, Any] | None, key: str) -> Any:
    return DEFAULTS[key] if cfg is None else cfg.get(key, DEFAULTS[key])


# --------------------------------------------------------------------------- losses, built once
STEP_TENSORS = ("x0", "x0_frames")  # the step's own tensor names; batch keys must not take them


@dataclass(frozen=True)
class AuxTerm:
    """An auxiliary loss and where its inputs come from: {loss parameter: step tensor name}."""

    loss: Callable[..., torch.Tensor]
    inputs: Mapping[str, str]
    required: tuple[str, ...]  # parameters without a default, and those ``inputs`` names
    real: str | None = None  # adversarial terms: the step tensor the discriminator sees as real

    @property
    def adversarial(self) -> bool:
        return hasattr(self.loss, "discriminator_loss")

    @classmethod
    def of(cls, loss: Callable[..., torch.Tensor], inputs: Mapping[str, str] | None = None,
           real: str | None = None) -> AuxTerm:  # fmt: skip
        """Read the parameters from ``loss``'s call signature (``forward`` for a module); ``inputs`` renames
        some of them to other step tensors, the rest take the tensor of their own name. A parameter with a
        default is passed only when its tensor exists, unless ``inputs`` names it: a named input is required (a
        config that asks for a tensor the step does not have fails instead of training without it); one that
        ``inputs`` maps to None is never passed (its default holds: a preset's optional input switched off by an
        override). ``real``: required for an adversarial loss (one with ``discriminator_loss``), refused for
        others. Raises TypeError when ``inputs`` names no parameter or maps a parameter without a default to None."""
        if hasattr(loss, "discriminator_loss") != (real is not None):
            raise ValueError(f"{loss!r}: an adversarial loss needs `real` (the real step tensor), others take none")
        params = list(inspect.signature(loss.forward if isinstance(loss, nn.Module) else loss).parameters.values())
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) for p in params):
            raise TypeError(f"auxiliary loss {loss!r} must name its inputs (no *args, **kwargs or positional-only)")
        renamed = dict(inputs or {})
        unknown = sorted(set(renamed) - {p.name for p in params})
        if unknown:
            raise TypeError(f"inputs {unknown} are not parameters of {loss!r} ({[p.name for p in params]})")
        off = {p.name for p in params if p.name in renamed and renamed[p.name] is None}
        no_default = sorted(p.name for p in params if p.name in off and p.default is p.empty)
        if no_default:
            raise TypeError(f"inputs {no_default} of {loss!r} have no default and cannot be switched off (None)")
        params = [p for p in params if p.name not in off]
        mapping = {p.name: str(renamed.get(p.name, p.name)) for p in params}
        return cls(loss, mapping, tuple(p.name for p in params if p.default is p.empty or p.name in renamed), real)


@dataclass(frozen=True)
class StepLosses:
    """What ``distill_step`` computes: the consistency distance d(a, b) -> [B] and {name: AuxTerm}."""

    consistency: Distance
    aux: Mapping[str, AuxTerm] = field(default_factory=dict)

    @property
    def discriminators(self) -> dict[str, nn.Module]:
        """{name: trainable discriminator module} of the adversarial terms (the recipe's second optimizer)."""
        return {name: term.loss.discriminator for name, term in self.aux.items() if term.adversarial}

    def to(self, device: str | torch.device) -> StepLosses:
        """Move every loss that holds a network (its ``to``: a SyncNet, LPIPS, a VideoMAE, a discriminator) to
        ``device``, where the step's tensors are; returns self. Losses without a ``to`` hold no tensors."""
        for loss in (self.consistency, *(term.loss for term in self.aux.values())):
            if callable(getattr(loss, "to", None)):
                loss.to(device)
        return self


def build_losses(cfg: Mapping[str, Any] | None, feature_unet: nn.Module | None = None) -> StepLosses:
    """Build ``cfg.consistency`` and the ``loss`` of every non-null ``cfg.aux`` entry with
    ``configs.instantiate``, once. An entry's ``features`` node ({blocks, t}) gives a latent adversarial loss its
    extractor, ``UNetFeatures(feature_unet, ...)`` (the frozen teacher). Raises ValueError for an aux entry without
    a ``loss`` node, or with ``features`` but no ``feature_unet``."""
    consistency = configs.instantiate(_opt(cfg, "consistency"))
    aux = {}
    for name, node in (_opt(cfg, "aux") or {}).items():
        if node is None:
            continue
        if not isinstance(node, Mapping) or "loss" not in node:
            raise ValueError(f"cfg.aux.{name} must be {{loss: <_target_ node>, inputs: {{...}}}}, got {node!r}")
        loss = configs.instantiate(node["loss"])
        if node.get("features") is not None:
            if feature_unet is None:
                raise ValueError(f"cfg.aux.{name}.features needs the frozen U-Net (build_losses(cfg, feature_unet))")
            loss.features = UNetFeatures(feature_unet, **dict(node["features"]))
        aux[str(name)] = AuxTerm.of(loss, node.get("inputs"), node.get("real"))
    return StepLosses(consistency, aux)


def step_weights(cfg: Mapping[str, Any] | None, step: int | None = None) -> dict[str, float]:
    """{name: weight} at optimizer step ``step`` (None = the final weights): ``weights[name]`` ramped by
    ``schedules[name] = {start, warmup}`` as w * clip((step - start) / warmup, 0, 1) (a step at ``start`` when
    warmup is 0). The one home of every step-dependent loss weight. Raises KeyError for a schedule without a
    weight."""
    weights = {k: float(v) for k, v in dict(DEFAULTS["weights"], **dict(_opt(cfg, "weights") or {})).items()}
    for name, sched in dict(_opt(cfg, "schedules") or {}).items():
        if name not in weights:
            raise KeyError(f"cfg.schedules.{name} has no weight in cfg.weights")
        if step is None or sched is None:
            continue
        start, warmup = int(sched.get("start", 0)), int(sched.get("warmup", 0))
        ramp = float(step >= start) if warmup <= 0 else min(1.0, max(0.0, (step - start) / warmup))
        weights[name] *= ramp
    return weights


class UNetFeatures:
    """Frozen U-Net encoder features of latents (the latent adversarial loss's extractor, LADD-style).

    ``(x [B, 4, F, h, w], mask, masked_latents, ref_latents, audio_embeds=None) -> [maps [B, C_k, F, h_k, w_k]]``:
    the U-Net's input channels cat([x, mask, masked, ref]) at timestep ``t`` through ``conv_in`` and the down
    blocks, the outputs of the down blocks listed in ``blocks`` (``mid``: also the mid block's). Differentiable in
    x; the U-Net must be frozen (``teacher.freeze``). ``channels`` lists C_k (the heads' input widths).
    """

    def __init__(self, unet: nn.Module, blocks: tuple[int, ...] | list[int] = (1, 2), t: int = 0, mid: bool = True):
        if any(p.requires_grad for p in unet.parameters()):
            raise ValueError("UNetFeatures needs a frozen U-Net (teacher.freeze)")
        self.unet, self.blocks, self.t, self.mid = unet, tuple(int(b) for b in blocks), int(t), bool(mid)
        widths = list(unet.config["block_out_channels"])
        self.channels = [widths[b] for b in self.blocks] + ([widths[-1]] if self.mid else [])

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, masked_latents: torch.Tensor, ref_latents: torch.Tensor,
                 audio_embeds: torch.Tensor | None = None) -> list[torch.Tensor]:  # fmt: skip
        unet = self.unet
        sample = torch.cat([x, condition_channels(mask, masked_latents, ref_latents, x.dtype)], dim=1)
        emb = unet.time_embed(torch.full((x.shape[0],), self.t, device=x.device), x.shape[0], x.device)
        audio = audio_embeds if unet.add_audio_layer else None
        h, out = unet.conv_in(sample), []
        for i, block in enumerate(unet.down_blocks):
            if i > max(self.blocks) and not self.mid:
                break
            h, _ = block.forward_down(h, emb, audio)
            if i in self.blocks:
                out.append(h)
        if self.mid:
            out.append(unet.mid_block(h, emb, audio))
        return out


# --------------------------------------------------------------------------- pieces of the step
def sample_guidance(
    batch_size: int, w_min: float, w_max: float, generator: torch.Generator | None = None, device="cpu"
) -> torch.Tensor:
    """w ~ U[w_min, w_max], float32 [B] on ``device`` (the generator's device when one is given)."""
    return w_min + (w_max - w_min) * torch.rand(batch_size, generator=generator, device=device)


def teacher_solver_step(
    teacher: nn.Module,
    x_t: torch.Tensor,
    cond: torch.Tensor,
    audio_embeds: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    w: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """One guided DDIM step of the frozen teacher, x_t -> x_s, no gradient.

    x_t [B, 4, F, h, w], cond = cat([mask, masked, ref]) [B, 9, F, h, w], audio [B, F, 50, 384],
    t, s [B] timesteps, w [B]. ``teacher.sampler.GuidedTeacher``: one 2B call, all-zero audio first.
    """
    with torch.no_grad():
        eps = GuidedTeacher(teacher)(x_t, t, cond, audio_embeds, w)
        a_t = alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        a_s = alphas_cumprod[s].view(-1, 1, 1, 1, 1)
        return ddim_step(eps, x_t, a_t, a_s)


def teacher_trajectory(
    teacher: nn.Module,
    x_t: torch.Tensor,
    cond: torch.Tensor,
    audio_embeds: torch.Tensor,
    t_start: int,
    steps: int,
    w: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The guided teacher's ``steps``-step trailing DDIM from x_t at ``t_start`` (= 999) to x0, per-sample
    guidance w [B], no gradient: ``teacher_solver_step`` down ``ddim_timesteps(steps, "trailing")``, then to
    alpha_bar_0 (as ``teacher.sampler.sample_ddim``).
    """
    ts = ddim_timesteps(steps, "trailing", num_train_timesteps=len(alphas_cumprod)).tolist()
    if ts[0] != t_start:
        raise ValueError(f"the trailing {steps}-step grid starts at {ts[0]}, the anchored x_t is at t = {t_start}")
    x, b = x_t, x_t.shape[0]
    for t_i, t_next in zip(ts, ts[1:] + [0]):
        t_now, t_to = (torch.full((b,), v, dtype=torch.long, device=x_t.device) for v in (t_i, t_next))
        x = teacher_solver_step(teacher, x, cond, audio_embeds, t_now, t_to, w, alphas_cumprod)
    return x


def _aux_terms(
    x0: torch.Tensor,
    batch: Batch,
    weights: Mapping[str, float],
    aux: Mapping[str, AuxTerm],
    decode: Callable[[torch.Tensor], torch.Tensor] | None,
    items: torch.Tensor | None = None,
) -> tuple[dict[str, tuple[float, torch.Tensor]], dict[str, torch.Tensor]]:
    """({name: (weight, value [B])}, {name: discriminator loss [k]}) for every auxiliary term; x0 is decoded
    once when a term takes ``x0_frames``. ``items``: indices of the items the pixel terms see (None = all);
    their values are scattered back to [B] (scaled by B / k, so the batch mean is the mean over those items)."""
    missing = [name for name in aux if name not in weights]
    if missing:
        raise KeyError(f"auxiliary loss(es) {missing} have no weight in cfg.weights")
    clash = [k for k in STEP_TENSORS if k in batch]
    if clash:
        raise ValueError(f"batch keys {clash} are the step's own tensor names")
    b = x0.shape[0]
    tensors: dict[str, torch.Tensor] = {**batch, "x0": x0}
    pixel = tensors
    frame_terms = [name for name, term in aux.items() if "x0_frames" in term.inputs.values()]
    if frame_terms:
        if decode is None:
            raise ValueError(f"auxiliary loss(es) {frame_terms} take x0_frames: pass decode (latents -> frames)")
        if items is not None:  # the 1-step items only, every per-item tensor sliced alike
            pixel = {k: v[items] if torch.is_tensor(v) and v.dim() and v.shape[0] == b else v
                     for k, v in tensors.items()}  # fmt: skip
        need_grad = torch.is_grad_enabled() and any(float(weights[name]) != 0.0 for name in frame_terms)
        with torch.set_grad_enabled(need_grad):
            pixel["x0_frames"] = decode(pixel["x0"])  # [k, 3, F, H, W], once for every pixel loss
    terms, disc = {}, {}
    for name, term in aux.items():
        src = pixel if "x0_frames" in term.inputs.values() else tensors
        absent = {k: term.inputs[k] for k in term.required if term.inputs[k] not in src}
        if absent:
            raise KeyError(f"auxiliary loss {name!r} takes {absent}, not among the step's tensors {sorted(src)}")
        weight = float(weights[name])
        kwargs = {k: src[v] for k, v in term.inputs.items() if v in src}
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0.0):  # weight 0: reported only
            value = term.loss(**kwargs)
        n = src["x0"].shape[0]
        if value.shape != (n,):
            raise ValueError(f"auxiliary loss {name!r} must return one value per sample [B], got {tuple(value.shape)}")
        if src is not tensors and items is not None:
            value = torch.zeros(b, device=value.device, dtype=value.dtype).index_copy(0, items, value * (b / n))
        terms[name] = (weight, value.float())
        if term.adversarial:
            if term.real not in src:
                raise KeyError(f"adversarial loss {name!r}: the real tensor {term.real!r} is not in the batch")
            fake = term.loss.input_name
            context = {k: v for k, v in kwargs.items() if k != fake}
            disc[name] = term.loss.discriminator_loss(real=src[term.real], fake=kwargs[fake].detach(), **context)
    return terms, disc


# --------------------------------------------------------------------------- the step
def distill_step(
    student: nn.Module,
    target: nn.Module,
    teacher: nn.Module,
    batch: Batch,
    cfg: Mapping[str, Any] | None = None,
    losses: StepLosses | None = None,
    generator: torch.Generator | None = None,
    alphas_cumprod: torch.Tensor | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    step: int | None = None,
) -> dict[str, torch.Tensor]:
    """The LCD loss on one batch; the caller runs backward and the optimizer, then ``ema_update``.

    Args:
        student: ``student(sample, t, audio, w) -> eps`` (trained; gradients flow).
        target: same call; EMA of the student, or the student itself (LoRA); run under no_grad.
        teacher: ``teacher(sample, t, audio) -> eps``, frozen (``teacher.freeze``).
        batch: ``latents`` [B, 4, F, h, w] clean VAE latents of the real frames, ``mask``
            [B, 1, F, h, w] (1 = keep), ``masked_latents`` and ``ref_latents`` [B, 4, F, h, w],
            ``audio_embeds`` [B, F, 50, 384].
        cfg: see the module docstring.
        losses: ``build_losses(cfg)``, built once by the caller (None: built here, for one-off calls).
            Each auxiliary term is weighted by ``cfg.weights[name]`` (weight 0: computed without
            gradient, reported only).
        generator: draws n, eps and w (on the generator's device).
        alphas_cumprod: alpha_bar [T] (default: the teacher's official schedule).
        decode: latents [B, 4, F, h, w] -> frames [B, 3, F, H, W] (the VAE decoder); needed only when
            an auxiliary loss takes ``x0_frames``.
        step: the optimizer step, for the weight schedules (``step_weights``; None = the final weights).

    Returns:
        ``loss`` (scalar, differentiable) and detached scalars: ``consistency``, one entry per
        auxiliary term (``recon``, ...) and its weight at this step (``recon_weight``), ``t_mean`` and ``w_mean``.
        With adversarial terms also ``{name}_disc`` (detached) and ``disc_loss`` (scalar, differentiable in the
        discriminators only: the real tensor and the detached x0 go in): the caller's discriminator update.
    """
    if any(p.requires_grad for p in teacher.parameters()):
        raise ValueError("the teacher must be frozen (teacher.freeze) before distillation")
    losses = build_losses(cfg) if losses is None else losses
    latents = batch["latents"]
    b, dev = latents.shape[0], latents.device
    acp = (official_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).to(dev)
    settings = DenoiserSettings.from_mapping({k: _opt(cfg, k) for k in ("sigma_data", "timestep_scaling")})
    f_student, f_target = StudentDenoiser(student, settings, acp), StudentDenoiser(target, settings, acp)

    # n ~ U{0..N-1}: t = t_{n+k}, s = t_n; x_t from the real latents
    gdev = generator.device if generator is not None else dev  # random draws live on the generator's device
    grid_t, grid_s = solver_pairs(int(_opt(cfg, "num_train_timesteps")), int(_opt(cfg, "num_ddim_timesteps")))
    n = torch.randint(0, len(grid_t), (b,), generator=generator, device=gdev).cpu()
    weights = step_weights(cfg, step)
    anchor_weight = weights["anchor"]
    anchor_cfg = dict(DEFAULTS["anchor"], **dict(_opt(cfg, "anchor") or {}))
    n_anchor = min(int(anchor_cfg["samples"]), b) if anchor_weight != 0.0 else 0
    pixel_items = _opt(cfg, "pixel_items")
    if pixel_items not in ("all", "one_step") or (pixel_items == "one_step" and int(anchor_cfg["samples"]) < 1):
        raise ValueError(f"pixel_items must be 'all' or 'one_step' (with anchor.samples >= 1), got {pixel_items!r}")
    n_max = max(n_anchor, min(int(anchor_cfg["samples"]), b)) if pixel_items == "one_step" else n_anchor
    n[:n_max] = len(grid_t) - 1  # t = t_max (999) for the anchored / 1-step items
    items = torch.nonzero(n == len(grid_t) - 1).flatten().to(dev) if pixel_items == "one_step" else None
    t, s = grid_t[n].to(dev), grid_s[n].to(dev)
    eps = video_noise(latents.shape, _opt(cfg, "noise"), generator, float(_opt(cfg, "mixed_noise_alpha")), device=gdev)
    x_t = add_noise(latents, eps.to(device=dev, dtype=latents.dtype), acp[t])
    w = sample_guidance(b, float(_opt(cfg, "w_min")), float(_opt(cfg, "w_max")), generator, gdev).to(dev)
    cond = condition_channels(batch["mask"], batch["masked_latents"], batch["ref_latents"], latents.dtype)
    audio = batch["audio_embeds"]

    # student: f(x_t, t, w), with gradient
    x0_student = f_student(x_t, t, cond, audio, w)

    # teacher: x_t -> x_s (guided DDIM); target: f(x_s, s, w); no gradient
    x_s = teacher_solver_step(teacher, x_t, cond, audio, t, s, w, acp)
    with torch.no_grad():
        x0_target = f_target(x_s, s, cond, audio, w)

    per_sample = losses.consistency(x0_student, x0_target)  # [B]
    out: dict[str, torch.Tensor] = {"consistency": per_sample.detach().mean()}
    total = per_sample
    if n_anchor:
        x0_anchor = teacher_trajectory(teacher, x_t[:n_anchor], cond[:n_anchor], audio[:n_anchor], int(t[0]),
                                       int(anchor_cfg["steps"]), w[:n_anchor], acp)  # fmt: skip
        anchor = torch.zeros_like(per_sample)
        anchor[:n_anchor] = losses.consistency(x0_student[:n_anchor], x0_anchor)
        out["anchor"] = anchor[:n_anchor].detach().mean()
        total = total + anchor_weight * anchor
    terms, disc = _aux_terms(x0_student, batch, weights, losses.aux, decode, items)
    for name, (weight, value) in terms.items():
        out[name] = value.detach().mean()
        out[f"{name}_weight"] = torch.tensor(weight)
        if weight != 0.0:
            total = total + weight * value
    if disc:
        for name, value in disc.items():
            out[f"{name}_disc"] = value.detach().mean()
        out["disc_loss"] = torch.stack([value.mean() for value in disc.values()]).sum()  # differentiable in D only
    out["loss"] = total.mean()
    out["t_mean"] = t.float().mean()
    out["w_mean"] = w.mean()
    return out


# --------------------------------------------------------------------------- target network
def make_target(student: nn.Module, cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """The target network named by ``cfg.target``: "ema" = a frozen deep copy of the student (full
    training), "online" = the student itself, used under no_grad (LoRA, as diffusers' LCM-LoRA),
    "auto" (default) = "online" for a LoRA student, else "ema".
    """
    kind = _opt(cfg, "target")
    if kind == "auto":
        kind = "online" if getattr(student, "has_lora", False) else "ema"
    if kind == "online":
        return student
    if kind == "ema":
        return copy.deepcopy(student).requires_grad_(False)
    raise ValueError(f"target must be 'auto', 'ema' or 'online', got {kind!r}")


@torch.no_grad()
def ema_update(target: nn.Module, student: nn.Module, decay: float) -> None:
    """theta_target <- decay * theta_target + (1 - decay) * theta_student, for every parameter
    (LCM eq. 10; decay 0.95 in LCD). A no-op when the target is the student (online target).
    """
    if target is student:
        return
    t_params, s_params = dict(target.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("target and student have different parameters")
    for name, p in t_params.items():
        p.lerp_(s_params[name].detach().to(p.dtype), 1.0 - decay)
