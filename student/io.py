"""An exported student on disk: ``DIR/model.safetensors`` + ``DIR/config.json``.

``load`` needs torch, safetensors and the U-Net code only: no accelerate, DeepSpeed or peft.
``save`` writes ``student_state_for_export`` (LoRA merged, training-only modules dropped).

    from student import load
    student = load("exports/tiny")            # StudentUNet in eval mode
    eps = student(sample, t, audio_embeds, w)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from student.model import StudentUNet, student_state_for_export

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save(student: StudentUNet, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the plain student to ``out_dir``; ``extra`` (JSON-ready) is stored under ``config["source"]``."""
    state, config = student_state_for_export(student)
    return save_state(state, config, out_dir, extra)


def save_state(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    out_dir: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an exported (state, config) pair; each file is written to a temporary name, then renamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {**dict(config), **({"source": dict(extra)} if extra else {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(out / f".{MODEL_FILE}.tmp"), metadata={"format": str(config["format"])})
    os.replace(out / f".{MODEL_FILE}.tmp", out / MODEL_FILE)
    (out / f".{CONFIG_FILE}.tmp").write_text(json.dumps(config, indent=1))
    os.replace(out / f".{CONFIG_FILE}.tmp", out / CONFIG_FILE)
    return out


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> StudentUNet:
    """The student exported to ``path`` (a folder with model.safetensors and config.json), in eval mode."""
    folder = Path(path)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not an exported student: {name} is missing (run `turbosync export`)")
    config = json.loads((folder / CONFIG_FILE).read_text())
    student = StudentUNet.from_export(load_file(str(folder / MODEL_FILE)), config)
    return student.to(device=device, dtype=dtype)
