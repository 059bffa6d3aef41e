"""Training clips in the teacher's input format, read from ``turbosync prepare`` shards.

Each item is an F-frame window of one shard::

    frames          float32 [3, F, R, R] in [-1, 1]
    mask            float32 [1, F, R, R]  (1 = keep, 0 = mouth region to generate)
    masked_frames   float32 [3, F, R, R]  frames * mask
    ref_frames      float32 [3, F, R, R]  reference: another window of the same shard
                                          (LatentSync training) or the same frames (inference)
    audio_embeds    float32 [F, 50, 384]  Whisper token sets (``teacher.audio.frame_step_indices``)
    audio           float32 [F * 640]     16 kHz samples of the window
    mouth_open      float32 [F]           synthetic ground truth when the shard has it, else absent
    mel             float32 [1, 80, T]    with ``mel=True``: the SyncNet mel window of the F frames
                                          (``losses.mel.mel_window`` of the shard's whole-audio mel, cached in
                                          the shard as ``syncnet_mel.npy``; T = ceil(80 F / 25), 26 for 8 frames)
    mel_negatives   float32 [K, 1, 80, T] with ``mel_negatives=K``: the mel windows of K other windows of the same
                                          shard, each at least F // 2 frames away (off sync; drawn per item,
                                          with replacement when the shard has fewer), for
                                          ``losses.SyncLoss(mel_negatives=...)``
    shard, start    int                   where the window comes from

With ``latents=True`` and a cache written by ``encode_latents``, the item also holds
``latents``, ``masked_latents`` and ``ref_latents`` ``[4, F, h, w]`` sampled from the cached
VAE posteriors (LatentSync samples, not the mode), with a generator seeded per item;
``pixels=False`` then skips decoding the frames.
Items are a pure function of (index, seed): a resumed run sees the same data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from teacher.audio import SAMPLES_PER_FRAME, frame_step_indices
from teacher.conditioning import crops_to_pixels, face_mask, masked_pixels


@dataclass
class Shard:
    path: Path
    num_frames: int
    meta: dict


def list_shards(root: str | Path, min_frames: int = 1) -> list[Shard]:
    shards_dir = Path(root) / "shards"
    if not shards_dir.is_dir():
        raise FileNotFoundError(f"{root} has no shards/ folder: run `turbosync prepare SRC_DIR {root}` first")
    out = []
    for d in sorted(p for p in shards_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta = json.loads((d / "meta.json").read_text())
        if meta["num_frames"] >= min_frames:
            out.append(Shard(d, int(meta["num_frames"]), meta))
    return out


def window_steps(meta: dict, start: int, num_frames: int) -> np.ndarray:
    """Indices into the shard's ``whisper.npy`` for frames ``start..start+F``: ``[F, 10]`` (the official
    window rule of ``teacher.audio.frame_step_indices`` on the source file, minus the shard's offset)."""
    steps = frame_step_indices(num_frames, meta["whisper_total_steps"], meta["start_frame"] + start).numpy()
    return steps - meta["whisper_step_offset"]


class ClipDataset(Dataset):
    """F-frame windows over prepared shards (stride ``stride``, default F // 2)."""

    def __init__(
        self,
        root: str | Path,
        num_frames: int = 16,
        mask: np.ndarray | None = None,
        reference: str = "other",
        stride: int | None = None,
        latents: bool = False,
        seed: int = 0,
        pixels: bool = True,
        mel: bool = False,
        mel_negatives: int = 0,
    ):
        if reference not in ("other", "same"):
            raise ValueError(f"reference must be 'other' (training) or 'same' (inference), got {reference!r}")
        self.root = Path(root)
        self.num_frames = num_frames
        self.reference = reference
        self.latents = latents
        self.pixels = pixels or not latents  # without a latent cache the frames are the data
        self.seed = seed
        self.mel = mel
        if mel_negatives < 0:
            raise ValueError(f"mel_negatives must be >= 0, got {mel_negatives}")
        self.mel_negatives = int(mel_negatives)
        self.shards = list_shards(root, min_frames=num_frames)
        if not self.shards:
            raise ValueError(f"no shard in {root} has {num_frames} frames")
        self.resolution = int(self.shards[0].meta["resolution"])
        self.mask = face_mask(self.resolution) if mask is None else torch.as_tensor(np.asarray(mask, np.float32))
        stride = stride or max(1, num_frames // 2)
        self.index = [
            (k, s) for k, sh in enumerate(self.shards) for s in range(0, sh.num_frames - num_frames + 1, stride)
        ]
        self._readers: dict[int, object] = {}
        if latents:
            missing = [str(s.path) for s in self.shards if not (s.path / "latents.npz").is_file()]
            if missing:
                raise FileNotFoundError(f"no latent cache in {missing[:3]}: run distill.data.encode_latents first")

    def __len__(self) -> int:
        return len(self.index)

    def _frames(self, k: int, start: int) -> np.ndarray:
        from teacher.media import VideoReader

        if k not in self._readers:  # one decord reader per shard and worker process
            self._readers[k] = VideoReader(self.shards[k].path / "faces.mp4")
        return self._readers[k].get_frames(np.arange(start, start + self.num_frames))

    def _reference_start(self, k: int, start: int, rng: np.random.Generator) -> int:
        """A window of the same shard not overlapping ``start`` when the shard is long enough."""
        n, f = self.shards[k].num_frames, self.num_frames
        if self.reference == "same":
            return start
        choices = [s for s in range(0, n - f + 1) if abs(s - start) >= f]
        return int(rng.choice(choices)) if choices else int(rng.integers(0, n - f + 1))

    def _negative_starts(self, k: int, start: int, rng: np.random.Generator) -> np.ndarray:
        """``mel_negatives`` window starts of shard ``k`` at least F // 2 frames from ``start`` (distinct while
        the shard has enough; its farthest windows when none is that far)."""
        starts = np.arange(self.shards[k].num_frames - self.num_frames + 1)
        d = np.abs(starts - start)
        far = starts[d >= max(1, self.num_frames // 2)]
        if not len(far):
            far = starts[d == d.max()] if d.max() > 0 else starts
        return rng.choice(far, self.mel_negatives, replace=len(far) < self.mel_negatives)

    def __getitem__(self, i: int) -> dict:
        k, start = self.index[i]
        shard, f = self.shards[k], self.num_frames
        rng = np.random.default_rng([self.seed, i])
        ref_start = self._reference_start(k, start, rng)
        mask = self.mask[None, None].expand(1, f, -1, -1)
        steps = np.load(shard.path / "whisper.npy", mmap_mode="r")
        tokens = np.asarray(steps[window_steps(shard.meta, start, f)], dtype=np.float32)  # [F, 10, L, D]
        audio = np.load(shard.path / "audio.npy", mmap_mode="r")
        item = {
            "mask": mask.clone(),
            "audio_embeds": torch.from_numpy(tokens.reshape(f, -1, tokens.shape[-1])),
            "audio": torch.from_numpy(np.array(audio[start * SAMPLES_PER_FRAME : (start + f) * SAMPLES_PER_FRAME])),
            "shard": k,
            "start": start,
        }
        if self.pixels:
            frames = crops_to_pixels(self._frames(k, start))
            item["frames"] = frames
            item["masked_frames"] = masked_pixels(frames, mask)
            item["ref_frames"] = frames if ref_start == start else crops_to_pixels(self._frames(k, ref_start))
        if self.mel or self.mel_negatives:
            from losses.mel import mel_window

            whole, fps = torch.from_numpy(shard_mel(shard)), float(shard.meta.get("fps", 25))
            if self.mel:
                item["mel"] = mel_window(whole, start, f, fps)
            if self.mel_negatives:
                starts = self._negative_starts(k, start, np.random.default_rng([self.seed, i, 1]))
                item["mel_negatives"] = torch.stack([mel_window(whole, int(s), f, fps) for s in starts])
        truth = shard.meta.get("ground_truth", {})
        if "mouth_open" in truth:
            item["mouth_open"] = torch.tensor(truth["mouth_open"][start : start + f], dtype=torch.float32)
        if self.latents:
            item.update(self._sample_latents(k, start, ref_start, rng))
        return item

    def _sample_latents(self, k: int, start: int, ref_start: int, rng: np.random.Generator) -> dict:
        cache = np.load(self.shards[k].path / "latents.npz")
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        out = {}
        for name, key, s in (("latents", "frames", start), ("masked_latents", "masked", start),
                             ("ref_latents", "frames", ref_start)):  # fmt: skip
            mean = torch.from_numpy(cache[f"{key}_mean"][s : s + self.num_frames].astype(np.float32))
            std = torch.from_numpy(cache[f"{key}_std"][s : s + self.num_frames].astype(np.float32))
            z = mean + std * torch.randn(mean.shape, generator=g)
            z = (z - float(cache["shift_factor"])) * float(cache["scaling_factor"])
            out[name] = z.permute(1, 0, 2, 3)  # [4, F, h, w]
        return out


def shard_mel(shard: Shard) -> np.ndarray:
    """The SyncNet mel spectrogram ``[80, T]`` float32 of the shard's whole audio (``losses.mel.syncnet_mel``),
    computed once and cached as ``syncnet_mel.npy`` in the shard (written atomically)."""
    path = shard.path / "syncnet_mel.npy"
    if not path.is_file():
        from losses.mel import syncnet_mel

        mel = syncnet_mel(np.load(shard.path / "audio.npy"), int(shard.meta.get("sample_rate", 16000))).numpy()
        tmp = shard.path / f".syncnet_mel.{os.getpid()}.npy"
        np.save(tmp, mel)
        tmp.replace(path)
    return np.load(path)


@torch.no_grad()
def encode_latents(root: str | Path, vae, mask: np.ndarray | None = None, batch: int = 16) -> int:
    """Cache VAE posteriors (mean, std) of every shard's frames and masked frames in ``latents.npz``."""
    from tqdm import tqdm

    from teacher.media import VideoReader

    shards = list_shards(root)
    for shard in tqdm(shards, desc="encode latents", unit="shard"):
        target = shard.path / "latents.npz"
        if target.is_file():
            continue
        reader = VideoReader(shard.path / "faces.mp4")
        frames = crops_to_pixels(reader.get_frames(np.arange(shard.num_frames)))  # [3, T, R, R]
        m = face_mask(frames.shape[-1]) if mask is None else torch.as_tensor(mask)
        stats = {}
        for key, video in (("frames", frames), ("masked", masked_pixels(frames, m))):
            means, stds = [], []
            for s in range(0, shard.num_frames, batch):
                x = video[:, s : s + batch].permute(1, 0, 2, 3).to(vae.device, vae.dtype)
                dist = vae.vae.encode(x).latent_dist
                means.append(dist.mean.float().cpu())
                stds.append(dist.std.float().cpu())
            stats[f"{key}_mean"] = torch.cat(means).numpy().astype(np.float16)
            stats[f"{key}_std"] = torch.cat(stds).numpy().astype(np.float16)
        tmp = shard.path / f".latents.{os.getpid()}.npz"  # per process: runs sharing a data root may race here
        np.savez(tmp, scaling_factor=np.float32(vae.scaling_factor), shift_factor=np.float32(vae.shift_factor), **stats)
        tmp.replace(target)
    return len(shards)
