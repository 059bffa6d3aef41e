"""LatentSync inference, end to end: align faces, guided DDIM per 16-frame chunk, paste back.

Follows the official pipeline's conventions (DESIGN section 2): the reference frames are
the frames being edited, one frame of initial noise is repeated over the whole video, VAE
encoding samples the latent distribution, the decoded face keeps the original pixels
outside the mask, and the video is looped back and forth when the audio is longer.
Frames without a face pass through unchanged (and are counted) instead of crashing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from teacher.audio import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from teacher.sampler import OFFICIAL_W


@dataclass
class TeacherParts:
    """Everything LatentSync inference needs, built once."""

    unet: torch.nn.Module
    vae: Any  # teacher.vae.VideoVAE
    whisper: Any  # teacher.audio.WhisperAudioEncoder
    aligner: Any  # teacher.face.FaceAligner
    mask: torch.Tensor  # [1, 1, res, res], 1 = keep
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    w: float = OFFICIAL_W  # guidance scale s
    num_frames: int = 16

    @property
    def resolution(self) -> int:
        return self.mask.shape[-1]


def build_teacher_parts(cfg, steps: int | None = None, device: str = "cpu") -> TeacherParts:
    """Instantiate U-Net, VAE, Whisper, face aligner, mask and DDIM schedule from a teacher config
    (a ``configs/teacher`` preset); ``steps`` overrides ``sampler.num_inference_steps``."""
    import configs
    from teacher.conditioning import face_mask
    from teacher.face import FaceAligner
    from teacher.loading import freeze
    from teacher.sampler import alphas_cumprod, ddim_timesteps

    res = int(cfg.data.resolution)
    unet = freeze(configs.instantiate(cfg.unet)).to(device)
    vae = freeze(configs.instantiate(cfg.vae)).to(device)
    whisper = configs.instantiate(cfg.whisper)
    mask = face_mask(res, cfg.data.get("mask_image_path"))[None, None].to(device)
    sched = dict(cfg.scheduler.config)
    n = steps or int(cfg.sampler.num_inference_steps)
    return TeacherParts(
        unet=unet,
        vae=vae,
        whisper=whisper,
        aligner=FaceAligner(resolution=res),
        mask=mask,
        timesteps=ddim_timesteps(n, sched.get("timestep_spacing", "leading"), steps_offset=sched["steps_offset"]),
        alphas_cumprod=alphas_cumprod(sched),
        w=float(cfg.sampler.w),
        num_frames=int(cfg.data.num_frames),
    )


def loop_frames(frames: np.ndarray, n: int) -> np.ndarray:
    """``n`` frames from the video, played forward then backward as often as needed (official looping)."""
    if len(frames) >= n:
        return frames[:n]
    cycle = np.concatenate([frames, frames[::-1]]) if len(frames) > 1 else frames
    reps = -(-n // len(cycle))
    return np.concatenate([cycle] * reps)[:n]


@dataclass
class LipsyncResult:
    frames: np.ndarray  # [T, H, W, 3] uint8
    audio: np.ndarray  # float32, trimmed to the frames
    faceless: list[int] = field(default_factory=list)
    note: str = ""  # why faces were missed, when known (e.g. "face too small (43 x 49 px, minimum 50 x 80 px)")
    seconds: dict[str, float] = field(default_factory=dict)
    out_path: Path | None = None

    def summary(self) -> str:
        t = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        where = f" -> {self.out_path}" if self.out_path else ""
        note = f" [{self.note}]" if self.note else ""
        return f"{len(self.frames)} frames, {len(self.faceless)} without a face passed through{note} ({t}){where}"


def lipsync(
    parts: TeacherParts, frames: np.ndarray, audio: np.ndarray, seed: int = 0, progress: bool = True
) -> LipsyncResult:
    """Re-synchronise the lips of ``frames`` (uint8 ``[T, H, W, 3]`` at 25 fps) to ``audio`` (16 kHz mono)."""
    from tqdm import tqdm

    from teacher.audio import whisper_features
    from teacher.conditioning import (
        composite,
        crops_to_pixels,
        encode_condition,
        latent_mask,
        paste_faces,
        pixels_to_uint8,
    )
    from teacher.face import align_video, too_small_message
    from teacher.sampler import repeated_noise, sample_ddim

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    audio_embeds = whisper_features(audio, parts.whisper)  # [N, 50, 384]
    n = audio_embeds.shape[0]
    if n == 0:
        raise ValueError(f"audio of {len(audio)} samples is shorter than one video frame (640 samples at 16 kHz)")
    frames = loop_frames(np.asarray(frames), n)
    times["audio"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    aligned = align_video(frames, parts.aligner)
    with_face = [i for i, a in enumerate(aligned) if a is not None]
    times["align"] = time.perf_counter() - t0

    device = parts.mask.device
    dtype = next(parts.unet.parameters()).dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = parts.resolution // parts.vae.scale_factor
    noise = repeated_noise((1, 4, parts.num_frames, h, h), g)  # one noise frame for the whole video
    out = frames.copy()
    t_gen = time.perf_counter()
    chunks = [with_face[i : i + parts.num_frames] for i in range(0, len(with_face), parts.num_frames)]
    mask_px = parts.mask[:, :, None]  # [1, 1, 1, res, res]
    for idx in tqdm(chunks, desc="teacher chunks", disable=not progress):
        f = len(idx)
        pixels = crops_to_pixels(np.stack([aligned[i].crop for i in idx]))[None].to(device)  # [1, 3, F, res, res]
        with torch.no_grad():
            masked_lat, ref_lat = encode_condition(parts.vae, pixels, mask_px, generator=g)
            mask_lat = latent_mask(mask_px.expand(-1, -1, f, -1, -1), h)  # [1, 1, F, h, h]
            x0 = sample_ddim(
                parts.unet,
                parts.timesteps,
                noise[:, :, :f].to(device, dtype),
                mask_lat.to(dtype),
                masked_lat.to(dtype),
                ref_lat.to(dtype),
                audio_embeds[idx][None].to(device, dtype),
                w=parts.w,
                alphas_cumprod=parts.alphas_cumprod,
            )
            face = composite(parts.vae.decode(x0.float()), pixels, mask_px)  # keep pixels outside the mask
        faces = pixels_to_uint8(face[0].permute(1, 2, 3, 0)).cpu().numpy()
        pasted = paste_faces([frames[i] for i in idx], faces, [aligned[i] for i in idx], parts.aligner)
        for i, frame in zip(idx, pasted):
            out[i] = frame
    times["generate"] = time.perf_counter() - t_gen
    return LipsyncResult(
        frames=out,
        audio=np.asarray(audio, dtype=np.float32)[: n * SAMPLES_PER_FRAME],
        faceless=[i for i, a in enumerate(aligned) if a is None],
        note=too_small_message(parts.aligner) if parts.aligner.too_small else "",
        seconds=times,
    )


def run_teacher(cfg, frames, audio, out_path, steps=None, seed: int = 0, device: str = "cpu") -> LipsyncResult:
    """Build the teacher from ``cfg``, lip-sync ``frames`` to ``audio`` and write an mp4 with the audio."""
    from teacher.media import write_video

    parts = build_teacher_parts(cfg, steps=steps, device=device)
    result = lipsync(parts, frames, audio, seed=seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_video(out_path, result.frames, fps=VIDEO_FPS, audio=result.audio, sample_rate=SAMPLE_RATE)
    result.out_path = out_path
    return result
