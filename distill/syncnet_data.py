"""SyncNet training data: in-sync and off-sync (face window, mel window) pairs from prepared shards.

Shards are ``turbosync prepare`` output (``faces.mp4`` aligned crops + ``audio.npy`` at 16 kHz); the
Whisper features are not read. A pair is LatentSync's ``SyncNetDataset`` sample
(``latentsync/data/syncnet_dataset.py``): the mel window of frames ``s .. s + F`` against either the
faces of the same frames (``y = 1``) or the faces of another window ``w`` of the same shard
(``y = 0``, an audio-visual offset ``k = w - s``), each with probability 1/2:

    images  float32 [3F, R/2, R]   lower halves (``lower_half``) of the faces, frame-major channels, [-1, 1]
    mel     float32 [1, 80, L]     ``losses.mel.mel_window`` of ``losses.mel.syncnet_mel`` (L = ceil(80 F / 25))
    y       float32 []             1 = in sync
    offset  int                    k (0 for in-sync pairs)

Negatives take ``|k|`` in ``[min_offset, max_offset]`` (upstream: any other window, ``min_offset = 1``,
``max_offset = None``).

Grouped items (``group_size = G > 1``, more negatives for the same compute): item ``i`` is its window and
``G - 1`` other windows of the same shard, each once as faces and once as mel; every cross pair is an
off-sync pair of the same clip (what the held-out measure asks about), so one item gives ``G`` in-sync and
up to ``G (G - 1)`` off-sync pairs for ``G`` face and ``G`` mel encodings:

    images  float32 [G, 3F, R/2, R]   the windows' faces (window 0 = item i's)
    mel     float32 [G, 1, 80, L]     the same windows' mels
    y       float32 [G, G]            y[a, v] = 1 when mel a and faces v are the same window (the diagonal;
                                      a short shard may repeat a window)
    mask    bool    [G, G]            pairs to score: the diagonal and ``|start_a - start_v| >= min_offset``
    offset  int64   [G]               window starts minus item i's

Offset correction (the paper's section 4, "data preprocessing"): a shard whose audio is ``o`` frames late is
read with its audio moved back by ``o`` frames (``offsets``, estimated by ``estimate_offsets`` with a trained
SyncNet); shards under ``min_confidence`` are left out.

Items are a pure function of ``(epoch, index, seed)``, so a resumed run sees the same pairs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.dataset import list_shards
from losses.mel import MEL_FPS, mel_window, mel_window_length, syncnet_mel

__all__ = ["SyncPairDataset", "SyncWindow", "estimate_offsets", "heldout_pairs", "OFFSETS_FILE"]

OFFSETS_FILE = "sync_offsets.json"
FPS = 25


@dataclass(frozen=True)
class SyncWindow:
    """The SyncNet input window (a preset's ``data:`` section): frames, face size, lower half."""

    num_frames: int = 16
    resolution: int = 256
    lower_half: bool = True

    @classmethod
    def from_mapping(cls, data: Any) -> SyncWindow:
        return cls(int(data["num_frames"]), int(data["resolution"]), bool(data.get("lower_half", True)))


def _faces(path: Path | Any, resolution: int, lower_half: bool, index: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[T, h, R, 3]`` of a shard's ``faces.mp4`` (a path or an open ``teacher.media.VideoReader``; every
    frame or those in ``index``), resized to R x R (area), lower half kept."""
    import cv2

    from teacher.media import VideoReader

    reader = VideoReader(path) if isinstance(path, str | Path) else path
    frames = reader.get_frames(np.arange(len(reader)) if index is None else index)
    if frames.shape[1] != resolution:
        frames = np.stack([cv2.resize(f, (resolution, resolution), interpolation=cv2.INTER_AREA) for f in frames])
    return np.ascontiguousarray(frames[:, resolution // 2:] if lower_half else frames)


class SyncPairDataset(Dataset):
    """In-sync / off-sync pairs over every F-frame window (stride ``stride``) of the shards in ``root``.

    Args:
        root: a prepared data folder (``shards/``).
        window: the network's input window (``SyncWindow`` or its mapping; default: the official one).
        min_offset, max_offset: the range of ``|k|`` for negatives (frames); ``max_offset`` None = any.
        stride: frames between window starts.
        seed: item randomness (positive or negative, the offset).
        offsets: ``{shard name: {"offset": o, "lse_c": c}}`` or a JSON path (``estimate_offsets``); the
            audio of a shard is read ``o`` frames later. ``True`` reads ``root/sync_offsets.json``.
        min_confidence: shards whose ``lse_c`` in ``offsets`` is lower are left out.
        cache: keep every shard's decoded faces in memory (the toy world: a few MB a shard); otherwise each item
            decodes its F frames (one reader per shard and worker). Mels are always kept (~1 KB a second).
        group_size: 1 = pairs (LatentSync's sample); G > 1 = grouped items (module docstring). ``pair`` and
            ``negative_start`` (the held-out pairs) do not depend on it.

    ``dataset[i]`` or ``dataset[(epoch, i)]`` -> dict (module docstring). Raises ValueError when no shard
    holds two windows the offsets allow.
    """

    def __init__(self, root: str | Path, window: SyncWindow | Any = SyncWindow(), min_offset: int = 1,
                 max_offset: int | None = None, stride: int = 1, seed: int = 0,
                 offsets: dict | str | Path | bool | None = None, min_confidence: float | None = None,
                 cache: bool = True, group_size: int = 1):
        self.root = Path(root)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)
        self.window = window if isinstance(window, SyncWindow) else SyncWindow.from_mapping(window)
        if min_offset < 1 or (max_offset is not None and max_offset < min_offset):
            raise ValueError(f"need 1 <= min_offset <= max_offset, got {min_offset}, {max_offset}")
        self.min_offset, self.max_offset, self.seed, self.cache = int(min_offset), max_offset, int(seed), cache
        self.offsets = _read_offsets(self.root, offsets)
        f = self.window.num_frames
        self.shards, self.index, self.shard_offsets = [], [], []
        for sh in list_shards(self.root, min_frames=f):
            entry = self.offsets.get(sh.path.name, {})
            if min_confidence is not None and float(entry.get("lse_c", -math.inf)) < min_confidence:
                continue
            o = int(entry.get("offset", 0))
            starts = self._valid_starts(sh.num_frames, o)
            if len(starts) < 2:
                continue
            k = len(self.shards)
            self.shards.append(sh)
            self.shard_offsets.append(o)
            self.index += [(k, int(s)) for s in starts[::stride]]
        if not self.index:
            raise ValueError(f"no shard in {self.root} holds two {f}-frame windows (after offsets/confidence)")
        self._faces: dict[int, np.ndarray] = {}
        self._readers: dict[int, Any] = {}
        self._mels: dict[int, torch.Tensor] = {}

    def _valid_starts(self, num_frames: int, offset: int) -> np.ndarray:
        """Window starts whose faces and offset-corrected mel window both lie inside the shard."""
        f, length = self.window.num_frames, mel_window_length(self.window.num_frames, FPS)
        mel_frames = 1 + num_frames * 640 // 200  # syncnet_mel of T * 640 samples (centred STFT)
        s = np.arange(0, num_frames - f + 1)
        a = s + offset
        ok = (a >= 0) & ((MEL_FPS * a / FPS).astype(int) + length <= mel_frames)
        return s[ok]

    def __len__(self) -> int:
        return len(self.index)

    def faces(self, k: int, start: int) -> np.ndarray:
        """uint8 ``[F, h, R, 3]``: frames ``start .. start + F`` of shard ``k`` at the window's size."""
        w, f = self.window, self.window.num_frames
        if not self.cache:
            from teacher.media import VideoReader

            if k not in self._readers:
                self._readers[k] = VideoReader(self.shards[k].path / "faces.mp4")
            return _faces(self._readers[k], w.resolution, w.lower_half, np.arange(start, start + f))
        if k not in self._faces:
            self._faces[k] = _faces(self.shards[k].path / "faces.mp4", w.resolution, w.lower_half)
        return self._faces[k][start:start + f]

    def mel(self, k: int) -> torch.Tensor:
        if k not in self._mels:
            self._mels[k] = syncnet_mel(np.load(self.shards[k].path / "audio.npy"))
        return self._mels[k]

    def pair(self, k: int, start: int, video_start: int) -> dict:
        """The mel window of frames ``start ..`` (offset-corrected) against the faces of ``video_start ..``."""
        f = self.window.num_frames
        faces = torch.from_numpy(self.faces(k, video_start))                               # [F, h, R, 3] uint8
        images = faces.permute(0, 3, 1, 2).reshape(3 * f, *faces.shape[1:3]).float() / 127.5 - 1.0
        mel = mel_window(self.mel(k), start + self.shard_offsets[k], f, FPS)
        return {"images": images, "mel": mel, "y": torch.tensor(float(video_start == start)),
                "offset": video_start - start}

    def negative_start(self, i: int, rng: np.random.Generator) -> int:
        """A window of the same shard ``min_offset <= |k| <= max_offset`` frames away (the nearest allowed one
        when none fits the range)."""
        k, s = self.index[i]
        starts = self._valid_starts(self.shards[k].num_frames, self.shard_offsets[k])
        d = np.abs(starts - s)
        ok = (d >= self.min_offset) & (d <= (self.max_offset if self.max_offset is not None else np.inf))
        if not ok.any():
            ok = d == d[d >= 1].min()
        return int(rng.choice(starts[ok]))

    def group_starts(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """Window ``i``'s start and ``G - 1`` other starts of its shard within ``max_offset`` of it (distinct
        while the shard has enough, drawn with replacement otherwise; the nearest other window when none is in
        range): ``[G]`` int64, the item's own first."""
        k, s = self.index[i]
        starts = self._valid_starts(self.shards[k].num_frames, self.shard_offsets[k])
        d = np.abs(starts - s)
        others = starts[(d >= 1) & (d <= (self.max_offset if self.max_offset is not None else np.inf))]
        if not len(others):
            others = starts[d == d[d >= 1].min()]
        pick = rng.choice(others, self.group_size - 1, replace=len(others) < self.group_size - 1)
        return np.concatenate([[s], pick]).astype(np.int64)

    def group(self, k: int, starts: np.ndarray) -> dict:
        """The grouped item of windows ``starts`` of shard ``k`` (module docstring)."""
        items = [self.pair(k, int(s), int(s)) for s in starts]
        st = torch.from_numpy(np.asarray(starts, np.int64))
        d = (st[:, None] - st[None, :]).abs()
        return {"images": torch.stack([it["images"] for it in items]), "mel": torch.stack([it["mel"] for it in items]),
                "y": (d == 0).float(), "mask": (d == 0) | (d >= self.min_offset), "offset": st - st[0]}

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        k, s = self.index[i]
        if self.group_size > 1:
            return self.group(k, self.group_starts(i, rng))
        positive = rng.random() < 0.5
        return self.pair(k, s, s if positive else self.negative_start(i, rng))


def heldout_pairs(dataset: SyncPairDataset, max_windows: int | None = None,
                  seed: int = 0) -> list[tuple[int, int, int]]:
    """A fixed, balanced evaluation set: ``(k, start, video_start)`` for each window, once in sync and once
    off sync (an offset drawn as in training); windows evenly spaced when ``max_windows`` caps them."""
    idx = np.arange(len(dataset))
    if max_windows is not None and max_windows < len(idx):
        idx = np.linspace(0, len(idx) - 1, max_windows).round().astype(int)
    out = []
    for i in idx:
        k, s = dataset.index[i]
        out.append((k, s, s))
        out.append((k, s, dataset.negative_start(int(i), np.random.default_rng([seed, int(i)]))))
    return out


def _read_offsets(root: Path, offsets: dict | str | Path | bool | None) -> dict:
    if offsets is None or offsets is False:
        return {}
    if isinstance(offsets, dict):
        return offsets
    path = root / OFFSETS_FILE if offsets is True else Path(offsets)
    if not path.is_file():
        raise FileNotFoundError(f"no offsets file {path}: run distill.syncnet_data.estimate_offsets first")
    return json.loads(path.read_text())


@torch.no_grad()
def estimate_offsets(root: str | Path, net: torch.nn.Module, window: SyncWindow | Any, vshift: int = 15,
                     out: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Each shard's audio-visual offset with a trained SyncNet (LatentSync adjusts the offset of its data with
    the pretrained SyncNet after the affine alignment and drops clips with confidence under 3).

    Returns (and writes to ``out``, default ``root/sync_offsets.json``) ``{shard: {"offset": o, "lse_c": c,
    "lse_d": d}}`` where o is the frames the audio lags the faces (``losses.sync.sync_scores``' offset,
    negated: that offset says video frame t matches audio frame t - offset).
    """
    from losses.sync import sync_scores
    from losses.syncnet import window_embeddings

    window = window if isinstance(window, SyncWindow) else SyncWindow.from_mapping(window)
    data = SyncPairDataset(root, window, cache=False)
    result = {}
    net.eval()
    for k, shard in enumerate(data.shards):
        faces = torch.from_numpy(_faces(shard.path / "faces.mp4", window.resolution, False))
        faces = faces.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        v, a = window_embeddings(net, faces, data.mel(k), window.num_frames, FPS, window.lower_half)
        s = sync_scores(v, a, vshift)
        result[shard.path.name] = {"offset": -s.offset, "lse_c": s.lse_c, "lse_d": s.lse_d}
    path = Path(out) if out is not None else Path(root) / OFFSETS_FILE
    path.write_text(json.dumps(result, indent=1))
    return result
