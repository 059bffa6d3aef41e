"""The few-step student: a copy of the teacher U-Net plus a guidance embedding (LCM's w-conditioning).

``student(sample [B,13,F,h,w], t, audio_embeds [B,F,50,384], w) -> eps [B,4,F,h,w]``

w is LatentSync's guidance scale s (guided = uncond + s * (cond - uncond), 1.5 official), fed
as is: embedding = Linear(sinusoid(1000 * w)), added to the time embedding through the U-Net's
``emb_offset`` hook. The Linear is zero-initialised, so at step 0 the student *is* the
teacher for every w. Training is either full fine-tuning or LoRA (peft) with the guidance
embedding trainable; ``merge_lora`` and ``student_state_for_export`` give a plain model.
peft is only imported when LoRA is used: ``from_export`` needs torch and diffusers alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from student.denoiser import DenoiserSettings
from teacher.unet import LatentSyncUNet, normalize_model_config

EXPORT_FORMAT = "turbosync.student/2"  # /2 adds the "denoiser" section
READABLE_FORMATS = ("turbosync.student/1", EXPORT_FORMAT)  # /1 exports take DenoiserSettings' defaults
W_SCALE = 1000.0  # diffusers' LCM get_guidance_scale_embedding multiplies w by 1000 as well

# diffusers' LCM-LoRA recipe targets, in this U-Net's module names (attention incl. audio
# cross-attention and motion modules, feed-forwards, ResNet convs, resamplers, time projections).
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)  # fmt: skip


def guidance_sinusoid(w: torch.Tensor, dim: int, scale: float = W_SCALE) -> torch.Tensor:
    """w [B] -> [B, dim]: cat(sin(scale w f_i), cos(scale w f_i)), f_i = 10000^(-i / (dim/2 - 1))

    (the VDM / LCM guidance-scale embedding; diffusers' ``get_guidance_scale_embedding``).
    """
    return get_timestep_embedding(w.float() * scale, dim, flip_sin_to_cos=False, downscale_freq_shift=1)


class GuidanceEmbedding(nn.Module):
    """w [B] -> offset [B, out_dim] = Linear(guidance_sinusoid(w)); the Linear starts at zero."""

    def __init__(self, out_dim: int, embed_dim: int = 256, scale: float = W_SCALE):
        super().__init__()
        self.embed_dim, self.scale = embed_dim, scale
        self.linear = nn.Linear(embed_dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        emb = guidance_sinusoid(w, self.embed_dim, self.scale)
        return self.linear(emb.to(self.linear.weight.dtype))


class StudentUNet(nn.Module):
    """Teacher U-Net + guidance embedding. Build with ``from_teacher`` (training) or ``from_export``.

    ``denoiser_settings`` (``student.DenoiserSettings``): the boundary scalings and schedule the student
    is trained with and sampled with; saved in the export, read by ``student.StudentDenoiser.from_student``.
    """

    def __init__(
        self, unet: LatentSyncUNet, w_embed_dim: int = 256, w_scale: float = W_SCALE,
        denoiser_settings: DenoiserSettings | None = None,
    ):  # fmt: skip
        super().__init__()
        self.unet = unet
        self.denoiser_settings = denoiser_settings or DenoiserSettings()
        temb_dim = 4 * unet.config["block_out_channels"][0]
        self.guidance_embedding = GuidanceEmbedding(temb_dim, w_embed_dim, w_scale)
        self.lora_config: dict[str, Any] | None = None
        self.to(device=unet.device, dtype=unet.dtype)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_teacher(
        cls, teacher: LatentSyncUNet, lora: Mapping[str, Any] | None = None, w_embed_dim: int = 256,
        denoiser_settings: DenoiserSettings | None = None,
    ) -> StudentUNet:  # fmt: skip
        """A deep copy of ``teacher``'s weights + a zero guidance embedding.

        lora: None = full fine-tuning (every parameter trainable); a mapping with keys of
        ``add_lora`` (``rank``, ``alpha``, ``target_modules``, ``dropout``) = LoRA on the copy,
        base frozen, guidance embedding trainable. denoiser_settings: those of the distillation config.
        """
        student = cls(copy.deepcopy(teacher), w_embed_dim=w_embed_dim, denoiser_settings=denoiser_settings)
        student.train().requires_grad_(True)
        if lora is not None:
            student.add_lora(**dict(lora))
        return student

    def add_lora(
        self,
        rank: int = 64,
        alpha: float | None = None,
        target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        dropout: float = 0.0,
    ) -> StudentUNet:
        """Inject LoRA (peft) into the U-Net in place; trainable: LoRA A/B and the guidance embedding.

        alpha defaults to rank (scaling alpha / rank = 1). LoRA B starts at zero, so outputs do not change.
        """
        if self.lora_config is not None:
            raise RuntimeError("this student already has LoRA; merge_lora() first")
        from peft import LoraConfig, inject_adapter_in_model

        settings = dict(rank=int(rank), alpha=float(rank if alpha is None else alpha),
                        target_modules=list(target_modules), dropout=float(dropout))  # fmt: skip
        config = LoraConfig(
            r=settings["rank"], lora_alpha=settings["alpha"], target_modules=settings["target_modules"],
            lora_dropout=settings["dropout"], init_lora_weights=True,
        )  # fmt: skip
        inject_adapter_in_model(config, self.unet)
        for name, p in self.unet.named_parameters():
            p.requires_grad_("lora_" in name)
        self.guidance_embedding.requires_grad_(True)
        self.lora_config = settings
        return self

    @property
    def has_lora(self) -> bool:
        return self.lora_config is not None

    def merge_lora(self) -> StudentUNet:
        """A new plain ``StudentUNet`` with W + (alpha / r) B A folded into every adapted layer.

        ``self`` is left untouched; without LoRA this is a plain deep copy.
        """
        merged = copy.deepcopy(self)
        if not self.has_lora:
            return merged
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [(n, m) for n, m in merged.unet.named_modules() if isinstance(m, BaseTunerLayer)]
        with torch.no_grad():
            for name, layer in layers:
                layer.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(merged.unet.get_submodule(parent_name), child, layer.get_base_layer())
        merged.lora_config = None
        return merged.requires_grad_(True)

    # ------------------------------------------------------------------ export
    def export_config(self) -> dict[str, Any]:
        """JSON-ready config from which ``from_export`` rebuilds the architecture."""
        unet_cfg = {k: v for k, v in normalize_model_config(self.unet.config).items()}
        return {
            "format": EXPORT_FORMAT,
            "unet": _jsonable(unet_cfg),
            "w_embed_dim": self.guidance_embedding.embed_dim,
            "w_scale": self.guidance_embedding.scale,
            "denoiser": self.denoiser_settings.to_dict(),
        }

    @classmethod
    def from_export(cls, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StudentUNet:
        """Rebuild a plain student from ``student_state_for_export``'s (state, config); strict keys."""
        if config.get("format") not in READABLE_FORMATS:
            raise ValueError(f"not a {EXPORT_FORMAT} config (format={config.get('format')!r})")
        unet = LatentSyncUNet(**dict(config["unet"]))
        student = cls(unet, w_embed_dim=int(config["w_embed_dim"]), w_scale=float(config["w_scale"]),
                      denoiser_settings=DenoiserSettings.from_mapping(config.get("denoiser")))  # fmt: skip
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(dtypes) == 1:
            student.to(dtype=dtypes.pop())
        student.load_state_dict(dict(state), strict=True)
        return student.eval()

    # ------------------------------------------------------------------ forward
    @property
    def dtype(self) -> torch.dtype:
        return self.guidance_embedding.linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.guidance_embedding.linear.weight.device

    @property
    def config(self) -> dict[str, Any]:
        """The U-Net's config (same as the teacher's)."""
        return self.unet.config

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.unet.enable_gradient_checkpointing(enabled)

    def forward(
        self,
        sample: torch.Tensor,
        t: torch.Tensor | int,
        audio_embeds: torch.Tensor,
        w: torch.Tensor | float,
    ) -> torch.Tensor:
        """sample [B, 13, F, h, w], t scalar or [B], audio [B, F, 50, 384], w float or [B] -> eps [B, 4, F, h, w]."""
        b = sample.shape[0]
        w = torch.as_tensor(w, device=sample.device, dtype=torch.float32)
        w = w.reshape(-1).expand(b) if w.numel() == 1 else w.reshape(b)
        return self.unet(sample, t, audio_embeds, emb_offset=self.guidance_embedding(w))


def student_state_for_export(student: StudentUNet) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(flat state dict, config dict) of a plain student: LoRA merged, no peft or training modules.

    Tensors are detached copies; ``StudentUNet.from_export(state, config)`` inverts it.
    """
    plain = student.merge_lora() if student.has_lora else student
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    return state, plain.export_config()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
