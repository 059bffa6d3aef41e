"""Identities: a real face texture (``skimage.data.astronaut``) and procedurally drawn faces.

Every identity sits on the canonical layout of :mod:`.canvas` (eyes at y = 0.40, mouth
centre at (0.50, 0.66), chin near 0.82), so ``measure_mouth`` can use one default search
box. A :class:`FaceModel` holds the neutral canvas (mouth region left as bare skin; the
mouth is drawn per frame by :mod:`.mouth`), the closed-eye patches used for blinking and
the mouth geometry. Identity 0 is the astronaut, 1.. the drawn faces of :mod:`.drawn`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .canvas import EYE_Y, FACE_CENTER, MARGIN, MOUTH_CENTER, almond, pts
from .drawn import DRAWN, paint_drawn_face

__all__ = ["FACE_CENTER", "IDENTITY_NAMES", "NUM_IDENTITIES", "FaceModel", "face_model"]

IDENTITY_NAMES = ("astronaut",) + tuple(f"drawn{i}" for i in range(len(DRAWN)))
NUM_IDENTITIES = len(IDENTITY_NAMES)
MAX_OPEN = 0.09  # inner-lip distance at open = 1, fraction of R


@dataclass(eq=False)  # hashed by identity: models are cached singletons
class FaceModel:
    """Neutral face of one identity at frame size ``R`` (all coordinates in canvas pixels)."""

    identity: int
    R: int
    margin: int
    canvas: np.ndarray  # [C, C, 3] uint8, mouth region bare skin, eyes open
    eye_boxes: list[tuple[int, int, int, int]]  # (x0, y0, x1, y1) per eye
    eye_closed: list[np.ndarray]  # closed-eye patch per eye box
    mouth_center: tuple[float, float]
    mouth_half_width: float  # W0
    mouth_max_open: float  # inner-lip distance at open = 1
    lip_upper: float  # thickness of the upper lip (neutral)
    lip_lower: float
    lip_rgb: tuple[int, int, int]
    face_box: tuple[float, float, float, float]  # canonical face box (x0, y0, x1, y1)

    @property
    def size(self) -> int:
        return self.canvas.shape[0]


def _drawn_model(identity: int, R: int) -> FaceModel:
    p = DRAWN[identity - 1]
    canvas, closed, geo = paint_drawn_face(p, R, seed=identity)
    m = int(round(MARGIN * R))
    return FaceModel(
        identity=identity, R=R, margin=m, canvas=canvas, eye_boxes=geo["eye_boxes"],
        eye_closed=[closed[y0:y1, x0:x1].copy() for x0, y0, x1, y1 in geo["eye_boxes"]],
        mouth_center=(m + MOUTH_CENTER[0] * R, m + MOUTH_CENTER[1] * R),
        mouth_half_width=0.125 * R, mouth_max_open=MAX_OPEN * R, lip_upper=0.022 * R, lip_lower=0.03 * R,
        lip_rgb=p["lips"], face_box=geo["face_box"],
    )


# Astronaut landmarks (source pixels of the 512x512 image, from mediapipe face mesh).
_ASTRO_EYES = ((204.2, 102.2), (247.1, 104.5))
_ASTRO_MOUTH = (223.4, 147.2)
_ASTRO_LIPS = dict(left=(201.8, 139.5), right=(245.9, 142.2), top=(223.6, 140.5), bottom=(222.8, 154.9))


@lru_cache(maxsize=2)
def _astronaut_source() -> np.ndarray:
    """The astronaut portrait with her (smiling, open) mouth inpainted to bare skin; RGB uint8."""
    from skimage.data import astronaut

    img = np.ascontiguousarray(astronaut())
    hole = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(hole, (224, 147), (29, 12), 3.5, 0, 360, 255, -1)
    return cv2.inpaint(img, hole, 6, cv2.INPAINT_TELEA)


def _astronaut_model(R: int) -> FaceModel:
    m = int(round(MARGIN * R))
    c = R + 2 * m
    (lx, ly), (rx, ry) = _ASTRO_EYES
    angle = np.degrees(np.arctan2(ry - ly, rx - lx))
    eye_mid = np.array([(lx + rx) / 2, (ly + ry) / 2])
    mouth = np.array(_ASTRO_MOUTH)
    scale = (MOUTH_CENTER[1] - EYE_Y) * R / np.linalg.norm(mouth - eye_mid)
    # similarity: rotate about the mouth to level the eyes, scale, put the mouth at MOUTH_CENTER
    M = cv2.getRotationMatrix2D((float(mouth[0]), float(mouth[1])), float(angle), float(scale))
    M[:, 2] += np.array([m + MOUTH_CENTER[0] * R, m + MOUTH_CENTER[1] * R]) - mouth
    src = _astronaut_source()
    canvas = cv2.warpAffine(src, M, (c, c), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)

    def to_canvas(pt):
        return M[:, :2] @ np.asarray(pt) + M[:, 2]

    boxes, closed = [], []
    for ex, ey in _ASTRO_EYES:
        cx, cy = to_canvas((ex, ey))
        hw, hh = 12.5 * scale, 5.0 * scale
        box = (int(cx - 1.4 * hw), int(cy - 1.9 * hh), int(cx + 1.4 * hw) + 1, int(cy + 1.9 * hh) + 1)
        boxes.append(box)
        closed.append(_astronaut_closed_eye(canvas, box, cx, cy, hw, hh))
    lips = _ASTRO_LIPS
    w0 = 0.5 * np.linalg.norm(to_canvas(lips["right"]) - to_canvas(lips["left"]))
    fb = [to_canvas(p) for p in ((179.0, 72.0), (271.0, 176.0))]
    return FaceModel(
        identity=0, R=R, margin=m, canvas=canvas, eye_boxes=boxes, eye_closed=closed,
        mouth_center=(m + MOUTH_CENTER[0] * R, m + MOUTH_CENTER[1] * R), mouth_half_width=float(w0),
        mouth_max_open=MAX_OPEN * R, lip_upper=0.02 * R, lip_lower=0.027 * R, lip_rgb=(178, 100, 100),
        face_box=(fb[0][0], fb[0][1], fb[1][0], fb[1][1]),
    )


def _astronaut_closed_eye(canvas, box, cx, cy, hw, hh) -> np.ndarray:
    """Closed lid: the almond filled with the lid skin above the eye (squeezed copy) and a lash line."""
    x0, y0, x1, y1 = box
    ph, pw = y1 - y0, x1 - x0
    patch = canvas[y0:y1, x0:x1].astype(np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    map_y = cy - 2.1 * hh + 0.3 * (yy - cy)  # the skin band between eye and brow
    lid = cv2.remap(canvas, xx, map_y.astype(np.float32), cv2.INTER_LINEAR).astype(np.float32)
    lid *= np.linspace(1.0, 0.9, ph, dtype=np.float32)[:, None, None]
    outline = almond(cx - x0, cy - y0, 1.12 * hw, 1.45 * hh)
    mm = np.zeros((ph, pw), np.float32)
    cv2.fillPoly(mm, [pts(outline)], 1.0, cv2.LINE_AA, 4)
    mm = cv2.GaussianBlur(mm, (0, 0), max(0.8, 0.25 * hh))[..., None]
    patch = patch * (1 - mm) + lid * mm
    u = np.linspace(-1, 1, 20)
    lash = np.stack([cx - x0 + hw * u, cy - y0 + 0.35 * hh * (1 - u**2)], 1)
    lm = np.zeros((ph, pw), np.float32)
    cv2.polylines(lm, [pts(lash)], False, 1.0, max(1, round(hh * 0.2)), cv2.LINE_AA, 4)
    lm = 0.7 * cv2.GaussianBlur(lm, (0, 0), 0.6)
    patch = patch * (1 - lm[..., None]) + lm[..., None] * np.array([70, 48, 40], np.float32)
    return np.clip(patch, 0, 255).astype(np.uint8)


@lru_cache(maxsize=32)
def face_model(identity: int, R: int) -> FaceModel:
    """The (cached) neutral face of ``identity`` (0 = astronaut, 1.. = drawn) at frame size ``R``."""
    if not 0 <= identity < NUM_IDENTITIES:
        raise ValueError(f"identity must be in [0, {NUM_IDENTITIES}), got {identity}")
    return _astronaut_model(R) if identity == 0 else _drawn_model(identity, R)
