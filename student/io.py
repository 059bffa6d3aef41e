"""An exported student on disk: a folder that alone is enough to lip-sync with the student.

    OUT/model.safetensors   the plain student (LoRA merged, training-only modules dropped)
    OUT/config.json         {"format", "unet", "w_embed_dim", "w_scale",
                             "denoiser":  student.DenoiserSettings (boundary scalings, schedule),
                             "inference": resolution, num_frames (per chunk), steps, w,
                                          vae / whisper / mask (paths inside OUT, or null),
                             "source":    the run and checkpoint it came from}
    OUT/vae/                the VAE the student's latents live in (diffusers folder), when the teacher has one
    OUT/whisper/<file>      the Whisper checkpoint (OpenAI tiny.pt or HF folder), when the teacher has one
    OUT/mask.png            the mask image, when the teacher uses one (else the built-in lower-face mask)

A null ``vae`` / ``whisper`` means the tiny preset's random modules (seed 0; deterministic), as in
``teacher.vae.load_vae(None)`` and ``teacher.audio.load_whisper(None)``.

``load`` needs torch, safetensors and the U-Net code only: no accelerate, DeepSpeed or peft.

    import student
    net = student.load("exports/toy")                  # StudentUNet in eval mode (carries its denoiser settings)
    eps = net(sample, t, audio_embeds, w)
    denoiser = student.load_denoiser("exports/toy")    # StudentDenoiser: (x_t, t, cond, audio, w) -> x0
    bundle = student.load_bundle("exports/toy")        # + VAE, Whisper, mask, chunk and step settings
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from student.denoiser import StudentDenoiser
from student.model import StudentUNet, student_state_for_export

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
INFERENCE_KEYS = ("resolution", "num_frames", "steps", "w", "vae", "whisper", "mask")


class NotAnExportError(FileNotFoundError):
    """A folder that is not a complete student export; the message names the folder and what is missing."""


def save(
    student: StudentUNet,
    out_dir: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
    inference: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the plain student to ``out_dir``; ``extra`` (JSON-ready) is stored under ``config["source"]``,
    ``inference`` (``INFERENCE_KEYS``, file names relative to ``out_dir``) under ``config["inference"]``;
    ``dtype`` casts the stored floating-point weights (e.g. float16 halves the file)."""
    state, config = student_state_for_export(student)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if inference is not None:
        missing = [k for k in INFERENCE_KEYS if k not in inference]
        if missing:
            raise ValueError(f"inference settings miss {missing}")
        config["inference"] = dict(inference)
    return save_state(state, config, out_dir, extra)


def save_state(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    out_dir: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an exported (state, config) pair; each file is written to a temporary name, then renamed
    (config.json last: its presence marks a complete export)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {**dict(config), **({"source": dict(extra)} if extra else {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(out / f".{MODEL_FILE}.tmp"), metadata={"format": str(config["format"])})
    os.chmod(out / f".{MODEL_FILE}.tmp", new_file_mode())  # safetensors creates its files 0600
    os.replace(out / f".{MODEL_FILE}.tmp", out / MODEL_FILE)
    (out / f".{CONFIG_FILE}.tmp").write_text(json.dumps(config, indent=1))
    os.replace(out / f".{CONFIG_FILE}.tmp", out / CONFIG_FILE)
    return out


def new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file: 0o666 less the process umask (0o644 under umask 022).
    The umask is read by setting it, so it is set to 0o077 for that instant (a racing thread's file comes
    out stricter, never wider)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of the export at ``path``; ``NotAnExportError`` when the folder is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise NotAnExportError(f"{folder}: no such folder (expected a student export from `turbosync export`)")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise NotAnExportError(f"{folder} is not an exported student: {name} is missing (run `turbosync export`)")
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise NotAnExportError(f"{folder / CONFIG_FILE} is not valid JSON ({err})") from None


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> StudentUNet:
    """The student exported to ``path`` (a folder with model.safetensors and config.json), in eval mode,
    carrying its ``denoiser_settings``. Reads only that folder. ``dtype`` None keeps the stored precision,
    except that half-precision weights are computed in float32 on the CPU."""
    config = read_config(path)
    try:
        weights = load_file(str(Path(path) / MODEL_FILE))
    except (SafetensorError, OSError) as err:
        raise NotAnExportError(f"{Path(path) / MODEL_FILE} is not readable safetensors ({err}): export again") from None
    student = StudentUNet.from_export(weights, config)
    if dtype is None and torch.device(device).type == "cpu" and student.dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return student.to(device=device, dtype=dtype)


def load_denoiser(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> StudentDenoiser:
    """``StudentDenoiser`` of the export at ``path`` with the settings it was distilled with."""
    return StudentDenoiser.from_student(load(path, device, dtype)).to(device)


@dataclass
class StudentBundle:
    """Everything inference needs, read from one export folder.

    denoiser: the student (x_t, t, cond, audio, w) -> x0. vae: ``teacher.vae.VideoVAE``. whisper:
    ``teacher.audio.WhisperAudioEncoder``. mask: pixel mask [R, R] float32 (1 = keep).
    resolution: face crop size R in px. num_frames: frames per U-Net chunk. steps: default sampler
    steps. w: guidance scale s fed to the student. noise_seed: seed of the stream's one noise frame
    (``inference.engine``; chosen per student by ``scripts/select_noise.py``, 0 when not recorded).
    """

    denoiser: StudentDenoiser
    vae: Any
    whisper: Any
    mask: torch.Tensor
    resolution: int
    num_frames: int
    steps: int
    w: float
    path: Path
    noise_seed: int = 0


def inference_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The ``inference`` section of an export, file entries resolved inside the folder; ``NotAnExportError``
    when it is absent (an export from before self-contained exports) or names a missing file."""
    folder = Path(path)
    config = read_config(folder)
    inf = config.get("inference")
    if not isinstance(inf, Mapping) or any(k not in inf for k in INFERENCE_KEYS):
        raise NotAnExportError(f"{folder} has no inference settings in {CONFIG_FILE}: export the run again "
                               "with this version of `turbosync export`")  # fmt: skip
    out = dict(inf)
    for key in ("vae", "whisper", "mask"):
        if out[key] is not None:
            full = folder / out[key]
            if not full.exists():
                raise NotAnExportError(f"{folder} is incomplete: {out[key]} ({key}) is missing")
            out[key] = str(full)
    return out


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                ) -> StudentBundle:  # fmt: skip
    """Student, VAE, Whisper and mask of the export at ``path`` (reads nothing outside it)."""
    from teacher.audio import load_whisper
    from teacher.conditioning import face_mask
    from teacher.loading import freeze
    from teacher.vae import load_vae

    inf = inference_settings(path)
    denoiser = load_denoiser(path, device, dtype)
    denoiser.net.requires_grad_(False)
    vae = freeze(load_vae(inf["vae"])).to(device)
    whisper = load_whisper(inf["whisper"], device=device)
    res = int(inf["resolution"])
    return StudentBundle(denoiser, vae, whisper, face_mask(res, inf["mask"]).to(device), res,
                         int(inf["num_frames"]), int(inf["steps"]), float(inf["w"]), Path(path),
                         int(inf.get("noise_seed", 0)))  # fmt: skip
