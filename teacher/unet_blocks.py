"""Building blocks of LatentSync's ``UNet3DConditionModel``.

Module and parameter names follow the official checkpoint (diffusers style), so a
``latentsync_unet.pt`` state dict loads key for key. Tensors are video chunks
``[B, C, F, H, W]``. Two normalisation facts of the original are kept on purpose:

* ResNet blocks apply ``GroupNorm`` to the 5-D tensor, so statistics span every frame
  of the chunk (``per_frame_norm=True`` is the opt-in streaming variant, the
  official ``use_inflated_groupnorm``).
* Spatial transformers and motion modules normalise per frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn
from torch.utils.checkpoint import checkpoint


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W] -> [B*F, C, H, W]``."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def batch_to_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[B*F, C, H, W] -> [B, C, F, H, W]``."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


class InflatedConv3d(nn.Conv2d):
    """A 2-D convolution applied to every frame of ``[B, C, F, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_to_frames(super().forward(frames_to_batch(x)), x.shape[2])


class InflatedGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame (the streaming-friendly variant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_to_frames(super().forward(frames_to_batch(x)), x.shape[2])


def group_norm(channels: int, groups: int, eps: float, per_frame: bool) -> nn.GroupNorm:
    cls = InflatedGroupNorm if per_frame else nn.GroupNorm
    return cls(num_groups=groups, num_channels=channels, eps=eps, affine=True)


class ResnetBlock3D(nn.Module):
    """Pre-norm ResNet block; ``GroupNorm`` over the whole chunk unless ``per_frame_norm``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        per_frame_norm: bool = False,
    ):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"unknown resnet_time_scale_shift {time_embedding_norm!r}")
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.norm1 = group_norm(in_channels, groups, eps, per_frame_norm)
        self.conv1 = InflatedConv3d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        proj_out = out_channels * (2 if time_embedding_norm == "scale_shift" else 1)
        self.time_emb_proj = nn.Linear(temb_channels, proj_out)
        self.norm2 = group_norm(out_channels, groups, eps, per_frame_norm)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = InflatedConv3d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = InflatedConv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        temb = self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        if self.time_embedding_norm == "default":
            h = self.norm2(h + temb)
        else:
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample3D(nn.Module):
    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = InflatedConv3d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest x2 in H and W (not in time), then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = InflatedConv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling lacks bf16 kernels on some backends
            x = x.float()
        if output_size is None:
            x = F.interpolate(x, scale_factor=[1.0, 2.0, 2.0], mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x.to(dtype))


class BasicTransformerBlock(nn.Module):
    """Spatial self-attention, audio cross-attention (``attn2``) and GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, add_audio_layer: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)
        self.norm2 = self.attn2 = None
        if add_audio_layer:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(
                query_dim=dim,
                cross_attention_dim=cross_attention_dim,
                heads=heads,
                dim_head=head_dim,
                bias=False,
            )
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """x ``[B*F, HW, C]``; context ``[B*F, S, D]`` audio tokens or None (no cross-attention)."""
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and context is not None:
            x = self.attn2(self.norm2(x), encoder_hidden_states=context) + x
        return self.ff(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    """Per-frame spatial transformer with audio cross-attention."""

    def __init__(
        self,
        heads: int,
        channels: int,
        cross_attention_dim: int,
        groups: int,
        add_audio_layer: bool,
        use_linear_projection: bool = False,
    ):
        super().__init__()
        head_dim = channels // heads
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
            self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, head_dim, cross_attention_dim, add_audio_layer)]
        )

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """x ``[B, C, F, H, W]``; audio ``[B, F, S, D]`` (or ``[B*F, S, D]``) or None."""
        f = x.shape[2]
        h = frames_to_batch(x)
        bf, c, hh, ww = h.shape
        residual = h
        h = self.norm(h)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(bf, hh * ww, -1)
        if self.use_linear_projection:
            h = self.proj_in(h)
        context = audio.flatten(0, 1) if audio is not None and audio.dim() == 4 else audio
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(bf, hh, ww, -1).permute(0, 3, 1, 2)
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return batch_to_frames(h + residual, f)


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos positions over frames (the ``pe`` buffer is part of the checkpoint)."""

    def __init__(self, dim: int, max_len: int = 24):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(
                f"chunk of {x.shape[1]} frames exceeds the motion module's {self.pe.shape[1]} temporal positions"
            )
        return x + self.pe[:, : x.shape[1]]


class TemporalAttention(Attention):
    """Self-attention across frames at every spatial position (AnimateDiff "Temporal_Self")."""

    def __init__(self, dim: int, heads: int, head_dim: int, positional: bool, max_len: int):
        super().__init__(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)
        self.pos_encoder = SinusoidalPositions(dim, max_len) if positional else None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x ``[B*F, S, C]`` -> ``[B*F, S, C]``."""
        bf, s, c = x.shape
        h = x.reshape(bf // num_frames, num_frames, s, c).permute(0, 2, 1, 3).reshape(-1, num_frames, c)
        if self.pos_encoder is not None:
            h = self.pos_encoder(h)
        h = super().forward(h)
        return h.reshape(bf // num_frames, s, num_frames, c).permute(0, 2, 1, 3).reshape(bf, s, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, num_attentions: int, positional: bool, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, head_dim, positional, max_len) for _ in range(num_attentions)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attentions)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), num_frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        num_layers: int,
        num_attentions: int,
        positional: bool,
        max_len: int,
    ):
        super().__init__()
        inner = heads * head_dim
        # The official module always uses 32 groups here, whatever the U-Net's norm_num_groups.
        self.norm = nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [
                TemporalTransformerBlock(inner, heads, head_dim, num_attentions, positional, max_len)
                for _ in range(num_layers)
            ]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.shape[2]
        h = frames_to_batch(x)
        bf, c, hh, ww = h.shape
        residual = h
        h = self.norm(h).permute(0, 2, 3, 1).reshape(bf, hh * ww, c)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, f)
        h = self.proj_out(h).reshape(bf, hh, ww, c).permute(0, 3, 1, 2)
        return batch_to_frames(h + residual, f)


class VanillaTemporalModule(nn.Module):
    """AnimateDiff motion module; ``proj_out`` starts at zero so it begins as the identity."""

    def __init__(
        self,
        in_channels: int,
        num_attention_heads: int = 8,
        num_transformer_block: int = 2,
        attention_block_types=("Temporal_Self", "Temporal_Self"),
        cross_frame_attention_mode=None,
        temporal_position_encoding: bool = False,
        temporal_position_encoding_max_len: int = 24,
        temporal_attention_dim_div: int = 1,
        zero_initialize: bool = True,
    ):
        super().__init__()
        bad = [t for t in attention_block_types if t != "Temporal_Self"]
        if bad or cross_frame_attention_mode is not None:
            raise ValueError(f"only 'Temporal_Self' motion attention is supported, got {list(attention_block_types)}")
        self.temporal_transformer = TemporalTransformer3DModel(
            channels=in_channels,
            heads=num_attention_heads,
            head_dim=in_channels // num_attention_heads // temporal_attention_dim_div,
            num_layers=num_transformer_block,
            num_attentions=len(attention_block_types),
            positional=temporal_position_encoding,
            max_len=temporal_position_encoding_max_len,
        )
        if zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_transformer(x)


def _maybe_checkpoint(enabled: bool, fn, *args):
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class UNetStage(nn.Module):
    """One resolution level: ``layers`` x (ResNet [-> transformer] [-> motion module]).

    Down stages collect skip outputs and end in a strided conv; up stages consume skips
    and end in an upsampler. Attribute names match the official ``*Block3D`` classes.
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        with_attention: bool,
        resample: bool,
        *,
        groups: int,
        eps: float,
        heads: int,
        cross_attention_dim: int,
        add_audio_layer: bool,
        motion_kwargs: dict | None,
        time_embedding_norm: str,
        per_frame_norm: bool,
        use_linear_projection: bool,
        downsample_padding: int = 1,
        prev_output_channel: int | None = None,
    ):
        super().__init__()
        self.kind = kind
        self.gradient_checkpointing = False
        self.has_cross_attention = with_attention
        resnets, attentions, motion = [], [], []
        for i in range(num_layers):
            if kind == "down":
                res_in = in_channels if i == 0 else out_channels
            else:
                skip = in_channels if i == num_layers - 1 else out_channels
                res_in = (prev_output_channel if i == 0 else out_channels) + skip
            resnets.append(
                ResnetBlock3D(
                    res_in, out_channels, temb_channels, groups, eps, time_embedding_norm, 1.0, per_frame_norm
                )
            )
            if with_attention:
                attentions.append(
                    Transformer3DModel(
                        heads,
                        out_channels,
                        cross_attention_dim,
                        groups,
                        add_audio_layer,
                        use_linear_projection,
                    )
                )
            motion.append(VanillaTemporalModule(out_channels, **motion_kwargs) if motion_kwargs is not None else None)
        self.resnets = nn.ModuleList(resnets)
        if with_attention:
            self.attentions = nn.ModuleList(attentions)
        self.motion_modules = nn.ModuleList(motion)
        if kind == "down":
            self.downsamplers = nn.ModuleList([Downsample3D(out_channels, downsample_padding)]) if resample else None
        else:
            self.upsamplers = nn.ModuleList([Upsample3D(out_channels)]) if resample else None

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        ckpt = self.gradient_checkpointing
        x = _maybe_checkpoint(ckpt, self.resnets[i], x, temb)
        if self.has_cross_attention:
            x = _maybe_checkpoint(ckpt, self.attentions[i], x, audio)
        if self.motion_modules[i] is not None:
            x = _maybe_checkpoint(ckpt, self.motion_modules[i], x)
        return x

    def forward_down(self, x, temb, audio):
        skips = ()
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, audio)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips

    def forward_up(self, x, skips, temb, audio, upsample_size=None):
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips[-1]], dim=1)
            skips = skips[:-1]
            x = self._layer(i, x, temb, audio)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class MidBlock3DCrossAttn(nn.Module):
    """ResNet -> transformer [-> motion module] -> ResNet at the lowest resolution."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        *,
        groups: int,
        eps: float,
        heads: int,
        cross_attention_dim: int,
        add_audio_layer: bool,
        motion_kwargs: dict | None,
        time_embedding_norm: str,
        output_scale_factor: float,
        per_frame_norm: bool,
        use_linear_projection: bool,
    ):
        super().__init__()
        self.gradient_checkpointing = False

        def resnet():
            return ResnetBlock3D(
                channels,
                channels,
                temb_channels,
                groups,
                eps,
                time_embedding_norm,
                output_scale_factor,
                per_frame_norm,
            )

        self.resnets = nn.ModuleList([resnet(), resnet()])
        self.attentions = nn.ModuleList(
            [Transformer3DModel(heads, channels, cross_attention_dim, groups, add_audio_layer, use_linear_projection)]
        )
        self.motion_modules = nn.ModuleList(
            [VanillaTemporalModule(channels, **motion_kwargs) if motion_kwargs is not None else None]
        )

    def forward(self, x, temb, audio):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, audio)
        if self.motion_modules[0] is not None:
            x = self.motion_modules[0](x)
        return self.resnets[1](x, temb)
