"""Consistency-model parameterisation of the student (LCM, Luo et al. 2023; Song et al. 2023).

Symbols:
    t             train timestep (0 .. T-1), alpha_bar_t from the teacher's schedule
    c_skip, c_out boundary scalings, c_skip(0) = 1 and c_out(0) = 0 so that f(x_0, 0) = x_0
    sigma_data    0.5; timestep_scaling 10 (diffusers' LCMScheduler and LCD script)
    k             solver skip: the DDIM solver walks 50 of the 1000 timesteps, k = 20

The x0 prediction comes from ``teacher.sampler.predict_x0``; nothing here redefines it.
"""

from __future__ import annotations

import numpy as np
import torch

from teacher.sampler import predict_x0

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def boundary_scalings(
    t: torch.Tensor | float | int, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at timestep t (LCM eq. 7 with the discrete-time scaling of LCMScheduler):

        c_skip = sd^2 / ((s t)^2 + sd^2),   c_out = s t / sqrt((s t)^2 + sd^2),   s = timestep_scaling

    t: scalar or [B] (integer timesteps are converted to float32). Returns tensors shaped like t.
    """
    t = torch.as_tensor(t)
    t = t if t.is_floating_point() else t.float()
    st = timestep_scaling * t
    c_skip = sigma_data**2 / (st**2 + sigma_data**2)
    c_out = st / (st**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] tensor -> broadcastable to ``like`` [B, C, F, h, w], on its device and dtype."""
    v = v.to(device=like.device, dtype=like.dtype)
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() == 1 else v


def consistency_x0(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    sigma_data: float = SIGMA_DATA,
    timestep_scaling: float = TIMESTEP_SCALING,
) -> torch.Tensor:
    """The consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0_pred(eps, x_t, t)   (LCM eq. 9).

    eps, x_t: [B, 4, F, h, w]; t: int, 0-d or [B] integer timesteps; alphas_cumprod: alpha_bar [T].
    Returns x0 [B, 4, F, h, w] in x_t's dtype.
    """
    t = torch.as_tensor(t, device=alphas_cumprod.device, dtype=torch.long)
    alpha_bar_t = _per_sample(alphas_cumprod[t], x_t)
    c_skip, c_out = boundary_scalings(t, sigma_data, timestep_scaling)
    x0_pred = predict_x0(eps, x_t, alpha_bar_t)
    return (_per_sample(c_skip, x_t) * x_t + _per_sample(c_out, x_t) * x0_pred).to(x_t.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar_t: float | torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x0): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise   (DDPM eq. 4).

    x0, noise: [B, C, F, h, w]; alpha_bar_t: float, 0-d or [B] tensor.
    """
    a = torch.as_tensor(alpha_bar_t)
    a = _per_sample(a, x0) if a.dim() == 1 else a.to(device=x0.device, dtype=x0.dtype)
    return (a**0.5 * x0 + (1 - a) ** 0.5 * noise).to(x0.dtype)


def solver_timesteps(num_train: int = 1000, num_ddim: int = 50) -> torch.Tensor:
    """The DDIM solver grid t_{n+k}, ascending LongTensor [num_ddim] (diffusers' ``DDIMSolver``):

        round(arange(1, N + 1) * (T // N)) - 1        (T = 1000, N = 50: 19, 39, ..., 999)
    """
    grid = (np.arange(1, num_ddim + 1) * (num_train // num_ddim)).round() - 1
    return torch.from_numpy(grid.astype(np.int64))


def solver_pairs(num_train: int = 1000, num_ddim: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The LCD pairing (t_{n+k} -> t_n), two LongTensors [num_ddim]: t_n = max(t_{n+k} - k, 0), k = T // N.

    The first pair is 19 -> 0 (the LCD script clamps 19 - 20 to 0, and the solver's previous
    alpha_bar there is alpha_bar[0]), then 39 -> 19, ..., 999 -> 979.
    """
    start = solver_timesteps(num_train, num_ddim)
    return start, (start - num_train // num_ddim).clamp(min=0)
