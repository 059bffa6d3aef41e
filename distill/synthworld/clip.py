"""Clips of the synthetic world: arrays in memory, mp4 + JSON sidecar on disk, data sets."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import speaker_for_identity, synthesize
from .faces import IDENTITY_NAMES, NUM_IDENTITIES, face_model
from .phonemes import SHAPE_NAMES, Segment, frame_truth, sample_timeline
from .render import blink_track, face_boxes, head_motion, render_frames

VERSION = 1


@dataclass
class SynthClip:
    """One talking-face clip. ``T = round(seconds * fps)`` frames, ``N = T * sample_rate / fps`` samples."""

    frames: np.ndarray  # [T, R, R, 3] uint8 RGB
    audio: np.ndarray  # [N] float32 mono in [-1, 1]
    sample_rate: int
    fps: int
    mouth_open: np.ndarray  # [T] float32, 0 closed .. 1 wide open (inner-lip distance)
    mouth_shape: np.ndarray  # [T] int64, SHAPE_* class of the phoneme at the frame centre
    phoneme: np.ndarray  # [T] str, phoneme label at the frame centre
    identity: int
    seed: int
    mouth_width: np.ndarray  # [T] float32, 0 rounded .. 1 spread
    blink: np.ndarray  # [T] float32 eyelid closure
    face_box: np.ndarray  # [T, 4] float32 (x0, y0, x1, y1) frame pixels
    timeline: list[Segment] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def sidecar(self) -> dict:
        """JSON-serialisable ground truth (everything except the pixels and samples)."""
        return {
            "version": VERSION,
            "seed": int(self.seed),
            "identity": int(self.identity),
            "identity_name": IDENTITY_NAMES[self.identity],
            "fps": int(self.fps),
            "sample_rate": int(self.sample_rate),
            "num_frames": int(self.num_frames),
            "num_samples": int(len(self.audio)),
            "resolution": int(self.frames.shape[1]),
            "shape_names": list(SHAPE_NAMES),
            "mouth_open": [round(float(v), 5) for v in self.mouth_open],
            "mouth_width": [round(float(v), 5) for v in self.mouth_width],
            "mouth_shape": [int(v) for v in self.mouth_shape],
            "phoneme": [str(v) for v in self.phoneme],
            "blink": [round(float(v), 4) for v in self.blink],
            "face_box": [[round(float(v), 2) for v in b] for b in self.face_box],
            "timeline": [[s.label, round(s.start, 5), round(s.end, 5)] for s in self.timeline],
        }


def clip_seed(seed: int, k: int) -> int:
    """Seed of clip ``k`` of a data set built from ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, np.uint32)[0])


def make_clip(
    seed: int,
    identity: int | None = None,
    resolution: int = 256,
    seconds: float = 4.0,
    fps: int = 25,
    sample_rate: int = 16000,
) -> SynthClip:
    """Deterministic clip for ``seed``; ``identity`` None draws one (0 = astronaut, 1.. = drawn)."""
    if sample_rate % fps:
        raise ValueError(f"sample_rate {sample_rate} must be a multiple of fps {fps}")
    timeline_ss, audio_ss, motion_ss, ident_ss = np.random.SeedSequence(int(seed)).spawn(4)
    if identity is None:
        identity = int(np.random.default_rng(ident_ss).integers(NUM_IDENTITIES))
    T = int(round(seconds * fps))
    if T < 1:
        raise ValueError(f"a clip needs at least one frame, got seconds={seconds} at fps={fps}")
    N = T * (sample_rate // fps)
    speaker = speaker_for_identity(identity)
    timeline = sample_timeline(np.random.default_rng(timeline_ss), T / fps, rate=speaker.rate)
    audio = synthesize(timeline, speaker, np.random.default_rng(audio_ss), N, sample_rate)
    truth = frame_truth(timeline, T, fps)
    face = face_model(identity, int(resolution))
    motion_rng = np.random.default_rng(motion_ss)
    motion = head_motion(motion_rng, T, fps, face.R, face.margin)
    blink = blink_track(motion_rng, T, fps)
    frames = render_frames(face, truth["mouth_open"], truth["mouth_width"], motion, blink)
    return SynthClip(
        frames=frames, audio=audio, sample_rate=sample_rate, fps=fps, mouth_open=truth["mouth_open"],
        mouth_shape=truth["mouth_shape"], phoneme=truth["phoneme"], identity=identity, seed=int(seed),
        mouth_width=truth["mouth_width"], blink=blink, face_box=face_boxes(face, motion),
        timeline=[s for s in timeline if s.start < T / fps],
    )


def write_clip(clip: SynthClip, out_dir: str | os.PathLike, name: str) -> Path:
    """Write ``name.mp4`` (H.264 + AAC via ``teacher.media.write_video``) and ``name.json``."""
    from teacher.media import write_video  # lazy: arrays-only users need no PyAV

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.mp4"
    write_video(path, clip.frames, fps=clip.fps, audio=clip.audio, sample_rate=clip.sample_rate)
    side = out / f"{name}.json"
    tmp = side.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clip.sidecar()))
    os.replace(tmp, side)
    return path


def read_sidecar(path: str | os.PathLike) -> dict:
    """Load the sidecar of a clip (``x.mp4`` or ``x.json``); arrays come back as numpy."""
    side = Path(path).with_suffix(".json")
    data = json.loads(side.read_text())
    for key, dtype in (("mouth_open", np.float32), ("mouth_width", np.float32), ("mouth_shape", np.int64),
                       ("blink", np.float32), ("face_box", np.float32)):
        data[key] = np.asarray(data[key], dtype)
    data["phoneme"] = np.asarray(data["phoneme"])
    return data


def _write_one(args: tuple) -> str:
    out_dir, k, seed, resolution, seconds = args
    clip = make_clip(clip_seed(seed, k), resolution=resolution, seconds=seconds)
    return str(write_clip(clip, out_dir, f"clip_{k:05d}"))


def synth_dataset(
    out_dir: str | os.PathLike, clips: int, resolution: int = 256, seconds: float = 4.0, seed: int = 0,
    workers: int = 1,
) -> list[Path]:
    """Write ``clips`` clips ``clip_00000.mp4`` ... (+ sidecars); clip k uses ``clip_seed(seed, k)``."""
    from tqdm import tqdm

    jobs = [(str(out_dir), k, int(seed), int(resolution), float(seconds)) for k in range(clips)]
    bar = tqdm(total=clips, desc="synthworld", unit="clip")
    if workers <= 1:
        paths = []
        for job in jobs:
            paths.append(_write_one(job))
            bar.update()
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            paths = []
            for p in pool.map(_write_one, jobs):
                paths.append(p)
                bar.update()
    bar.close()
    return [Path(p) for p in paths]
