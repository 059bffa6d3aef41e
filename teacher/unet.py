"""LatentSync's audio-conditioned video U-Net (``UNet3DConditionModel``), re-implemented.

Input ``[B, 13, F, H, W]``: noisy latent (4), mask (1, 1 = keep), masked-frame latent (4),
reference latent (4). Audio ``[B, F, 50, 384]`` Whisper tokens per frame. Output: the
predicted noise ``[B, 4, F, H, W]``. The constructor takes the ``model:`` section of an
official LatentSync U-Net YAML verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from teacher.unet_blocks import InflatedConv3d, MidBlock3DCrossAttn, UNetStage, group_norm

# Every key the official ``UNet3DConditionModel.__init__`` accepts, with its default.
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "attention_head_dim": 8,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "use_inflated_groupnorm": False,
    "use_motion_module": False,
    "motion_module_resolutions": (1, 2, 4, 8),
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": None,
    "motion_module_kwargs": {},
    "add_audio_layer": False,
}

_DOWN_TYPES = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}
_UP_TYPES = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}


def normalize_model_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Official ``model:`` mapping -> complete, validated keyword dict (defaults filled in).

    Raises ``ValueError`` naming unknown keys and settings this re-implementation does not
    support (the official code does not support them either, or ignores them).
    """
    cfg = {k: _plain(v) for k, v in dict(model_config).items()}
    unknown = sorted(set(cfg) - set(OFFICIAL_DEFAULTS) - {"_target_"})
    if unknown:
        raise ValueError(f"unknown U-Net config keys: {unknown}")
    cfg.pop("_target_", None)
    full = {**OFFICIAL_DEFAULTS, **cfg}
    problems = []
    for key, name_set in (("down_block_types", _DOWN_TYPES), ("up_block_types", _UP_TYPES)):
        bad = [t for t in full[key] if t.removeprefix("UNetRes") not in name_set]
        if bad:
            problems.append(f"{key} has unsupported entries {bad}")
    if not (len(full["down_block_types"]) == len(full["up_block_types"]) == len(full["block_out_channels"])):
        problems.append("down_block_types, up_block_types and block_out_channels must have the same length")
    if full["mid_block_type"] != "UNetMidBlock3DCrossAttn":
        problems.append(f"mid_block_type {full['mid_block_type']!r} (only UNetMidBlock3DCrossAttn)")
    if full["dual_cross_attention"]:
        problems.append("dual_cross_attention is not supported (nor by the official code)")
    if full["class_embed_type"] is not None or full["num_class_embeds"] is not None:
        problems.append("class embeddings are not supported (LatentSync has none)")
    if full["act_fn"] not in ("silu", "swish"):
        problems.append(f"act_fn {full['act_fn']!r} (only silu)")
    if full["use_motion_module"] and full["motion_module_type"] != "Vanilla":
        problems.append(f"motion_module_type {full['motion_module_type']!r} (only 'Vanilla')")
    if problems:
        raise ValueError("unsupported U-Net config: " + "; ".join(problems))
    return full


def _plain(value: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


class LatentSyncUNet(nn.Module):
    """``unet(sample [B,13,F,H,W], t, audio_embeds [B,F,50,384]) -> eps [B,4,F,H,W]``."""

    def __init__(self, **model_config: Any):
        super().__init__()
        cfg = normalize_model_config(model_config)
        self.config = cfg
        ch = list(cfg["block_out_channels"])
        temb_dim = ch[0] * 4
        heads = cfg["attention_head_dim"]
        heads = [heads] * len(ch) if isinstance(heads, int) else list(heads)
        self.add_audio_layer = cfg["add_audio_layer"]
        motion_kwargs = dict(cfg["motion_module_kwargs"] or {})
        common = dict(
            groups=cfg["norm_num_groups"],
            eps=cfg["norm_eps"],
            cross_attention_dim=cfg["cross_attention_dim"],
            add_audio_layer=cfg["add_audio_layer"],
            time_embedding_norm=cfg["resnet_time_scale_shift"],
            per_frame_norm=cfg["use_inflated_groupnorm"],
            use_linear_projection=cfg["use_linear_projection"],
        )

        def motion_at(res: int, decoder: bool) -> dict | None:
            use = cfg["use_motion_module"] and res in cfg["motion_module_resolutions"]
            if not decoder and cfg["motion_module_decoder_only"]:
                use = False
            return motion_kwargs if use else None

        self.conv_in = InflatedConv3d(cfg["in_channels"], ch[0], kernel_size=3, padding=(1, 1))
        self.time_proj = Timesteps(ch[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim)

        self.down_blocks = nn.ModuleList()
        out = ch[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            inp, out = out, ch[i]
            self.down_blocks.append(
                UNetStage(
                    "down", inp, out, temb_dim, cfg["layers_per_block"],
                    with_attention=_DOWN_TYPES[kind.removeprefix("UNetRes")],
                    resample=i < len(ch) - 1,
                    heads=heads[i],
                    motion_kwargs=motion_at(2**i, decoder=False),
                    downsample_padding=cfg["downsample_padding"],
                    **common,
                )
            )  # fmt: skip
        mid_common = {k: v for k, v in common.items()}
        self.mid_block = MidBlock3DCrossAttn(
            ch[-1], temb_dim, heads=heads[-1],
            motion_kwargs=motion_kwargs if cfg["use_motion_module"] and cfg["motion_module_mid_block"] else None,
            output_scale_factor=cfg["mid_block_scale_factor"],
            **mid_common,
        )  # fmt: skip

        self.up_blocks = nn.ModuleList()
        rev, rev_heads = ch[::-1], heads[::-1]
        out = rev[0]
        for i, kind in enumerate(cfg["up_block_types"]):
            prev, out = out, rev[i]
            inp = rev[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(
                UNetStage(
                    "up", inp, out, temb_dim, cfg["layers_per_block"] + 1,
                    with_attention=_UP_TYPES[kind.removeprefix("UNetRes")],
                    resample=i < len(ch) - 1,
                    heads=rev_heads[i],
                    motion_kwargs=motion_at(2 ** (len(ch) - 1 - i), decoder=True),
                    prev_output_channel=prev,
                    **common,
                )
            )  # fmt: skip
        self.num_upsamplers = len(ch) - 1
        self.conv_norm_out = group_norm(ch[0], cfg["norm_num_groups"], cfg["norm_eps"], cfg["use_inflated_groupnorm"])
        self.conv_act = nn.SiLU()
        self.conv_out = InflatedConv3d(ch[0], cfg["out_channels"], kernel_size=3, padding=1)
        # LatentSync zero-initialises the input and output convolutions.
        for conv in (self.conv_in, self.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    # ------------------------------------------------------------------ utilities
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        for block in (*self.down_blocks, self.mid_block, *self.up_blocks):
            block.gradient_checkpointing = enabled

    def disable_gradient_checkpointing(self) -> None:
        self.enable_gradient_checkpointing(False)

    def time_embed(self, timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
        """Timestep -> embedding ``[B, 4*C0]`` (the student adds its guidance embedding to this)."""
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=device)
        elif t.dim() == 0:
            t = t[None].to(device)
        t = t.expand(batch)
        return self.time_embedding(self.time_proj(t).to(dtype=self.dtype))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        audio_embeds: torch.Tensor | None = None,
        emb_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample ``[B, Cin, F, H, W]``, timestep scalar or ``[B]``, audio ``[B, F, S, D]`` -> ``[B, Cout, F, H, W]``.

        ``emb_offset`` ``[B, 4*C0]`` is added to the time embedding (guidance embedding of the
        student); the teacher leaves it None.
        """
        if sample.dim() != 5:
            raise ValueError(f"sample must be [B, C, F, H, W], got shape {tuple(sample.shape)}")
        if sample.shape[1] != self.config["in_channels"]:
            raise ValueError(f"sample has {sample.shape[1]} channels, the U-Net expects {self.config['in_channels']}")
        if audio_embeds is not None and audio_embeds.dim() == 4 and audio_embeds.shape[:2] != sample.shape[:3:2]:
            raise ValueError(
                f"audio_embeds {tuple(audio_embeds.shape)} do not match sample batch/frames {tuple(sample.shape[:3:2])}"
            )
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        if self.config["center_input_sample"]:
            sample = 2 * sample - 1.0
        emb = self.time_embed(timestep, sample.shape[0], sample.device)
        if emb_offset is not None:
            emb = emb + emb_offset
        audio = audio_embeds if self.add_audio_layer else None

        x = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            x, res = block.forward_down(x, emb, audio)
            skips += res
        x = self.mid_block(x, emb, audio)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            x = block.forward_up(x, res, emb, audio, size)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
