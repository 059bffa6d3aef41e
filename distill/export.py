"""``turbosync export RUN_DIR OUT_DIR``: a run's distilled student as a plain model.

Writes a self-contained folder (``student.io`` format): ``model.safetensors`` (the EMA target's
weights for full fine-tuning, the student with LoRA merged for LoRA; training state is dropped: optimizers, RNG, the
adversarial losses' discriminators), ``config.json`` (architecture, the denoiser settings the run distilled
with, the inference settings: face resolution, frames per chunk, default steps, w) and copies of the teacher's
VAE, Whisper and mask files, so the folder alone runs the student (``student.load``, ``student.load_bundle``) without
accelerate, DeepSpeed, peft or the run. The architecture is rebuilt from ``RUN_DIR/config.yaml``
(teacher U-Net + student settings), then the checkpoint's weights are loaded into it.
Optional ``--onnx``: one U-Net step (sample, t, audio, w) -> eps as ``OUT_DIR/student.onnx``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from distill import checkpoint as ckpt


class ExportError(RuntimeError):
    """A run that cannot be exported, with the reason."""


def find_checkpoint(run_dir: Path, checkpoint: str | os.PathLike | None = None) -> Path:
    if checkpoint is not None:
        path = Path(checkpoint)
        if not (path / ckpt.STATE_FILE).is_file():
            raise ExportError(f"{path} is not a checkpoint directory (no {ckpt.STATE_FILE})")
        return path
    path = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise ExportError(f"{run_dir} has no checkpoint under checkpoints/ (has the run saved one yet?)")
    return path


def restore_network(cfg, path: Path) -> nn.Module:
    """The network a checkpoint describes: the EMA target (full training) or the LoRA student."""
    from distill.recipe import build_student, build_teacher_unet, teacher_config

    teacher = build_teacher_unet(teacher_config(cfg), int(cfg.run.seed), cfg.teacher.get("fill_zero_init_std"))
    student, target = build_student(cfg, teacher)
    ckpt.load_student(path, student)
    if target is student:
        return student
    if not (path / "target.safetensors").is_file():
        raise ExportError(f"{path} has no target.safetensors although the run trains an EMA target")
    ckpt.load_target(path, target)
    return target


def copy_inference_files(tcfg, out: Path, steps: int, num_frames: int | None = None) -> dict:
    """Copy the teacher's VAE, Whisper and mask files named by ``tcfg.files`` into ``out``; returns the
    ``inference`` settings (paths relative to ``out``; null = the tiny preset's random module).
    num_frames: frames per chunk, default the teacher's (the run passes the window it distilled on)."""
    files = tcfg.get("files") or {}
    inference = {
        "resolution": int(tcfg.data.resolution),
        "num_frames": int(num_frames or tcfg.data.num_frames),
        "steps": int(steps),
        "w": float(tcfg.sampler.w),
        "teacher": str(tcfg.get("name", "")),
    }
    for key, src in (("vae", files.get("vae")), ("whisper", files.get("whisper")),
                     ("mask", tcfg.data.get("mask_image_path"))):  # fmt: skip
        inference[key] = None
        if src is None:
            continue
        src = Path(str(src))
        if not src.exists():
            raise ExportError(f"the teacher's {key} file {src} is missing; the export copies it in")
        name = _export_name(key, src)
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            shutil.copy2(src, target)
        inference[key] = name
    return inference


def _export_name(dest: str, src: Path) -> str:
    """Where a copied file goes inside the export: folders as ``dest/``, files as ``dest/<name>``."""
    return dest if src.is_dir() else f"{dest}/{src.name}"


def export_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
    onnx: bool = False, steps: int = 1, dtype: str = "float32",
) -> Path:  # fmt: skip
    """Export the latest (or the given) checkpoint of ``run_dir`` to ``out_dir``; returns ``out_dir``.

    steps: the default number of sampler steps recorded for inference (1-4). dtype: stored precision of
    the weights ("float32", "float16", "bfloat16"; ``student.load`` computes half weights in float32 on a CPU)."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ExportError(f"--dtype must be float32, float16 or bfloat16, got {dtype!r}")
    from distill.recipe import teacher_config
    from student import io

    if not 1 <= int(steps) <= 50:
        raise ExportError(f"--steps must be between 1 and 50, got {steps}")
    run_dir = Path(run_dir)
    if onnx:
        _require_onnx()  # before any work
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir} is not a distillation run directory (no config.yaml)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    path = find_checkpoint(run_dir, checkpoint)
    network = restore_network(cfg, path).eval()
    source = {"run_dir": str(run_dir), "checkpoint": path.name, "step": ckpt.read_state(path).step}
    inference = copy_inference_files(teacher_config(cfg), Path(out_dir), steps, int(cfg.data.num_frames))
    out = io.save(network, out_dir, extra=source, inference=inference, dtype=getattr(torch, dtype))
    if onnx:
        h = int(cfg.data.resolution) // 8
        export_onnx(io.load(out), out / "student.onnx", int(cfg.data.num_frames), h)
    return out


def export_onnx(student: nn.Module, path: Path, num_frames: int, latent_size: int) -> Path:
    """One student call (sample [1, 13, F, h, w], t [1], audio [1, F, 50, 384], w [1]) -> eps, as ONNX."""
    _require_onnx()
    f, h = num_frames, latent_size
    args = (torch.randn(1, 13, f, h, h), torch.tensor([999]), torch.randn(1, f, 50, 384), torch.tensor([1.5]))
    dynamo = importlib.util.find_spec("onnxscript") is not None
    torch.onnx.export(student.eval(), args, str(path), input_names=["sample", "t", "audio_embeds", "w"],
                      output_names=["eps"], dynamo=dynamo)  # fmt: skip
    return path


def _require_onnx() -> None:
    if importlib.util.find_spec("onnx") is None:
        raise ExportError("--onnx needs the onnx package, which torch.onnx writes through: pip install onnx "
                          "(and onnxscript for the torch.export-based exporter)")  # fmt: skip
