"""``turbosync eval sync``: a video's audio-visual offset, LSE-C and LSE-D, the classic way.

Faces come from the project's face path (``teacher.media`` decoding at 25 fps, ``teacher.face``
alignment with the translation EMA); the scores from ``losses.sync.sync_scores`` over +-15 frames.
Two SyncNet formats, told apart by the checkpoint itself:

* the original SyncNet (``syncnet_v2.model``, joonson/syncnet_python): 224 px BGR crops, 5-frame
  windows against 13 MFCCs x 20 (the network behind the LSE numbers of the literature);
* StableSyncNet (``{"state_dict": ...}``, LatentSync): ``config`` gives its ``model:`` section and
  its ``data:`` window (frames, face resolution, lower half); lower halves in [-1, 1] against mels.

Differences from the original pipeline: faces are LatentSync's similarity-aligned crops (the
original tracks S3FD boxes and crops a 0.4-scaled square), and frames without a face repeat the
nearest face crop (counted in the result) instead of splitting the clip into tracks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import configs
from losses.mel import mfcc, syncnet_mel
from losses.sync import VSHIFT, SyncScores, sync_scores
from losses.syncnet import load_syncnet, window_embeddings
from losses.syncnet_v2 import LIP_SIZE, load_syncnet_v2, num_windows
from losses.syncnet_v2 import window_embeddings as v2_window_embeddings

__all__ = ["SyncReport", "checkpoint_kind", "eval_sync", "face_crops", "scores_stable", "scores_v2", "syncnet_config"]

FPS = 25
SAMPLE_RATE = 16000
DEFAULT_CONFIG = "syncnet/stable_syncnet_16"  # LatentSync's StableSyncNet
SIDE_CONFIG = "syncnet.yaml"  # a trained net's own preset, beside its syncnet.pt


@dataclass(frozen=True)
class SyncReport:
    """The scores of one video with what produced them."""

    scores: SyncScores
    syncnet: str          # "syncnet_v2" or "stable_syncnet"
    frames: int           # video frames at 25 fps
    windows: int          # scored windows
    faceless: int         # frames whose face was filled from a neighbour
    config: str | None = None  # the StableSyncNet config used (None for syncnet_v2), "... (beside the checkpoint)"

    def summary(self) -> str:
        s = self.scores
        lines = [f"offset: {s.offset} frames (video frame t matches audio frame t - offset best)",
                 f"LSE-C: {s.lse_c:.3f}", f"LSE-D: {s.lse_d:.3f}",
                 f"({self.syncnet}{f', config {self.config}' if self.config else ''}, "
                 f"{self.windows} windows of {self.frames} frames"
                 + (f", {self.faceless} frames without a face filled from a neighbour" if self.faceless else "")
                 + ")"]
        return "\n".join(lines)


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"stable_syncnet"`` for LatentSync's ``{"state_dict": ...}``, else ``"syncnet_v2"`` (a bare state dict).
    ValueError for a file torch cannot load."""
    import pickle

    try:  # zip-format files map lazily; the 2017 syncnet_v2.model may be a legacy pickle
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, IndexError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not a SyncNet checkpoint (torch.load: {reason})") from None
    return "stable_syncnet" if isinstance(ckpt, Mapping) and "state_dict" in ckpt else "syncnet_v2"


def face_crops(frames: Iterable[np.ndarray], resolution: int, aligner: Any = None) -> tuple[np.ndarray, int]:
    """Aligned face crops ``uint8 [T, R, R, 3]`` RGB of video frames ``[H, W, 3]``, and how many frames had
    no face (filled with the nearest crop in time). Raises ValueError when no frame has a face."""
    from teacher.face import FaceAligner, align_video

    faces = align_video(frames, aligner or FaceAligner(resolution=resolution))
    found = [i for i, f in enumerate(faces) if f is not None]
    if not found:
        raise ValueError("no face found in any frame")
    idx = np.asarray(found)
    crops = []
    for i in range(len(faces)):
        near = found[int(np.abs(idx - i).argmin())]
        crops.append(faces[near].crop)
    return np.stack(crops), len(faces) - len(found)


def scores_v2(net: torch.nn.Module, crops: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT,
              batch_size: int = 20) -> tuple[SyncScores, int]:
    """The original SyncNet on RGB crops ``uint8 [T, 224, 224, 3]`` and 16 kHz audio: (scores, windows)."""
    count = num_windows(len(crops), audio.size)
    if count < 1:
        raise ValueError(f"too short for the original SyncNet: {len(crops)} frames, {audio.size / SAMPLE_RATE:.2f} s")
    bgr = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(0, 3, 1, 2).float()  # cv2's BGR 0..255
    v, a = v2_window_embeddings(net, bgr, mfcc(audio), count, batch_size=batch_size)
    return sync_scores(v, a, vshift), count


def scores_stable(net: torch.nn.Module, crops: np.ndarray, audio: np.ndarray, num_frames: int,
                  lower_half: bool = True, vshift: int = VSHIFT, batch_size: int = 8) -> tuple[SyncScores, int]:
    """StableSyncNet on RGB crops ``uint8 [T, R, R, 3]`` (R = its resolution) and 16 kHz audio."""
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    v, a = window_embeddings(net, faces, syncnet_mel(audio), num_frames, FPS, lower_half, batch_size)
    return sync_scores(v, a, vshift), v.shape[0]


def eval_sync(video: str | os.PathLike, audio: str | os.PathLike | None = None,
              syncnet: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
              device: str = "cpu", vshift: int = VSHIFT) -> SyncReport:
    """Offset, LSE-C and LSE-D of ``video`` (its own audio, or ``audio``) under the SyncNet in ``syncnet``.

    ``syncnet`` None takes ``files.syncnet`` of ``config``. ``config`` (preset or YAML) describes a
    StableSyncNet checkpoint; it is not used for a ``syncnet_v2.model``. ``config`` None takes the
    ``syncnet.yaml`` beside ``syncnet`` (as ``turbosync train-syncnet`` writes it), else ``DEFAULT_CONFIG``
    (see ``syncnet_config``). Raises FileNotFoundError / ValueError (teacher.media.MediaError, no face,
    too short, a bad checkpoint).
    """
    from teacher.media import iter_video_frames, read_audio

    config, found_beside = syncnet_config(syncnet, config)
    cfg = configs.load(config)
    path = syncnet if syncnet is not None else cfg.files.get("syncnet")
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"no SyncNet weights{f' at {path}' if path else ''}: pass --syncnet PATH "
                                "(syncnet_v2.model or stable_syncnet.pt)")
    kind = checkpoint_kind(path)
    sound = read_audio(audio or video, sample_rate=SAMPLE_RATE)
    frames = iter_video_frames(video, fps=FPS)  # streamed: only the small crops are kept
    if kind == "syncnet_v2":
        net = load_syncnet_v2(path, device=device)
        crops, faceless = face_crops(frames, LIP_SIZE)
        scores, count = scores_v2(net, crops, sound, vshift)
    else:
        net = load_syncnet(path, cfg.model, device=device)
        crops, faceless = face_crops(frames, int(cfg.data.resolution))
        scores, count = scores_stable(net, crops, sound, int(cfg.data.num_frames), bool(cfg.data.lower_half), vshift)
    used = None if kind == "syncnet_v2" else f"{config}{' (beside the checkpoint)' if found_beside else ''}"
    return SyncReport(scores=scores, syncnet=kind, frames=len(crops), windows=count, faceless=faceless, config=used)


def syncnet_config(syncnet: str | os.PathLike | None,
                   config: str | os.PathLike | None = None) -> tuple[str, bool]:
    """The StableSyncNet config to use, and whether it was found beside the checkpoint.

    An explicit ``config`` wins; else ``<dir of syncnet>/syncnet.yaml`` when that file exists (the preset
    ``turbosync train-syncnet`` / ``export_syncnet`` writes beside ``syncnet.pt``); else ``DEFAULT_CONFIG``.
    """
    if config is not None:
        return str(config), False
    if syncnet is not None:
        beside = os.path.join(os.path.dirname(os.fspath(syncnet)), SIDE_CONFIG)
        if os.path.isfile(beside):
            return beside, True
    return DEFAULT_CONFIG, False
