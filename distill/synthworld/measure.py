"""Read the mouth opening back from pixels (ground-truth frames or a model's output).

The world draws an open mouth as a dark oral cavity whose height is proportional to the
opening (teeth and tongue take fixed fractions of it). ``measure_mouth`` finds the dark
blob in a lower-face box and returns its height: soft darkness relative to the box's
median brightness (so skin tone does not matter), the largest dark component that does
not touch the box border and is centred in its middle half (background, hair, collar and
nostrils cut by the border are ignored), averaged over the central 40% of its columns (so rounded vs spread lips do
not matter). It never looks at the sidecar, so it scores generated frames too.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Default search box (x0, y0, x1, y1) as fractions of a world frame: the mouth of every
# identity, under head motion, lies inside it; nostrils and the chin lie outside.
DEFAULT_MOUTH_REGION = (0.30, 0.595, 0.70, 0.82)
# The lower half of a face crop aligned the LatentSync way (mouth near y = 0.7 of the crop).
LOWER_HALF_REGION = (0.15, 0.5, 0.85, 0.98)
# Scale that makes the default region read ~ mouth_open (0..1) on world frames.
CALIBRATION = 3.9


def _box_pixels(box: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    b = np.asarray(box, np.float64)
    if np.all(b <= 1.0):  # fractions of the frame
        b = b * np.array([w, h, w, h])
    x0, y0, x1, y1 = (int(round(v)) for v in b)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise ValueError(f"mouth region {tuple(box)} is empty in a {h}x{w} frame")
    return x0, y0, x1, y1


def _cavity_height(crop: np.ndarray) -> float:
    """Mean height (pixels) of the dark cavity in an RGB crop [h, w, 3]."""
    lum = crop[..., 0] * 0.299 + crop[..., 1] * 0.587 + crop[..., 2] * 0.114
    ref = float(np.median(lum))
    lo, hi = 0.15 * ref, 0.45 * ref
    dark = np.clip((hi - lum) / (hi - lo + 1e-6), 0.0, 1.0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((dark > 0.5).astype(np.uint8), connectivity=8)
    h, w = dark.shape
    best, best_area = 0, 0
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        touches = x == 0 or y == 0 or x + bw >= w or y + bh >= h
        central = abs(x + 0.5 * bw - 0.5 * w) < 0.25 * w
        if central and not touches and area > best_area:
            best, best_area = k, area
    if best == 0:
        return 0.0
    x, y, bw, bh, _ = stats[best]
    blob = cv2.dilate((labels == best).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cols = (dark * blob).sum(axis=0)  # soft cavity height per column
    c0, c1 = x + int(0.3 * bw), x + bw - int(0.3 * bw)  # central 40%: independent of the lip shape
    return float(cols[c0 : max(c1, c0 + 1)].mean())


def region_from_face_box(face_box: np.ndarray) -> np.ndarray:
    """Mouth search boxes ``[..., 4]`` (pixels) from face boxes ``[..., 4]`` (x0, y0, x1, y1).

    A hint for frames where the face may be anywhere (e.g. a clip's ``face_box``, or a
    detector's box): the lower third of the face, 80% of its width.
    """
    fb = np.asarray(face_box, np.float64)
    cx, fw = 0.5 * (fb[..., 0] + fb[..., 2]), fb[..., 2] - fb[..., 0]
    y0, fh = fb[..., 1], fb[..., 3] - fb[..., 1]
    return np.stack([cx - 0.4 * fw, y0 + 0.655 * fh, cx + 0.4 * fw, y0 + 0.985 * fh], axis=-1)


def measure_mouth(frames: np.ndarray, region: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Mouth opening per frame, ``[T]`` float32 (about 0 closed .. 1 wide open on world frames).

    Args:
        frames: ``[T, H, W, 3]`` (or one ``[H, W, 3]``) uint8 RGB frames.
        region: where to look, ``(x0, y0, x1, y1)``; all values <= 1 mean fractions of the
            frame, otherwise pixels. One box for all frames or ``[T, 4]`` per-frame boxes
            (e.g. ``region_from_face_box(clip.face_box)``). ``None`` uses
            ``DEFAULT_MOUTH_REGION`` (world frames). For the lower half of aligned
            LatentSync face crops (256 or 512) pass ``LOWER_HALF_REGION``.

    The value is the cavity's mean height divided by the box height, times ``CALIBRATION``:
    on world frames with the default box it tracks ``mouth_open`` (Pearson >= 0.99 at
    256 px and above, about 0.9-0.97 at 128 px where small openings fall below a pixel).
    With another box the scale changes with the box's size relative to the face; compare
    clips measured with the same kind of box, or recalibrate by a linear fit.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    T, H, W = frames.shape[:3]
    boxes = np.asarray(DEFAULT_MOUTH_REGION if region is None else region, np.float64)
    if boxes.ndim == 1:
        boxes = np.broadcast_to(boxes, (T, 4))
    out = np.zeros(T, np.float32)
    for i in range(T):
        x0, y0, x1, y1 = _box_pixels(boxes[i], H, W)
        crop = frames[i, y0:y1, x0:x1].astype(np.float32)
        out[i] = CALIBRATION * _cavity_height(crop) / (y1 - y0)
    return out
