"""The teacher's guided DDIM sampler as pure functions.

Symbols follow the DDIM paper (Song et al. 2021) and LatentSync:
    alpha_bar_t   cumulative product of (1 - beta) at train timestep t
    x_t           noisy latent at t, eps the U-Net's noise prediction
    x0            predicted clean latent
    w             guidance scale: LatentSync's s, guided = uncond + s (cond - uncond); 1.5 official
                  (``OFFICIAL_W``), 1 = no guidance. diffusers' LCM scripts embed s - 1 instead.

The official scheduler is diffusers' ``DDIMScheduler`` with LatentSync's
configs/scheduler_config.json (``OFFICIAL_SCHEDULER_CONFIG``), eta = 0, 20 "leading" steps.
The formulas below (x0 prediction, DDIM step, guidance), the guided teacher call (``GuidedTeacher``,
the 2x batch with all-zero audio) and LatentSync's initial noise (``repeated_noise``) are defined
once here; student, distillation and inference code import them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler

# LatentSync configs/scheduler_config.json, minus its "_class_name" and the PNDM-only
# "skip_prk_steps" flag (meaningless for DDIM); prediction_type and timestep_spacing are the
# DDIMScheduler defaults the official pipeline runs with, written out.
OFFICIAL_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

# LatentSync's guidance scale s (its pipeline's ``guidance_scale`` default, configs/*.yaml); every
# default guidance in this project is this constant.
OFFICIAL_W = 1.5

_IGNORED_KEYS = {"skip_prk_steps"}
SPACINGS = ("leading", "trailing", "linspace")

Tensor = torch.Tensor
Alpha = float | Tensor


# --------------------------------------------------------------------------- schedule
def make_ddim_scheduler(config: Mapping[str, Any] | None = None, **overrides: Any) -> DDIMScheduler:
    """A ``DDIMScheduler`` from ``config`` (default: the official one) updated by ``overrides``.

    Keys starting with "_" and ``skip_prk_steps`` are dropped, so the raw official JSON loads.
    """
    merged = {**(OFFICIAL_SCHEDULER_CONFIG if config is None else config), **overrides}
    merged = {k: v for k, v in merged.items() if not k.startswith("_") and k not in _IGNORED_KEYS}
    allowed = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise ValueError(f"unknown DDIMScheduler config keys: {unknown}")
    return DDIMScheduler(**merged)


def alphas_cumprod(config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """alpha_bar_t for t = 0 .. T-1, float32 [T] (T = 1000 for the official config)."""
    return make_ddim_scheduler(config).alphas_cumprod.clone()


def ddim_timesteps(
    num_steps: int,
    spacing: str = "leading",
    num_train_timesteps: int = 1000,
    steps_offset: int = 1,
) -> torch.Tensor:
    """Descending inference timesteps, LongTensor [num_steps], as ``DDIMScheduler.set_timesteps``.

    leading:  (arange(N) * (T // N))[::-1] + steps_offset     (20 steps: 951, 901, ..., 1)
    trailing: round(arange(T, 0, -T / N)) - 1                 (4 steps: 999, 749, 499, 249)
    linspace: round(linspace(0, T - 1, N))[::-1]
    (Lin et al. 2024, "Common Diffusion Noise Schedules ...", Table 2; steps_offset only
    applies to "leading", as in diffusers.)
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    if spacing == "leading":
        t = (np.arange(num_steps) * (num_train_timesteps // num_steps)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        t = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)) - 1
    elif spacing == "linspace":
        t = np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1]
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return torch.from_numpy(t.astype(np.int64).copy())


# --------------------------------------------------------------------------- formulas
def _coef(alpha_bar: Alpha, like: torch.Tensor) -> Alpha:
    """A python float stays a float; a tensor moves to ``like``'s device."""
    return alpha_bar.to(like.device) if isinstance(alpha_bar, torch.Tensor) else float(alpha_bar)


def predict_x0(eps: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: Alpha) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)   (DDIM eq. 12, "predicted x0").

    eps, x_t: [B, C, F, h, w]; alpha_bar_t: float or tensor broadcastable to [B, 1, 1, 1, 1].
    """
    a_t = _coef(alpha_bar_t, x_t)
    x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return x0.to(x_t.dtype)


def ddim_step(
    eps: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: Alpha, alpha_bar_prev: Alpha
) -> torch.Tensor:
    """Deterministic DDIM update x_t -> x_prev (eta = 0, DDIM eq. 12):

        x_prev = sqrt(alpha_bar_prev) * x0 + sqrt(1 - alpha_bar_prev) * eps,
        x0 = predict_x0(eps, x_t, alpha_bar_t)

    eps, x_t: [B, C, F, h, w]; alpha_bars: floats or tensors broadcastable to [B, 1, 1, 1, 1].
    """
    x0 = predict_x0(eps, x_t, alpha_bar_t)
    a_prev = _coef(alpha_bar_prev, x_t)
    x_prev = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x_prev.to(x_t.dtype)


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: eps = eps_uncond + w * (eps_cond - eps_uncond).

    w is LatentSync's s (1.5 official); w = 1 gives eps_cond, w = 0 gives eps_uncond.
    A tensor w must broadcast to [B, 1, 1, 1, 1].
    """
    return eps_uncond + w * (eps_cond - eps_uncond)


# --------------------------------------------------------------------------- noise
def repeated_noise(
    shape, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, device="cpu"
) -> torch.Tensor:
    """One Gaussian noise frame repeated over the frames: ``[B, C, F, h, w]`` (an expanded view of one
    ``[B, C, 1, h, w]`` draw). LatentSync's initial noise: one frame for the whole video.
    """
    b, c, f, h, w = shape
    return torch.randn((b, c, 1, h, w), generator=generator, dtype=dtype, device=device).expand(-1, -1, f, -1, -1)


# --------------------------------------------------------------------------- the guided teacher
def _as_eps(out) -> torch.Tensor:
    """eps from a U-Net returning a tensor or an object with ``.sample``."""
    return out.sample if hasattr(out, "sample") else out


class GuidedTeacher:
    """The teacher U-Net under classifier-free guidance: ``GuidedTeacher(unet)(x_t, t, cond, audio, w) -> eps``.

    The one place the guided 2x batch is built: unconditional half first, with all-zero audio
    embeddings (LatentSync's unconditional branch; the teacher never saw audio dropout), then
    ``guided_eps``. w = 1 (a number) skips the unconditional half (its weight is 0).

    Args of the call: x_t [B, 4, F, h, w]; t a 0-d or [B] LongTensor; cond [B, 9, F, h, w]
    (``teacher.conditioning.condition_channels``); audio [B, F, 50, 384]; w a float or a [B] tensor.
    Stateless apart from the frozen network; the student's counterpart is ``student.StudentDenoiser``.
    """

    def __init__(self, unet: Callable):
        self.unet = unet

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, audio_embeds: torch.Tensor, w: float | Tensor
    ) -> torch.Tensor:
        sample = torch.cat([x_t, cond], dim=1)
        if not isinstance(w, torch.Tensor) and float(w) == 1.0:
            return _as_eps(self.unet(sample, t, audio_embeds))
        tt = torch.cat([t, t]) if t.ndim == 1 else t
        audio = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])  # uncond half first
        eps_uncond, eps_cond = _as_eps(self.unet(torch.cat([sample, sample]), tt, audio)).chunk(2)
        if isinstance(w, torch.Tensor):
            w = w.to(x_t.dtype).view(-1, 1, 1, 1, 1)
        return guided_eps(eps_uncond, eps_cond, w)


# --------------------------------------------------------------------------- sampler
def sample_ddim(
    unet: Callable,
    timesteps: Sequence[int] | torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor,
    masked_latents: torch.Tensor,
    ref_latents: torch.Tensor,
    audio_embeds: torch.Tensor,
    w: float | torch.Tensor = OFFICIAL_W,
    alphas_cumprod: torch.Tensor | None = None,
    final_alpha_cumprod: Alpha | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Guided DDIM (eta = 0) from x_T = ``noise`` along ``timesteps``; returns x0 latents [B, 4, F, h, w].

    Args:
        unet: called as ``unet(sample, t, audio_embeds)`` with sample = cat([x_t, mask,
            masked_latents, ref_latents], dim=1) [B', 13, F, h, w] and t a 0-d LongTensor;
            returns eps [B', 4, F, h, w] (a tensor, or an object with ``.sample``). Run through
            ``GuidedTeacher``.
        timesteps: descending train timesteps, e.g. ``ddim_timesteps(20)``.
        noise, masked_latents, ref_latents: [B, 4, F, h, w]; mask: [B, 1, F, h, w] (1 = keep).
        audio_embeds: [B, F, 50, 384] Whisper features.
        w: guidance scale s (float or [B]); 1.5 official. w = 1: one conditional call per step.
        alphas_cumprod: alpha_bar [T] (default: the official schedule).
        final_alpha_cumprod: alpha_bar after the last step (default alphas_cumprod[0], since
            the official config has set_alpha_to_one = false).

    Step i goes from t_i to t_{i+1} (the next entry of ``timesteps``). diffusers'
    ``DDIMScheduler.step`` instead goes to t_i - T // N, which is the same thing for every
    "leading" spacing and for "trailing" when N divides T (1, 2, 4, 5, 10, 20, ...).
    """
    from teacher.conditioning import check_condition_shapes, condition_channels

    check_condition_shapes(noise, mask, masked_latents, ref_latents, audio_embeds)
    ts = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1).to(noise.device)
    acp = make_ddim_scheduler().alphas_cumprod if alphas_cumprod is None else alphas_cumprod
    acp = acp.to(noise.device)
    a_final = acp[0] if final_alpha_cumprod is None else final_alpha_cumprod
    teacher = GuidedTeacher(unet)
    cond = condition_channels(mask, masked_latents, ref_latents, noise.dtype)  # [B, 9, F, h, w]

    steps = range(len(ts))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="DDIM", total=len(ts))
    x_t = noise
    for i in steps:
        t = ts[i]
        eps = teacher(x_t, t, cond, audio_embeds, w)
        a_prev = acp[ts[i + 1]] if i + 1 < len(ts) else a_final
        x_t = ddim_step(eps, x_t, acp[t], a_prev)
    return x_t
