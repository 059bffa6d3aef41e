"""Loading official LatentSync U-Net checkpoints, with every key accounted for."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teacher.unet import LatentSyncUNet


class CheckpointError(ValueError):
    """A checkpoint or model config that cannot be used, with the file and the reason."""


def resolve_model_config(model_config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The ``model:`` mapping itself, or a YAML file whose top-level ``model:`` holds it."""
    if isinstance(model_config, str | os.PathLike):
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"model config {path} does not exist")
        from omegaconf import OmegaConf

        try:
            cfg = OmegaConf.load(path)
        except Exception as err:
            raise CheckpointError(f"model config {path} is not valid YAML: {err}") from err
        if not isinstance(cfg, Mapping) or "model" not in cfg:
            raise CheckpointError(f"model config {path} has no top-level 'model:' section")
        return dict(OmegaConf.to_container(cfg["model"], resolve=True))
    if not isinstance(model_config, Mapping):
        raise CheckpointError(f"model_config must be a mapping or a YAML path, got {type(model_config).__name__}")
    return dict(model_config)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a U-Net state dict from ``latentsync_unet.pt`` (``{"state_dict", "global_step"}`` or a
    bare state dict, loaded with ``weights_only=True``) or from a ``.safetensors`` file.

    Returns ``(state_dict, meta)``; ``meta`` holds ``global_step`` when present.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"U-Net checkpoint {path} does not exist. Download it with `turbosync fetch-teacher` "
            f"or put the official latentsync_unet.pt at that path."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"U-Net checkpoint {path} is empty (0 bytes): re-download it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), {}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"U-Net checkpoint {path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as err:
        raise CheckpointError(
            f"U-Net checkpoint {path} is corrupt or not a torch checkpoint "
            f"(loaded with weights_only=True): {str(err).splitlines()[0]}"
        ) from err
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and "state_dict" in obj:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"U-Net checkpoint {path} holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"U-Net checkpoint {path}: entries that are not tensors: {bad[:5]}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from a DDP/DeepSpeed wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, meta


def _summary(keys: list[str], limit: int = 12) -> str:
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Problems between ``model`` and ``state``: missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shaped = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summary(unexpected)}")
    if shaped:
        problems.append(f"mis-shaped keys: {_summary(shaped)}")
    return problems


def load_unet(
    ckpt_path: str | os.PathLike | None,
    model_config: Mapping[str, Any] | str | os.PathLike,
    strict: bool = True,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> LatentSyncUNet:
    """Build the teacher U-Net from an official ``model:`` config and load its weights.

    ``ckpt_path=None`` gives freshly initialised weights. ``strict=True`` (default) raises a
    ``CheckpointError`` listing missing, unexpected and mis-shaped keys; ``strict=False``
    loads the keys that fit and warns about the rest (never widening layers silently:
    mis-shaped tensors are skipped and reported, not copied).
    """
    cfg = resolve_model_config(model_config)
    try:
        unet = LatentSyncUNet(**cfg)
    except (TypeError, ValueError) as err:
        where = model_config if isinstance(model_config, str | os.PathLike) else "model_config"
        raise CheckpointError(f"U-Net config {where}: {err}") from err
    if ckpt_path is not None:
        state, meta = read_state_dict(ckpt_path)
        problems = check_state_dict(unet, state)
        if problems and strict:
            raise CheckpointError(f"U-Net checkpoint {ckpt_path} does not match the config: " + "; ".join(problems))
        if problems:
            import warnings

            warnings.warn(f"loading {ckpt_path} non-strictly: " + "; ".join(problems), stacklevel=2)
            own = unet.state_dict()
            state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        unet.load_state_dict(state, strict=strict)
        unet.global_step = int(meta.get("global_step", 0) or 0)
    if dtype is not None:
        unet.to(dtype=dtype)
    return unet.to(device)


def freeze(module: nn.Module) -> nn.Module:
    """The one place a teacher is frozen: eval mode, no gradients."""
    return module.eval().requires_grad_(False)
