"""``teacher.media.VideoReader``'s interface on OpenCV's FFmpeg, for ``scripts/gpu_losses.sh``'s device (no PyAV,
no decord there). Constant-rate files without rotation only (the shards ``turbosync prepare`` writes)."""

from __future__ import annotations

import os

import numpy as np


class Cv2VideoReader:
    """``len(reader)`` frames, ``reader.fps``, ``get_frames(idx)`` RGB uint8 ``[len(idx), H, W, 3]``: the part of
    ``teacher.media.VideoReader`` the datasets use on 25 fps shards. The whole file is decoded once (a shard is
    128 px and a few seconds). Raises ``teacher.media.MediaError``."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        import cv2

        from teacher.media import MediaError

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise MediaError(f"{self.path}: no such file")
        cap = cv2.VideoCapture(self.path)
        frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(bgr[..., ::-1])
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
        cap.release()
        if not frames:
            raise MediaError(f"{self.path}: OpenCV decoded no frames")
        self._frames = np.ascontiguousarray(np.stack(frames))

    def __len__(self) -> int:
        return len(self._frames)

    def get_frames(self, idx) -> np.ndarray:
        return self._frames[np.asarray(idx, dtype=np.int64)]
