"""Frames: head motion, blinks, the mouth, then one affine warp from the canvas to the frame."""

from __future__ import annotations

import cv2
import numpy as np

from .canvas import FACE_CENTER
from .faces import FaceModel
from .mouth import draw_mouth


def head_motion(rng: np.random.Generator, num_frames: int, fps: float, R: int, margin: int) -> np.ndarray:
    """Affine maps canvas -> frame, ``[T, 2, 3]``: smooth sway of <= 2% R, <= 3 deg, +-2.5% scale."""
    t = np.arange(num_frames) / fps

    def wander(amp: float) -> np.ndarray:
        freqs = rng.uniform(0.08, 0.6, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        weights = rng.dirichlet(np.ones(3))
        return amp * sum(w * np.sin(2 * np.pi * f * t + p) for w, f, p in zip(weights, freqs, phases))

    tx, ty = wander(0.02 * R), wander(0.015 * R)
    angle, scale = wander(3.0), 1.0 + wander(0.025)
    cx, cy = margin + FACE_CENTER[0] * R, margin + FACE_CENTER[1] * R
    mats = np.empty((num_frames, 2, 3), np.float64)
    for i in range(num_frames):
        M = cv2.getRotationMatrix2D((cx, cy), float(angle[i]), float(scale[i]))
        M[:, 2] += np.array([tx[i] - margin, ty[i] - margin])
        mats[i] = M
    return mats


def blink_track(rng: np.random.Generator, num_frames: int, fps: float) -> np.ndarray:
    """Eyelid closure ``[T]`` in [0, 1]: blinks every 1.5-5 s, 60 ms down, 40 ms shut, 100 ms up."""
    t = np.arange(num_frames) / fps
    out = np.zeros(num_frames)
    start = rng.uniform(0.3, 3.0)
    while num_frames and start < t[-1] + 1:
        rel = t - start
        down = np.clip(rel / 0.06, 0, 1)
        up = np.clip(1 - (rel - 0.1) / 0.1, 0, 1)
        out = np.maximum(out, np.where(rel < 0.06, down, up) * (rel >= 0))
        start += rng.uniform(1.5, 5.0)
    return out.astype(np.float32)


def _blink(canvas: np.ndarray, face: FaceModel, amount: float) -> None:
    """Sweep the closed-eye patches down over the open eyes by ``amount``."""
    if amount <= 0.01:
        return
    for (x0, y0, x1, y1), closed in zip(face.eye_boxes, face.eye_closed):
        h = y1 - y0
        rows = np.arange(h, dtype=np.float32)
        a = np.clip(amount * (h + 2) - rows, 0, 1)[:, None, None]
        region = canvas[y0:y1, x0:x1].astype(np.float32)
        canvas[y0:y1, x0:x1] = (region * (1 - a) + closed.astype(np.float32) * a).astype(np.uint8)


def render_frames(
    face: FaceModel, mouth_open: np.ndarray, mouth_width: np.ndarray, motion: np.ndarray, blink: np.ndarray
) -> np.ndarray:
    """Render ``[T, R, R, 3]`` uint8 RGB frames of ``face`` for per-frame mouth, motion and blink."""
    T, R = len(mouth_open), face.R
    frames = np.empty((T, R, R, 3), np.uint8)
    for i in range(T):
        canvas = face.canvas.copy()
        draw_mouth(canvas, face, float(mouth_open[i]), float(mouth_width[i]))
        _blink(canvas, face, float(blink[i]))
        frames[i] = cv2.warpAffine(canvas, motion[i], (R, R), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return frames


def face_boxes(face: FaceModel, motion: np.ndarray) -> np.ndarray:
    """Per-frame face box ``[T, 4]`` (x0, y0, x1, y1) in frame pixels (bounds of the moved box)."""
    x0, y0, x1, y1 = face.face_box
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64)
    pts = np.einsum("tij,kj->tki", motion, corners)  # [T, 4, 2]
    return np.concatenate([pts.min(1), pts.max(1)], axis=1).astype(np.float32)
