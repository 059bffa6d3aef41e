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
import torch.nn.functional as F

FPS = 25
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


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
    guidance_scale: float = 1.5
    num_frames: int = 16

    @property
    def resolution(self) -> int:
        return self.mask.shape[-1]


def build_teacher(cfg, steps: int | None = None, device: str = "cpu") -> TeacherParts:
    """Instantiate U-Net, VAE, Whisper, face aligner, mask and DDIM schedule from a teacher config."""
    import configs
    from teacher.face import FaceAligner, load_mask_image, lower_face_mask
    from teacher.loading import freeze
    from teacher.sampler import alphas_cumprod, ddim_timesteps

    res = int(cfg.data.resolution)
    unet = freeze(configs.instantiate(cfg.unet)).to(device)
    vae = freeze(configs.instantiate(cfg.vae)).to(device)
    whisper = configs.instantiate(cfg.whisper)
    mask_path = cfg.data.get("mask_image_path")
    mask = load_mask_image(mask_path, res) if mask_path else lower_face_mask(res)
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None].to(device)
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
        guidance_scale=float(cfg.sampler.guidance_scale),
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
    seconds: dict[str, float] = field(default_factory=dict)
    out_path: Path | None = None

    def summary(self) -> str:
        t = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        where = f" -> {self.out_path}" if self.out_path else ""
        return f"{len(self.frames)} frames, {len(self.faceless)} without a face passed through ({t}){where}"


def to_pixels(crops: np.ndarray, device) -> torch.Tensor:
    """uint8 ``[F, res, res, 3]`` -> float ``[1, 3, F, res, res]`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).to(device).float() / 127.5 - 1.0
    return x.permute(3, 0, 1, 2)[None]


def lipsync(
    parts: TeacherParts, frames: np.ndarray, audio: np.ndarray, seed: int = 0, progress: bool = True
) -> LipsyncResult:
    """Re-synchronise the lips of ``frames`` (uint8 ``[T, H, W, 3]`` at 25 fps) to ``audio`` (16 kHz mono)."""
    from tqdm import tqdm

    from teacher.audio import whisper_features
    from teacher.face import align_video
    from teacher.sampler import sample_ddim

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
    noise_frame = torch.randn(1, 4, 1, h, h, generator=g)  # one noise frame for the whole video
    out = frames.copy()
    t_gen = time.perf_counter()
    chunks = [with_face[i : i + parts.num_frames] for i in range(0, len(with_face), parts.num_frames)]
    for idx in tqdm(chunks, desc="teacher chunks", disable=not progress):
        crops = np.stack([aligned[i].crop for i in idx])
        pixels = to_pixels(crops, device)  # [1, 3, F, res, res]
        mask_px = parts.mask[:, :, None]  # [1, 1, 1, res, res]
        with torch.no_grad():
            masked_lat = parts.vae.encode(pixels * mask_px, generator=g)
            ref_lat = parts.vae.encode(pixels, generator=g)
            f = len(idx)
            mask_lat = F.interpolate(parts.mask, size=(h, h)).expand(f, -1, -1, -1)
            mask_lat = mask_lat.permute(1, 0, 2, 3)[None]  # [1, 1, F, h, h]
            x0 = sample_ddim(
                parts.unet,
                parts.timesteps,
                noise_frame.expand(-1, -1, f, -1, -1).to(device, dtype),
                mask_lat.to(dtype),
                masked_lat.to(dtype),
                ref_lat.to(dtype),
                audio_embeds[idx][None].to(device, dtype),
                guidance_scale=parts.guidance_scale,
                alphas_cumprod=parts.alphas_cumprod,
            )
            decoded = parts.vae.decode(x0.float())
            face = decoded * (1 - mask_px) + pixels * mask_px  # keep pixels outside the mask
        face = face[0].permute(1, 2, 3, 0).clamp(-1, 1).add(1).mul(127.5).round().byte().cpu().numpy()
        for j, i in enumerate(idx):
            out[i] = parts.aligner.restore(frames[i], face[j], aligned[i])
    times["generate"] = time.perf_counter() - t_gen
    return LipsyncResult(
        frames=out,
        audio=np.asarray(audio, dtype=np.float32)[: n * SAMPLES_PER_FRAME],
        faceless=[i for i, a in enumerate(aligned) if a is None],
        seconds=times,
    )


def run_teacher(cfg, frames, audio, out_path, steps=None, seed: int = 0, device: str = "cpu") -> LipsyncResult:
    """Build the teacher from ``cfg``, lip-sync ``frames`` to ``audio`` and write an mp4 with the audio."""
    from teacher.media import write_video

    parts = build_teacher(cfg, steps=steps, device=device)
    result = lipsync(parts, frames, audio, seed=seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_video(out_path, result.frames, fps=FPS, audio=result.audio, sample_rate=16000)
    result.out_path = out_path
    return result
