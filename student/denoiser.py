"""The student's denoiser: the raw network wrapped with its boundary scalings (STYLE 1).

In the k-diffusion ``Denoiser`` / EDM ``EDMPrecond`` manner, ``StudentDenoiser`` owns everything
between the network's eps and the consistency function's x0 (LCM eq. 9):

    x0 = c_skip(t) x_t + c_out(t) predict_x0(net(cat[x_t, cond], t, audio, w), x_t, t)

with c_skip, c_out from ``student.consistency.boundary_scalings`` (sigma_data, timestep_scaling),
alpha_bar from the teacher's scheduler config, and the guidance input w (LatentSync's s, folded
into the student through its guidance embedding). Training (``distill.step.distill_step``),
sampling (``student.sampler.sample_lcm``), the benchmark and the streaming engine all call it;
its ``DenoiserSettings`` are saved with the export, so no sampler falls back to defaults that
differ from training. The teacher's counterpart is ``teacher.sampler.GuidedTeacher``: both are
called as ``(x_t, t, cond, audio_embeds, w)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from student.consistency import SIGMA_DATA, TIMESTEP_SCALING, consistency_x0
from teacher.conditioning import unet_input
from teacher.sampler import OFFICIAL_SCHEDULER_CONFIG, alphas_cumprod


@dataclass(frozen=True)
class DenoiserSettings:
    """What the consistency function depends on besides the weights (saved as ``config.json["denoiser"]``).

    sigma_data, timestep_scaling: the boundary scalings (LCM; 0.5 and 10 in diffusers' LCD script).
    num_train_timesteps, num_ddim_timesteps: the solver grid the student was distilled on (1000, 50),
        from which LCMScheduler's inference timesteps are taken.
    scheduler: the teacher's DDIM scheduler config (alpha_bar).
    """

    sigma_data: float = SIGMA_DATA
    timestep_scaling: float = TIMESTEP_SCALING
    num_train_timesteps: int = 1000
    num_ddim_timesteps: int = 50
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_SCHEDULER_CONFIG))

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> DenoiserSettings:
        """From a distillation config (``cfg.distill``) or a saved ``denoiser`` section; missing keys take
        the defaults, unknown keys are ignored (a distillation config holds many more)."""
        cfg = {} if cfg is None else dict(cfg)
        defaults = cls()
        kw = {k: type(getattr(defaults, k))(cfg[k]) for k in ("sigma_data", "timestep_scaling",
              "num_train_timesteps", "num_ddim_timesteps") if cfg.get(k) is not None}  # fmt: skip
        if cfg.get("scheduler") is not None:
            kw["scheduler"] = dict(cfg["scheduler"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StudentDenoiser:
    """``StudentDenoiser(net, settings)(x_t, t, cond, audio_embeds, w) -> x0`` (LCM eq. 9).

    net: ``net(sample [B, 13, F, h, w], t, audio_embeds [B, F, 50, 384], w) -> eps`` (a ``StudentUNet``,
        or its accelerate / DeepSpeed wrapper in training, so gradients flow through it).
    x_t: [B, 4, F, h, w]; t: 0-d or [B] integer timesteps; cond: [B, 9, F, h, w]
        (``teacher.conditioning.condition_channels``); w: float or [B] guidance scale s.
    alphas_cumprod: alpha_bar [T]; default: from ``settings.scheduler``.
    """

    def __init__(
        self, net: Callable, settings: DenoiserSettings | None = None, alphas_cumprod: torch.Tensor | None = None
    ):
        self.net = net
        self.settings = settings or DenoiserSettings()
        self.alphas_cumprod = alphas_cumprod if alphas_cumprod is not None else _alphas(self.settings)

    @classmethod
    def from_student(cls, net) -> StudentDenoiser:
        """The denoiser of a ``StudentUNet`` with the settings it carries (from its export or its training config)."""
        settings = getattr(net, "denoiser_settings", None)
        if settings is None:
            raise TypeError(f"{type(net).__name__} carries no denoiser settings; build StudentDenoiser(net, settings)")
        return cls(net, settings)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, audio_embeds: torch.Tensor, w
            ) -> torch.Tensor:  # fmt: skip
        """The raw network's eps [B, 4, F, h, w]."""
        return self.net(unet_input(x_t, cond), t, audio_embeds, w)

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, audio_embeds: torch.Tensor, w
    ) -> torch.Tensor:
        eps = self.eps(x_t, t, cond, audio_embeds, w)
        s = self.settings
        return consistency_x0(eps, x_t, t, self.alphas_cumprod, s.sigma_data, s.timestep_scaling)

    def to(self, device: torch.device | str) -> StudentDenoiser:
        """Moves the alpha_bar table (the network is moved by its owner)."""
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self


def as_denoiser(model) -> StudentDenoiser:
    """``model`` itself when it is a ``StudentDenoiser``; a ``StudentUNet`` with its own settings otherwise."""
    if isinstance(model, StudentDenoiser):
        return model
    return StudentDenoiser.from_student(model)


def _alphas(settings: DenoiserSettings) -> torch.Tensor:
    return alphas_cumprod(settings.scheduler)
