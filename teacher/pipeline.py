"""LatentSync inference, end to end: align faces, guided DDIM per 16-frame chunk, paste back.

Follows the official pipeline's conventions (DESIGN section 2): the reference frames are
the frames being edited, one frame of initial noise is repeated over the whole video, VAE
encoding samples the latent distribution, the decoded face keeps the original pixels
outside the mask, and the video is looped back and forth when the audio is longer.
Frames without a face pass through unchanged (and are counted) instead of crashing.

The clip is streamed, never held: frames are decoded, edited a chunk at a time and written
(``lipsync_stream``), Whisper features are computed one 30 s window at a time, and a looped
video is read back from a spill file (``teacher.video_source``); memory is that of a chunk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from teacher.audio import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from teacher.audio_windows import WhisperWindows
from teacher.media import trim_heap
from teacher.sampler import OFFICIAL_W
from teacher.video_source import VideoSource, pingpong_indices


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
        aligner=configs.instantiate(cfg.face) if "face" in cfg else FaceAligner(resolution=res),  # face: section
        mask=mask,
        timesteps=ddim_timesteps(n, sched.get("timestep_spacing", "leading"), steps_offset=sched["steps_offset"]),
        alphas_cumprod=alphas_cumprod(sched),
        w=float(cfg.sampler.w),
        num_frames=int(cfg.data.num_frames),
    )


def loop_frames(frames: np.ndarray, n: int) -> np.ndarray:
    """``n`` frames from the video, played forward then backward as often as needed (official looping)."""
    return np.asarray(frames)[pingpong_indices(n, len(frames))]


@dataclass
class LipsyncResult:
    """What a run did. ``frames`` is the edited clip when collected in memory (``lipsync``), None when
    streamed to a file (``run_teacher``)."""

    frames: np.ndarray | None  # [T, H, W, 3] uint8
    audio: np.ndarray  # float32 16 kHz, T s: the frames, ceil(T * 25), cover it
    num_frames: int = 0
    faceless: list[int] = field(default_factory=list)  # passed through: no face found
    too_small: list[int] = field(default_factory=list)  # passed through: only a face under the minimum box
    turned: list[int] = field(default_factory=list)  # passed through: the face turned away or in profile
    note: str = ""  # why faces were missed, when known (e.g. "face too small (43 x 49 px, minimum 50 x 80 px)")
    seconds: dict[str, float] = field(default_factory=dict)
    out_path: Path | None = None

    @property
    def edited(self) -> int:
        return self.num_frames - len(self.faceless)

    def summary(self) -> str:
        """One line: frames edited, passed through and why (with frame ranges), times, output."""
        from teacher.face import _ranges

        no_face = sorted(set(self.faceless) - set(self.too_small) - set(self.turned))
        why = [f"{len(no_face)} with no face ({_ranges(no_face)})"] if no_face else []
        if self.turned:
            why.append(f"{len(self.turned)} with the face turned away or in profile ({_ranges(self.turned)})")
        if self.too_small:
            why.append(f"{len(self.too_small)} with a {self.note or 'face too small'} ({_ranges(self.too_small)})")
        t = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        where = f" -> {self.out_path}" if self.out_path else ""
        passed = f"{len(self.faceless)} passed through" + (f": {'; '.join(why)}" if why else "")
        return f"{self.num_frames} frames: {self.edited} edited, {passed} ({t}){where}"


def lipsync(parts: TeacherParts, frames, audio: np.ndarray, seed: int = 0, progress: bool = True) -> LipsyncResult:
    """Re-synchronise the lips of ``frames`` (uint8 ``[T, H, W, 3]`` at 25 fps, or a video file) to
    ``audio`` (16 kHz mono) and return the edited clip in memory (``run_teacher`` streams to a file)."""
    out: list[np.ndarray] = []
    with as_source(frames) as source:
        result = lipsync_stream(parts, source, audio, out.append, seed=seed, progress=progress)
    result.frames = np.stack(out)
    return result


def as_source(video) -> VideoSource | nullcontext:
    """A context giving a ``VideoSource``: a new one (closed on exit) for an array or path, or ``video`` itself."""
    return nullcontext(video) if isinstance(video, VideoSource) else VideoSource(video)


def frame_features(whisper, audio: np.ndarray) -> WhisperWindows:
    """Whisper features for ``ceil(T * 25)`` output frames of 16 kHz audio lasting T s: the official features
    of the audio zero-padded to whole 640-sample frames. ValueError for audio shorter than one frame (40 ms)
    or unusable (see ``WhisperWindows``)."""
    x = np.asarray(audio)
    if x.ndim == 1 and x.shape[0] < SAMPLES_PER_FRAME:
        raise ValueError(f"audio of {x.shape[0]} samples is shorter than one video frame "
                         f"({SAMPLES_PER_FRAME} samples at 16 kHz)")  # fmt: skip
    short = -x.shape[0] % SAMPLES_PER_FRAME if x.ndim == 1 else 0
    return WhisperWindows(whisper, np.concatenate([x, np.zeros(short, x.dtype)]) if short else x)


def lipsync_stream(
    parts: TeacherParts,
    source: VideoSource,
    audio: np.ndarray,
    sink: Callable[[np.ndarray], Any],
    seed: int = 0,
    progress: bool = True,
    features: WhisperWindows | None = None,
) -> LipsyncResult:
    """Stream the teacher over ``source``: each output frame goes to ``sink`` in order, as soon as it is final.

    Memory is bounded by a chunk, not the clip: one iterator over the (looped) video aligns faces and
    generates each chunk of ``num_frames`` frames with a face; a second iterator, behind it, hands
    frames to ``sink``, swapping in the chunk's edited frames. Whisper features are computed one
    30 s window at a time (``WhisperWindows``). Same outputs as processing the whole clip at once:
    chunks hold the next ``num_frames`` frames with a face, the noise and VAE draws come from one
    generator in the same order. Audio of T s gives ``ceil(T * 25)`` frames (``frame_features``); ValueError
    when it is shorter than one video frame.
    """
    from tqdm import tqdm

    from teacher.face import too_small_message
    from teacher.sampler import repeated_noise

    feats = features if features is not None else frame_features(parts.whisper, audio)
    n = feats.num_frames
    result = LipsyncResult(frames=None, audio=np.asarray(audio, dtype=np.float32), num_frames=n)
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = parts.resolution // parts.vae.scale_factor
    noise = repeated_noise((1, 4, parts.num_frames, h, h), g)  # one noise frame for the whole video
    ahead, behind = source.frames(n), source.frames(n)
    written = 0
    bar = tqdm(total=n, desc="teacher", unit="frame", disable=not progress)
    t_align = t_gen = 0.0
    small = None  # the largest face seen but rejected as too small

    def generate_and_flush(chunk: list) -> None:
        """Edit one chunk, then hand every frame up to its last one to the sink."""
        nonlocal written, t_gen
        t0, f0 = time.perf_counter(), feats.seconds
        edited = _generate(parts, chunk, feats, noise, g) if chunk else {}
        t_gen += time.perf_counter() - t0 - (feats.seconds - f0)  # Whisper windows count as audio time
        for i in range(written, chunk[-1][0] + 1 if chunk else n):
            frame = next(behind)
            sink(edited.pop(i, frame))
            written += 1
            bar.update()
        trim_heap()  # the chunk's frames and tensors are freed: give the pages back

    state, chunk = None, []
    try:
        for i, frame in enumerate(ahead):
            t0 = time.perf_counter()
            face, state = parts.aligner.align_step(frame, state)
            if face is None:
                result.faceless.append(i)
                seen = getattr(parts.aligner.landmarker, "too_small", None)
                if seen is not None:
                    result.too_small.append(i)
                    small = seen if small is None or seen[0] * seen[1] > small[0] * small[1] else small
                elif getattr(parts.aligner.landmarker, "turned_away", False):
                    result.turned.append(i)
            else:
                chunk.append((i, frame, face))
            t_align += time.perf_counter() - t0
            if len(chunk) == parts.num_frames:
                generate_and_flush(chunk)
                chunk = []
        if chunk:
            generate_and_flush(chunk)
        generate_and_flush([])  # the frames after the last face
    finally:
        bar.close()
        ahead.close()
        behind.close()
    parts.aligner.too_small = small
    result.note = too_small_message(parts.aligner) if small else ""
    result.seconds = {"audio": feats.seconds, "align": t_align, "generate": t_gen}
    return result


def _generate(
    parts: TeacherParts, chunk: list, feats: WhisperWindows, noise: torch.Tensor, g: torch.Generator
) -> dict[int, np.ndarray]:
    """One chunk of frames with a face, ``[(index, frame, AlignedFace)]`` -> {index: edited frame}."""
    from teacher.conditioning import (
        composite,
        crops_to_pixels,
        encode_condition,
        latent_mask,
        paste_faces,
        pixels_to_uint8,
    )
    from teacher.sampler import sample_ddim

    device = parts.mask.device
    dtype = next(parts.unet.parameters()).dtype
    h = parts.resolution // parts.vae.scale_factor
    mask_px = parts.mask[:, :, None]  # [1, 1, 1, res, res]
    idx = [i for i, _, _ in chunk]
    f = len(idx)
    audio_embeds = feats.frames(idx)  # [F, 50, 384]
    pixels = crops_to_pixels(np.stack([a.crop for _, _, a in chunk]))[None].to(device)  # [1, 3, F, res, res]
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
            audio_embeds[None].to(device, dtype),
            w=parts.w,
            alphas_cumprod=parts.alphas_cumprod,
        )
        face = composite(parts.vae.decode(x0.float()), pixels, mask_px, matched=True)  # original outside the mask
    faces = pixels_to_uint8(face[0].permute(1, 2, 3, 0)).cpu().numpy()
    pasted = paste_faces([fr for _, fr, _ in chunk], faces, [a for _, _, a in chunk], parts.aligner, mask=parts.mask)
    return dict(zip(idx, pasted))


def run_teacher(
    cfg, video, audio, out_path, steps=None, seed: int = 0, device: str = "cpu", progress: bool = True
) -> LipsyncResult:
    """Build the teacher from ``cfg``, lip-sync ``video`` (uint8 ``[T, H, W, 3]`` at 25 fps, a video
    file or a ``VideoSource``) to ``audio`` (16 kHz mono) and stream the frames into an mp4 with the audio.

    Unusable inputs raise (``MediaError`` / ValueError) before the output's folder is created; a
    failure mid-run leaves no output file and removes the folders this call created.
    """
    from teacher.media import VideoWriter

    out_path = Path(out_path)
    with as_source(video) as source:
        parts = build_teacher_parts(cfg, steps=steps, device=device)
        features = frame_features(parts.whisper, audio)  # checks the audio before any output
        created = [p for p in (out_path.parent, *out_path.parent.parents) if not p.exists()]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            x = np.asarray(audio, dtype=np.float32)  # T s under ceil(T * 25) frames
            with VideoWriter(out_path, VIDEO_FPS, sample_rate=SAMPLE_RATE) as writer:

                def sink(frame: np.ndarray) -> None:
                    """Each frame with its 40 ms of audio: the muxer's interleaving queue stays short (the
                    whole track written first sat in it until the video caught up: 1.4 MB per second)."""
                    k = writer.frames_written
                    writer.write(frame)
                    writer.write_audio(x[k * SAMPLES_PER_FRAME : (k + 1) * SAMPLES_PER_FRAME])

                result = lipsync_stream(parts, source, audio, sink, seed=seed, progress=progress, features=features)
        except BaseException:
            for p in created:  # innermost first; only folders this call made, and only if empty
                if p.is_dir() and not any(p.iterdir()):
                    os.rmdir(p)
            raise
    result.out_path = out_path
    return result
