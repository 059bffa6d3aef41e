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

No accelerate, DeepSpeed or optimizer here: the recipe wraps this function.

Config keys (``cfg``, a mapping or DictConfig; missing keys take ``DEFAULTS``):
    num_train_timesteps, num_ddim_timesteps   solver grid (1000, 50 -> k = 20)
    noise, mixed_noise_alpha                   structure of eps over frames (see ``DEFAULT_NOISE``)
    w_min, w_max                               guidance-scale range, around the official 1.5
    consistency                                _target_ node of the distance d (default
                                               ``losses.consistency.PseudoHuber``, c = 0.001)
    sigma_data, timestep_scaling               boundary scalings (0.5, 10)
    aux: {name: {loss, inputs} or null}        auxiliary losses on the student's x0: ``loss`` a _target_
                                               node, ``inputs`` {loss parameter: step tensor} (optional;
                                               default: same name). ``recon``: the real-data
                                               ``losses.reconstruction.LatentReconstruction``
    weights: {name: weight}                    one weight per auxiliary term and ``anchor``
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
    required: tuple[str, ...]  # parameters without a default

    @classmethod
    def of(cls, loss: Callable[..., torch.Tensor], inputs: Mapping[str, str] | None = None) -> AuxTerm:
        """Read the parameters from ``loss``'s call signature (``forward`` for a module); ``inputs`` renames
        some of them to other step tensors, the rest take the tensor of their own name."""
        params = list(inspect.signature(loss.forward if isinstance(loss, nn.Module) else loss).parameters.values())
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) for p in params):
            raise TypeError(f"auxiliary loss {loss!r} must name its inputs (no *args, **kwargs or positional-only)")
        renamed = dict(inputs or {})
        unknown = sorted(set(renamed) - {p.name for p in params})
        if unknown:
            raise TypeError(f"inputs {unknown} are not parameters of {loss!r} ({[p.name for p in params]})")
        mapping = {p.name: str(renamed.get(p.name, p.name)) for p in params}
        return cls(loss, mapping, tuple(p.name for p in params if p.default is p.empty))


@dataclass(frozen=True)
class StepLosses:
    """What ``distill_step`` computes: the consistency distance d(a, b) -> [B] and {name: AuxTerm}."""

    consistency: Distance
    aux: Mapping[str, AuxTerm] = field(default_factory=dict)


def build_losses(cfg: Mapping[str, Any] | None) -> StepLosses:
    """Build ``cfg.consistency`` and the ``loss`` of every non-null ``cfg.aux`` entry with
    ``configs.instantiate``, once. Raises ValueError for an aux entry without a ``loss`` node."""
    consistency = configs.instantiate(_opt(cfg, "consistency"))
    aux = {}
    for name, node in (_opt(cfg, "aux") or {}).items():
        if node is None:
            continue
        if not isinstance(node, Mapping) or "loss" not in node:
            raise ValueError(f"cfg.aux.{name} must be {{loss: <_target_ node>, inputs: {{...}}}}, got {node!r}")
        aux[str(name)] = AuxTerm.of(configs.instantiate(node["loss"]), node.get("inputs"))
    return StepLosses(consistency, aux)


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
    cfg: Mapping[str, Any] | None,
    aux: Mapping[str, AuxTerm],
    decode: Callable[[torch.Tensor], torch.Tensor] | None,
) -> dict[str, tuple[float, torch.Tensor]]:
    """{name: (weight, value [B])} for every auxiliary term; x0 is decoded once when a term takes ``x0_frames``."""
    weights = dict(DEFAULTS["weights"], **dict(_opt(cfg, "weights") or {}))
    missing = [name for name in aux if name not in weights]
    if missing:
        raise KeyError(f"auxiliary loss(es) {missing} have no weight in cfg.weights")
    clash = [k for k in STEP_TENSORS if k in batch]
    if clash:
        raise ValueError(f"batch keys {clash} are the step's own tensor names")
    tensors: dict[str, torch.Tensor] = {**batch, "x0": x0}
    frame_terms = [name for name, term in aux.items() if "x0_frames" in term.inputs.values()]
    if frame_terms:
        if decode is None:
            raise ValueError(f"auxiliary loss(es) {frame_terms} take x0_frames: pass decode (latents -> frames)")
        need_grad = torch.is_grad_enabled() and any(float(weights[name]) != 0.0 for name in frame_terms)
        with torch.set_grad_enabled(need_grad):
            tensors["x0_frames"] = decode(x0)  # [B, 3, F, H, W], once for every pixel loss
    terms = {}
    for name, term in aux.items():
        absent = {k: term.inputs[k] for k in term.required if term.inputs[k] not in tensors}
        if absent:
            raise KeyError(f"auxiliary loss {name!r} takes {absent}, not among the step's tensors {sorted(tensors)}")
        weight = float(weights[name])
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0.0):  # weight 0: reported only
            value = term.loss(**{k: tensors[src] for k, src in term.inputs.items() if src in tensors})
        if value.shape != (x0.shape[0],):
            raise ValueError(f"auxiliary loss {name!r} must return one value per sample [B], got {tuple(value.shape)}")
        terms[name] = (weight, value.float())
    return terms


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

    Returns:
        ``loss`` (scalar, differentiable) and detached scalars: ``consistency``, one entry per
        auxiliary term (``recon``, ...), ``t_mean`` and ``w_mean``.
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
    anchor_weight = float(dict(DEFAULTS["weights"], **dict(_opt(cfg, "weights") or {}))["anchor"])
    anchor_cfg = dict(DEFAULTS["anchor"], **dict(_opt(cfg, "anchor") or {}))
    n_anchor = min(int(anchor_cfg["samples"]), b) if anchor_weight != 0.0 else 0
    n[:n_anchor] = len(grid_t) - 1  # t = t_max (999) for the anchored items
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
    for name, (weight, value) in _aux_terms(x0_student, batch, cfg, losses.aux, decode).items():
        out[name] = value.detach().mean()
        if weight != 0.0:
            total = total + weight * value
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
