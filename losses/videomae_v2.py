"""The official VideoMAE-v2 checkpoint (``vit_g_hybrid_pt_1200e_ssv2_ft.pth``, TREPA's encoder) on transformers.

Facts from the official code (OpenGVLab/VideoMAEv2 ``models/modeling_finetune.py``; LatentSync's copy in
``latentsync/trepa/third_party/VideoMAEv2``, loaded by ``utils.load_videomae_model``):

- ``vit_giant_patch14_224``: width 1408, 40 blocks, 16 heads, MLP 6144 (``int(1408 * 48 / 11)``), exact GELU,
  LayerNorm eps 1e-6, ``qkv_bias`` (``q_bias``, ``v_bias``; the key bias is zero), tubelets of 2 x 14 x 14,
  224 px, 16 frames, fixed sinusoid positions (no ``pos_embed`` key), ``use_mean_pooling`` (``norm`` is an
  Identity, ``fc_norm`` follows the token mean), ``head`` Linear(1408, 174) (SSv2 classes), ``init_values`` 0
  (no ``gamma_1``/``gamma_2``).
- The file is a torch pickle; the state dict sits under ``"model"`` or ``"module"`` (tried in that order) or is
  the file itself; LatentSync loads it strictly.
- ``forward_features(x)``: ``x [B, 3, T, 224, 224]`` -> ``patch_embed.proj`` (Conv3d) -> + positions -> blocks
  (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``) -> ``fc_norm(x.mean(1))``.
- For T != 16 the positions are interpolated in time: table ``[1, 2048, D]`` viewed as ``[1, D, 8, 16, 16]``,
  trilinear with scale ``((T / 2 + 0.1) / 8, 1, 1)`` (``interpolate_pos_encoding``).

Key map onto transformers' ``VideoMAEModel`` (every key accounted for; ``head.*`` is the classifier, which
TREPA does not use, and is dropped on purpose)::

    patch_embed.proj.{weight,bias}      embeddings.patch_embeddings.projection.{weight,bias}
    blocks.i.norm1 / norm2              encoder.layer.i.layernorm_before / layernorm_after
    blocks.i.attn.qkv.weight [3D, D]    encoder.layer.i.attention.attention.{query,key,value}.weight (split in 3)
    blocks.i.attn.q_bias / v_bias       ...attention.attention.query.bias / value.bias (key: no bias = zero)
    blocks.i.attn.proj                  encoder.layer.i.attention.output.dense
    blocks.i.mlp.fc1 / fc2              encoder.layer.i.intermediate.dense / output.dense
    norm (use_mean_pooling false)       layernorm
    fc_norm                             VideoMAEFeatures.fc_norm
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from losses.trepa import VideoMAEFeatures

__all__ = [
    "OFFICIAL_FILE",
    "VIT_G_14",
    "load_videomae_v2",
    "convert_videomae_v2",
    "videomae_v2_config",
    "official_state_dict",
    "interpolate_positions",
]

OFFICIAL_FILE = "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
# vit_giant_patch14_224 as LatentSync builds it (img_size 224, all_frames 16, tubelet 2, mean pooling)
VIT_G_14 = dict(image_size=224, num_frames=16, num_attention_heads=16)
_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def official_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint: ``obj["model"]``, else ``obj["module"]``, else ``obj``."""
    for key in ("model", "module"):
        if key in obj:
            return obj[key]
    return obj


def videomae_v2_config(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int = 16, image_size: int = 224, num_frames: int = 16
):
    """A transformers ``VideoMAEConfig`` for an official checkpoint: widths, depth and patching from the weights.

    The head count is not in the weights (16 for ViT-g); ``image_size`` and ``num_frames`` are the clip the
    checkpoint was trained on (its position table), 224 and 16 for the official file.
    """
    from transformers import VideoMAEConfig

    proj = state_dict["patch_embed.proj.weight"]  # [D, 3, tubelet, p, p]
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    return VideoMAEConfig(
        image_size=image_size,
        patch_size=int(proj.shape[-1]),
        num_channels=int(proj.shape[1]),
        num_frames=num_frames,
        tubelet_size=int(proj.shape[2]),
        hidden_size=int(proj.shape[0]),
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads,
        intermediate_size=int(state_dict["blocks.0.mlp.fc1.weight"].shape[0]),
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qv_bias="blocks.0.attn.q_bias" in state_dict,  # transformers >= 5
        qkv_bias="blocks.0.attn.q_bias" in state_dict,  # transformers 4.x: the same switch
        use_mean_pooling="fc_norm.weight" in state_dict,
    )


def convert_videomae_v2(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """Official keys -> (``VideoMAEModel`` state dict, ``fc_norm`` state dict, dropped ``head.*`` keys).

    Raises ``ValueError`` naming any key it does not know (e.g. ``gamma_1`` of ``init_values`` > 0, or a
    learnable ``pos_embed``: transformers' VideoMAE has neither).
    """
    encoder, fc_norm, dropped, unknown = {}, {}, [], []
    for key, value in state_dict.items():
        if key.startswith("patch_embed.proj."):
            encoder["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("fc_norm."):
            fc_norm[key.removeprefix("fc_norm.")] = value
        elif key.startswith("norm."):
            encoder["layernorm." + key.removeprefix("norm.")] = value
        elif key.startswith("head."):
            dropped.append(key)
        elif m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            i, name, kind = m.groups()
            if name == "attn.qkv" and kind == "weight":
                for part, w in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    encoder[f"encoder.layer.{i}.attention.attention.{part}.weight"] = w
            elif name in _BLOCK:
                encoder[f"encoder.layer.{i}.{_BLOCK[name]}.{kind}"] = value
            else:
                unknown.append(key)
        elif m := re.fullmatch(r"blocks\.(\d+)\.attn\.(q|v)_bias", key):
            part = "query" if m.group(2) == "q" else "value"
            encoder[f"encoder.layer.{m.group(1)}.attention.attention.{part}.bias"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"official VideoMAE-v2 keys with no place in transformers' VideoMAE: {unknown[:6]}")
    return encoder, fc_norm, dropped


def installed_bias_names(encoder: dict[str, torch.Tensor], expected) -> dict[str, torch.Tensor]:
    """The query / value biases under the installed transformers' names: ``attention.attention.query.bias``
    (>= 5) or ``attention.attention.q_bias`` / ``v_bias`` (4.x keeps them as separate parameters)."""
    out = {}
    for key, value in encoder.items():
        for new, old in ((".q_bias", ".query.bias"), (".v_bias", ".value.bias")):
            if key.endswith(old) and key not in expected and key.removesuffix(old) + new in expected:
                key = key.removesuffix(old) + new
        out[key] = value
    return out


def interpolate_positions(
    table: torch.Tensor, grid: tuple[int, int, int], num_frames: int, tubelet_size: int
) -> torch.Tensor:
    """Upstream ``interpolate_pos_encoding``: ``[1, t0*g*g, D]`` on ``grid = (t0, g, g)`` -> ``num_frames / tubelet``.

    Trilinear in time only, scale ``(t + 0.1) / t0`` (the 0.1 as upstream, against rounding); identity at t = t0.
    """
    t0, gh, gw = grid
    t = num_frames // tubelet_size
    if t == t0:
        return table
    d = table.shape[-1]
    x = table.permute(0, 2, 1).reshape(1, d, t0, gh, gw)
    x = F.interpolate(x, scale_factor=((t + 0.1) / t0, 1, 1), mode="trilinear")
    if x.shape[2] != t:
        raise ValueError(f"position interpolation gave {x.shape[2]} temporal steps, expected {t}")
    return x.reshape(1, d, -1).permute(0, 2, 1)


def load_videomae_v2(
    path: str | Path,
    num_frames: int = 16,
    image_size: int = 224,
    num_attention_heads: int = 16,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
) -> VideoMAEFeatures:
    """The official VideoMAE-v2 file (``vit_g_hybrid_pt_1200e_ssv2_ft.pth``) as a ``VideoMAEFeatures``.

    Args:
        path: the ``.pth`` file (torch pickle, state dict under ``model`` / ``module`` or bare).
        num_frames: frames per clip the encoder will see; other than the checkpoint's 16, the position table
            is interpolated in time exactly as upstream.
        image_size, num_attention_heads: the checkpoint's (224, 16 for ViT-g; the heads are not in the weights).
        dtype: cast the encoder (upstream runs it in float16 on GPU); ``None`` keeps the file's.
        gradient_checkpointing: see ``VideoMAEFeatures`` (upstream TREPA: on).
    Raises ``FileNotFoundError`` (one line naming ``vit_g_hybrid_pt_1200e_ssv2_ft.pth``) when absent,
    ``ValueError`` for unknown keys or shape mismatches; every encoder key must be filled (strict load).
    """
    from transformers import VideoMAEModel

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"VideoMAE-v2 checkpoint not found at {path} (LatentSync's TREPA uses {OFFICIAL_FILE})")
    state_dict = official_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    config = videomae_v2_config(state_dict, num_attention_heads, image_size, num_frames=16)
    encoder_sd, fc_norm_sd, _ = convert_videomae_v2(state_dict)
    with torch.device("meta"):  # no random init of ~1 B parameters: every weight comes from the file
        model = VideoMAEModel(config)
    expected = model.state_dict()
    encoder_sd = installed_bias_names(encoder_sd, expected)
    missing = sorted(set(expected) - set(encoder_sd))
    if missing:
        raise ValueError(f"checkpoint {path} lacks weights for {missing[:4]} ({len(missing)} missing)")
    for key, value in encoder_sd.items():
        if key in expected and value.shape != expected[key].shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)}, model {tuple(expected[key].shape)}")
    model.load_state_dict(encoder_sd, strict=True, assign=True)
    if num_frames != config.num_frames:  # upstream interpolate_pos_encoding, done once here
        g = image_size // config.patch_size
        table = model.embeddings.position_embeddings
        grid = (config.num_frames // config.tubelet_size, g, g)
        model.embeddings.position_embeddings = interpolate_positions(table, grid, num_frames, config.tubelet_size)
        model.config.num_frames = num_frames
    fc_norm = None
    if fc_norm_sd:
        fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        fc_norm.load_state_dict(fc_norm_sd, strict=True)
    features = VideoMAEFeatures(model, fc_norm, str(path), gradient_checkpointing)
    return features.to(dtype) if dtype is not None else features
