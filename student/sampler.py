"""Few-step consistency sampling (LCM multistep, Luo et al. 2023, Algorithm 3) as pure functions.

One student call per step and no classifier-free guidance branch: guidance is folded into the
student through its w input. Timesteps and the step rule follow diffusers' ``LCMScheduler``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from student.consistency import add_noise, solver_timesteps
from student.denoiser import StudentDenoiser, as_denoiser
from teacher.conditioning import check_condition_shapes, condition_channels
from teacher.sampler import OFFICIAL_W, repeated_noise
from teacher.sampler import alphas_cumprod as official_alphas_cumprod

NOISE_MODES = ("shared", "per_frame", "mixed")
DETERMINISTIC_RENOISE = ("initial", "ddim")


def video_noise(
    shape: Sequence[int],
    mode: str = "per_frame",
    generator: torch.Generator | None = None,
    mixed_alpha: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Unit-variance Gaussian noise [B, C, F, h, w] with a chosen structure over frames F:

        per_frame: independent per frame (plain LCM / DDPM)
        shared:    one noise frame repeated over F (LatentSync's inference noise, ``repeated_noise``)
        mixed:     sqrt(a^2 / (1 + a^2)) * shared + sqrt(1 / (1 + a^2)) * per_frame, a = mixed_alpha
                   (PYoCo mixed noise, Ge et al. 2023 eq. 4; LatentSync stage 2 uses a = 1, i.e.
                   frame-to-frame correlation a^2 / (1 + a^2) = 0.5)
    """
    b, c, f, h, w = shape
    kw = dict(generator=generator, dtype=dtype, device=device)
    if mode == "per_frame":
        return torch.randn((b, c, f, h, w), **kw)
    if mode == "shared":
        return repeated_noise((b, c, f, h, w), **kw).contiguous()
    if mode == "mixed":
        shared = torch.randn((b, c, 1, h, w), **kw)
        individual = torch.randn((b, c, f, h, w), **kw)
        a2 = mixed_alpha**2
        return (a2 / (1 + a2)) ** 0.5 * shared + (1 / (1 + a2)) ** 0.5 * individual
    raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")


def lcm_timesteps(num_steps: int, original_steps: int = 50, num_train: int = 1000) -> torch.Tensor:
    """Descending LongTensor [num_steps], as ``LCMScheduler.set_timesteps(num_steps)``:

    the solver grid reversed (999, 979, ..., 19), taken at indices floor(i * N_orig / num_steps).
    1 step: [999]; 2: [999, 499]; 4: [999, 759, 499, 259].
    """
    if not 1 <= num_steps <= original_steps:
        raise ValueError(f"num_steps must be in [1, {original_steps}], got {num_steps}")
    grid = solver_timesteps(num_train, original_steps).flip(0)
    idx = np.floor(np.linspace(0, len(grid), num=num_steps, endpoint=False)).astype(np.int64)
    return grid[torch.from_numpy(idx)]


def sample_lcm(
    denoiser: StudentDenoiser,
    timesteps: Sequence[int] | torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor,
    masked_latents: torch.Tensor,
    ref_latents: torch.Tensor,
    audio_embeds: torch.Tensor,
    w: float | torch.Tensor = OFFICIAL_W,
    generator: torch.Generator | None = None,
    renoise: str = "per_frame",
    mixed_alpha: float = 1.0,
) -> torch.Tensor:
    """LCM multistep sampling from x_{t_0} = ``noise``; returns x0 latents [B, 4, F, h, w].

    Args:
        denoiser: a ``student.StudentDenoiser`` (or a ``StudentUNet`` carrying its denoiser settings,
            as ``student.load`` returns it): ``denoiser(x_t, t, cond, audio, w) -> x0``; its settings
            (boundary scalings, alpha_bar) are the ones the student was distilled with.
        timesteps: descending train timesteps, e.g. ``lcm_timesteps(4)`` = [999, 759, 499, 259].
        noise, masked_latents, ref_latents: [B, 4, F, h, w]; mask [B, 1, F, h, w] (1 = keep).
        audio_embeds: [B, F, 50, 384]. w: guidance scale s fed to the student (float or [B]).
        generator: draws the fresh noise z of each re-noising step.
        renoise: where the re-noising z comes from.
            fresh noise, structured over frames like ``video_noise``: "per_frame" (LCMScheduler's
                rule exactly), "shared", "mixed" (with ``mixed_alpha``);
            deterministic (the output is a function of ``noise`` alone, like the teacher's DDIM):
                "initial"  z = ``noise``, the starting noise re-used at every step (LatentSync
                           infers from one fixed noise; re-noising with it keeps the student near
                           the probability-flow trajectory that starts there);
                "ddim"     z = the noise implied by the step's own prediction,
                           (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t), i.e. an eta = 0
                           DDIM jump on the student's x0 (equal to ``teacher.sampler.ddim_step``
                           where the boundary scaling c_skip is 0).

    At step i: x0 = denoiser(x_{t_i}, t_i); unless i is the last step,
    x_{t_{i+1}} = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) z at t_{i+1} (LCM Algorithm 3).
    """
    check_condition_shapes(noise, mask, masked_latents, ref_latents, audio_embeds)
    denoiser = as_denoiser(denoiser)
    cond = condition_channels(mask, masked_latents, ref_latents, noise.dtype)  # [B, 9, F, h, w]

    def x0_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(x_t, t.to(noise.device), cond, audio_embeds, w)

    return lcm_multistep(x0_fn, timesteps, noise, denoiser.alphas_cumprod, generator, renoise, mixed_alpha)


def lcm_multistep(
    x0_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    timesteps: Sequence[int] | torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    renoise: str = "per_frame",
    mixed_alpha: float = 1.0,
) -> torch.Tensor:
    """The LCM multistep loop for any consistency function ``x0_fn(x_t, t) -> x0`` (t a 0-d LongTensor).

    ``sample_lcm`` runs it on the student; ``distill.benchmark.oracle_method`` on the teacher's own
    probability-flow ODE (the consistency function a perfectly distilled student would be).
    Arguments as in ``sample_lcm``; returns the last x0 [B, 4, F, h, w].
    """
    if renoise not in NOISE_MODES + DETERMINISTIC_RENOISE:
        raise ValueError(f"renoise must be one of {NOISE_MODES + DETERMINISTIC_RENOISE}, got {renoise!r}")
    ts = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1)
    acp = official_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    x_t, x0 = noise, noise
    for i, t in enumerate(ts):
        x0 = x0_fn(x_t, t)
        if i + 1 < len(ts):
            if renoise == "initial":
                z = noise
            elif renoise == "ddim":
                a_t = acp[t].to(x_t.device, torch.float64)
                z = ((x_t.double() - a_t.sqrt() * x0.double()) / (1 - a_t).sqrt()).to(x0.dtype)
            else:
                z = video_noise(x0.shape, renoise, generator, mixed_alpha, dtype=x0.dtype, device=x0.device)
            x_t = add_noise(x0, z, acp[ts[i + 1]])
    return x0
