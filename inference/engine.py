"""The streaming lip-sync engine: audio chunks in, lip-synced frames out at 25 fps (STYLE 9, explicit state).

    state = start(avatar, bundle, cfg)            # avatar: inference.avatar.Avatar; bundle: student.load_bundle(...)
    frames, state = step(state, audio_chunk)      # 16 kHz mono float32 of any size -> list of uint8 [H, W, 3]
    frames, state = flush(state)                  # the frames the 120 ms lookahead held back, at the end

Per chunk of C frames (DESIGN section 5): streaming Whisper features (``inference.audio_stream``; a frame is
ready once 120 ms of audio past it has arrived), the cached masked / reference latents of the avatar frames
(``pingpong`` looping), K context frames carried from before the chunk (the window [a - K, a + C) goes
through the U-Net; GroupNorm statistics and temporal attention then span the seam; only the C new frames
are kept), one noise frame repeated over the whole stream as LatentSync does, the 1-4 step student sampler
(``student.sample_lcm``, LCMScheduler timesteps, per-frame re-noising drawn from a generator seeded by
(seed, chunk index), so the output does not depend on how the audio was cut), decode with the full VAE or a
tiny decoder, composite inside the mask and paste back. Frames without a face pass through.

Chunks sit on a fixed grid of frame indices, so feeding the audio in one piece or in 20 ms pieces gives
the same frames. Degradation (``cfg.degrade``) only acts when the engine is paced by a wall clock
(``start(..., clock=time.perf_counter)``): when a chunk finishes after its frames were due, the next chunk
drops to 1 step, then to the tiny decoder, then to pass-through frames, and climbs back when compute has
slack; every level change is counted in ``state.stats``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from inference.audio_stream import StreamConfig, stream_flush, stream_push, stream_start
from inference.avatar import Avatar, pingpong

LEVELS = ("full", "one_step", "tiny_decoder", "pass_through")
FRAME_SECONDS = 0.04
MAX_POSITIONS = 24  # the motion modules' sinusoidal positions (DESIGN section 2)


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings (``configs/engine/*.yaml``).

    chunk: C new frames per U-Net call (1-16). context: K frames of temporal context carried over
    (C + K <= 24). steps: sampler steps (1-4; None = the export's default). decoder: "vae" or "tiny".
    degrade: allow degradation when paced by a clock. threads: torch threads (None = leave as is).
    seed: the stream's noise frame (None = the export's ``noise_seed``, chosen for the student by
    ``scripts/select_noise.py``; 0 when the export records none). renoise: ``sample_lcm``'s re-noising for
    steps > 1. audio: streaming Whisper settings. w: guidance scale s fed to the student (None = the
    export's). blend: cross-fade the K frames two windows share (their x0 latents, weights (j + 1) / (K + 1)
    toward the newer window), which holds K frames back (latency + K frames); needs chunk >= context.
    """

    chunk: int = 4
    context: int = 4
    steps: int | None = None
    decoder: str = "vae"
    degrade: bool = True
    threads: int | None = None
    seed: int | None = None
    renoise: str = "per_frame"
    w: float | None = None
    blend: bool = False
    audio: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self):
        for name in ("chunk", "context", "steps", "threads", "seed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.chunk <= 16:
            raise ValueError(f"chunk must be 1-16 frames, got {self.chunk}")
        if self.context < 0 or self.chunk + self.context > MAX_POSITIONS:
            raise ValueError(f"chunk + context must be at most {MAX_POSITIONS} (got {self.chunk} + {self.context})")
        if self.steps is not None and not 1 <= self.steps <= 4:
            raise ValueError(f"steps must be 1-4, got {self.steps}")
        if self.blend and self.chunk < self.context:
            raise ValueError(f"blend needs chunk >= context (got {self.chunk} < {self.context})")
        if self.decoder not in ("vae", "tiny"):
            raise ValueError(f"decoder must be 'vae' or 'tiny', got {self.decoder!r}")


@dataclass
class EngineState:
    """Everything the engine carries between calls. ``next_frame``: index of the next frame to generate;
    ``feats``: Whisper token sets of frames ``[feat_start, feat_start + len)`` not yet consumed (the
    last K kept as context); ``level``: the degradation level (index into ``LEVELS``)."""

    cfg: EngineConfig
    bundle: Any
    avatar: Avatar
    decoders: dict[str, Any]
    audio: Any
    noise: torch.Tensor
    mask_px: torch.Tensor
    feats: torch.Tensor
    feat_start: int = 0
    next_frame: int = 0
    level: int = 0
    held: torch.Tensor | None = None  # blend: x0 [1, 4, K, h, w] of the K frames before next_frame, not emitted yet
    aligner: Any = None
    clock: Callable[[], float] | None = None
    t0: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def start(avatar: Avatar, bundle, cfg: EngineConfig | None = None, tiny_decoder=None,
          clock: Callable[[], float] | None = None) -> EngineState:  # fmt: skip
    """A fresh stream for ``avatar`` with the student ``bundle``; ``tiny_decoder`` is needed for
    ``decoder="tiny"`` and used by degradation; ``clock`` (e.g. ``time.perf_counter``) paces the stream."""
    from teacher.face import FaceAligner
    from teacher.sampler import repeated_noise

    cfg = cfg or EngineConfig()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.decoder == "tiny" and tiny_decoder is None:
        raise ValueError("decoder='tiny' needs a tiny decoder (teacher.tiny_decoder.load_tiny_decoder)")
    if avatar.resolution != bundle.resolution:
        raise ValueError(f"the avatar is {avatar.resolution} px, the student {bundle.resolution} px")
    dev = bundle.denoiser.alphas_cumprod.device
    h = avatar.masked_latents.shape[-1]
    g = torch.Generator().manual_seed(stream_seed(cfg, bundle))
    noise = repeated_noise((1, 4, 1, h, h), g).to(dev)  # one noise frame for the whole stream
    feats = torch.zeros(0)  # the first features set the token shape
    stats = {"frames": 0, "chunks": 0, "passed_through_faceless": 0, "levels": dict.fromkeys(LEVELS, 0),
             "seconds": {"audio": 0.0, "unet": 0.0, "decode": 0.0, "paste": 0.0}}  # fmt: skip
    return EngineState(cfg, bundle, avatar, {"vae": bundle.vae, "tiny": tiny_decoder},
                       stream_start(bundle.whisper, cfg.audio), noise, bundle.mask[None, None, None].to(dev),
                       feats, aligner=FaceAligner(avatar.resolution, landmarker=_NoLandmarker()), clock=clock,
                       stats=stats)  # fmt: skip


def stream_seed(cfg: EngineConfig, bundle) -> int:
    """The seed of the stream's one noise frame: ``cfg.seed``, else the export's ``noise_seed``."""
    return int(cfg.seed if cfg.seed is not None else getattr(bundle, "noise_seed", 0))


def step(state: EngineState, audio_chunk: np.ndarray) -> tuple[list[np.ndarray], EngineState]:
    """Push 16 kHz mono float32 audio; returns the frames that became ready (uint8 [H, W, 3] each)."""
    if state.clock is not None and state.t0 is None:
        state.t0 = state.clock()
    t = time.perf_counter()
    new, state.audio = stream_push(state.audio, audio_chunk)
    state.stats["seconds"]["audio"] += time.perf_counter() - t
    _append(state, new)
    frames = []
    while _ready(state) >= state.cfg.chunk:
        frames += _generate(state, state.cfg.chunk)
    return frames, state


def flush(state: EngineState) -> tuple[list[np.ndarray], EngineState]:
    """End of the audio: the remaining frames (ceil(samples / 640) frames in all)."""
    t = time.perf_counter()
    new, state.audio = stream_flush(state.audio)
    state.stats["seconds"]["audio"] += time.perf_counter() - t
    _append(state, new)
    frames = []
    while _ready(state) > 0:
        n = min(state.cfg.chunk, _ready(state))
        frames += _generate(state, n, final=n == _ready(state))
    if _held(state):  # the stream ended exactly on a chunk boundary: the held frames leave as they are
        k = _held(state)
        frames += _emit(state, state.held, pingpong(np.arange(state.next_frame - k, state.next_frame),
                                                    state.avatar.num_frames), "full")  # fmt: skip
        state.held = None
    return frames, state


def _append(state: EngineState, new: torch.Tensor) -> None:
    if len(new):
        state.feats = new if state.feats.numel() == 0 else torch.cat([state.feats, new])


def _ready(state: EngineState) -> int:
    """Frames with features that are not generated yet."""
    return state.feat_start + len(state.feats) - state.next_frame


def _steps(state: EngineState) -> int:
    base = state.cfg.steps or state.bundle.steps
    return 1 if LEVELS[state.level] != "full" else base


@torch.no_grad()
def _generate(state: EngineState, n: int, final: bool = False) -> list[np.ndarray]:
    """Generate frames [next_frame, next_frame + n) with up to K context frames before them. With
    ``cfg.blend``, the last K frames are held back (``final``: none) and the held frames of the previous
    window are cross-faded with this window's prediction of them before they leave."""
    cfg, av = state.cfg, state.avatar
    a = state.next_frame
    idx, src, k = window_frames(a, n, cfg.context, av.num_frames)
    t_chunk = time.perf_counter()
    level = LEVELS[state.level] if cfg.degrade and state.clock is not None else "full"
    if level == "pass_through":
        out = _emit(state, state.held, src[k - _held(state) : k], level) if _held(state) else []
        out += [np.array(av.frames[s]) for s in src[k:]]
        state.held = None
    else:
        out = _run_window(state, idx, src, k, level, hold=0 if final or not cfg.blend else cfg.context)
    _advance(state, a + n, level, len(out), time.perf_counter() - t_chunk)
    return out


def window_frames(a: int, n: int, context: int, num_avatar_frames: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The window of the chunk that generates frames [a, a + n): (stream frame indices [k + n], avatar frames
    (ping-pong) [k + n], k = the number of context frames before a, at most ``context``)."""
    k = min(context, a)
    idx = np.arange(a - k, a + n)
    return idx, pingpong(idx, num_avatar_frames), k


def _held(state: EngineState) -> int:
    return 0 if state.held is None else state.held.shape[2]


@dataclass
class Window:
    """One U-Net call's inputs: frames ``idx`` (the last ``len(idx) - k`` are new), avatar frames ``src``."""

    idx: np.ndarray
    src: np.ndarray
    k: int
    latents: tuple[torch.Tensor, ...]  # noise, latent mask, masked, ref, audio: [1, C, F, h, w] / [1, F, 50, 384]
    steps: int
    seed: int


def window(state: EngineState, idx: np.ndarray, src: np.ndarray, k: int) -> Window:
    """Gather a window's inputs from the avatar cache and the feature buffer (no model call)."""
    from teacher.conditioning import latent_mask

    av, den = state.avatar, state.bundle.denoiser
    dev, dtype = den.alphas_cumprod.device, den.net.dtype
    face_src = np.where(av.has_face[src], src, int(np.argmax(av.has_face)))  # faceless: any face's latents
    f, h = len(idx), av.masked_latents.shape[-1]

    def cached(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([arr[s] for s in face_src])).permute(1, 0, 2, 3)[None].to(dev, dtype)

    mask_lat = latent_mask(state.mask_px.expand(1, 1, f, -1, -1), h).to(dtype)
    audio = state.feats[idx - state.feat_start][None].to(dev, dtype)
    noise = state.noise.expand(-1, -1, f, -1, -1).to(dtype)
    seed = stream_seed(state.cfg, state.bundle) * 1_000_003 + int(idx[k])  # per chunk: not how the audio was cut
    return Window(idx, src, k, (noise, mask_lat, cached(av.masked_latents), cached(av.ref_latents), audio),
                  _steps(state), seed)  # fmt: skip


def denoise(state: EngineState, win: Window) -> torch.Tensor:
    """The student sampler on a window; x0 of all its frames [1, 4, F, h, w] (context frames included)."""
    from student.sampler import lcm_timesteps, sample_lcm

    den = state.bundle.denoiser
    ts = lcm_timesteps(win.steps, den.settings.num_ddim_timesteps, den.settings.num_train_timesteps)
    g = torch.Generator().manual_seed(win.seed)
    return sample_lcm(den, ts, *win.latents, w=state.cfg.w or state.bundle.w, generator=g, renoise=state.cfg.renoise)


def decode(state: EngineState, x0: torch.Tensor, src: np.ndarray, level: str = "full") -> np.ndarray:
    """Decode x0 and composite inside the mask over the avatar's crops: uint8 faces [F, R, R, 3]."""
    from teacher.conditioning import composite, crops_to_pixels, pixels_to_uint8

    cfg, av = state.cfg, state.avatar
    decoder = state.decoders["tiny" if level == "tiny_decoder" or cfg.decoder == "tiny" else "vae"]
    pixels = crops_to_pixels(np.stack([av.crops[s] for s in src]))[None].to(x0.device)
    face = composite(decoder.decode(x0.float()).float(), pixels, state.mask_px[:, :, 0:1], matched=True)
    return pixels_to_uint8(face[0].permute(1, 2, 3, 0)).cpu().numpy()


def paste(state: EngineState, faces: np.ndarray, src: np.ndarray) -> list[np.ndarray]:
    """Full frames: the avatar's frames ``src`` with ``faces`` pasted back; faceless frames pass through."""
    from teacher.conditioning import paste_faces

    av = state.avatar
    out = [np.array(av.frames[s]) for s in src]
    with_face = [j for j, s in enumerate(src) if av.has_face[s]]
    dev = state.bundle.denoiser.alphas_cumprod.device
    if dev.type == "cuda" and with_face:  # one batched warp on the GPU instead of a per-frame OpenCV loop
        return _paste_on_device(state, out, faces, src, with_face, dev)
    pasted = paste_faces([out[j] for j in with_face], faces[with_face], [av.aligned(src[j]) for j in with_face],
                         state.aligner, mask=state.mask_px)  # fmt: skip
    for j, frame in zip(with_face, pasted):
        out[j] = frame
    return out


def _paste_on_device(state: EngineState, out: list[np.ndarray], faces: np.ndarray, src: np.ndarray,
                     with_face: list[int], dev: torch.device) -> list[np.ndarray]:  # fmt: skip
    """``paste`` as one batched ``grid_sample`` warp on the GPU (``teacher.conditioning.paste_faces_torch``)."""
    from teacher.conditioning import paste_faces_torch

    frames = torch.from_numpy(np.stack([out[j] for j in with_face])).to(dev).permute(0, 3, 1, 2).float()
    crops = torch.from_numpy(faces[with_face]).to(dev).permute(0, 3, 1, 2).float()
    matrices = torch.from_numpy(np.stack([np.asarray(state.avatar.matrices[src[j]]) for j in with_face])).to(dev)
    pasted = paste_faces_torch(frames, crops, matrices, mask=state.mask_px)
    pasted = pasted.round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    for j, frame in zip(with_face, pasted):
        out[j] = frame
    return out


def _run_window(state: EngineState, idx: np.ndarray, src: np.ndarray, k: int, level: str, hold: int = 0
                ) -> list[np.ndarray]:  # fmt: skip
    """window -> denoise (-> cross-fade the held frames) -> decode -> paste, each stage timed into
    ``state.stats["seconds"]``; the last ``hold`` frames' x0 stay in ``state.held``."""
    secs = state.stats["seconds"]
    t = time.perf_counter()
    x0 = denoise(state, window(state, idx, src, k))
    secs["unet"] += time.perf_counter() - t
    first = k  # index in the window of the first frame to emit
    held = _held(state)
    if held:  # the held frames are the window's last ``held`` context frames: cross-fade, then emit them
        alpha = torch.arange(1, held + 1, dtype=x0.dtype, device=x0.device).div(held + 1).view(1, 1, -1, 1, 1)
        x0[:, :, k - held : k] = (1 - alpha) * state.held.to(x0.dtype) + alpha * x0[:, :, k - held : k]
        first = k - held
    end = len(idx) - hold
    state.held = x0[:, :, end:].clone() if hold else None
    return _emit(state, x0[:, :, first:end], src[first:end], level)


def _emit(state: EngineState, x0: torch.Tensor, src: np.ndarray, level: str) -> list[np.ndarray]:
    """Decode, composite and paste x0 of frames ``src``; stage times into ``state.stats``."""
    secs = state.stats["seconds"]
    if len(src) == 0:
        return []
    t = time.perf_counter()
    faces = decode(state, x0, src, level)
    secs["decode"] += time.perf_counter() - t
    t = time.perf_counter()
    out = paste(state, faces, src)
    secs["paste"] += time.perf_counter() - t
    state.stats["passed_through_faceless"] += int((~state.avatar.has_face[src]).sum())
    return out


class _NoLandmarker:
    """Stands in for the landmark detector: the engine only pastes back faces the avatar already aligned."""

    def __call__(self, frame):  # pragma: no cover - never called: the avatar is already aligned
        raise RuntimeError("the engine pastes back prepared faces; it does not detect landmarks")


def _advance(state: EngineState, next_frame: int, level: str, n: int, seconds: float) -> None:
    """Move the stream forward: drop consumed features (keep K for context) and update the pacing."""
    state.next_frame = next_frame
    keep_from = max(0, next_frame - state.cfg.context)
    drop = keep_from - state.feat_start
    if drop > 0:
        state.feats = state.feats[drop:]
        state.feat_start = keep_from
    s = state.stats
    s["frames"] += n
    s["chunks"] += 1
    s["levels"][level] += n
    if state.clock is None or not state.cfg.degrade:
        return
    due = state.t0 + next_frame * FRAME_SECONDS + _latency_budget(state)  # when the last frame must be out
    late = state.clock() > due
    if late and state.level < len(LEVELS) - 1:
        state.level += 1
        if LEVELS[state.level] == "tiny_decoder" and (state.decoders["tiny"] is None or state.cfg.decoder == "tiny"):
            state.level += 1  # no cheaper decoder to fall back to
    elif not late and state.level > 0 and seconds < 0.5 * n * FRAME_SECONDS:
        state.level -= 1
        if LEVELS[state.level] == "tiny_decoder" and (state.decoders["tiny"] is None or state.cfg.decoder == "tiny"):
            state.level -= 1


def _latency_budget(state: EngineState) -> float:
    """Seconds a frame may take after its audio started: the lookahead, one chunk, and one chunk of compute."""
    return 0.12 + 2 * state.cfg.chunk * FRAME_SECONDS


def with_overrides(cfg: EngineConfig, **kw: Any) -> EngineConfig:
    """``cfg`` with the non-None keyword values replaced (CLI options over a preset)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
