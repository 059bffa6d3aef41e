"""Canonical face layout and the small painting toolkit shared by the face builders.

Every identity is laid out on one template (fractions of the frame size R): eyes at
y = ``EYE_Y``, mouth centre at ``MOUTH_CENTER``, chin near 0.82. A canvas is the frame plus
``MARGIN * R`` on each side (so head motion never shows a border); canvas pixel = margin +
fraction * R. Drawing is done in float32 RGB with anti-aliased OpenCV masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MARGIN = 0.08
MOUTH_CENTER = (0.5, 0.66)
EYE_Y = 0.40
FACE_CENTER = (0.5, 0.50)
_SUB = 16  # OpenCV sub-pixel shift 4 -> coordinates in 1/16 pixel


def pts(points) -> np.ndarray:
    """Float pixel points ``[N, 2]`` -> OpenCV fixed-point polyline ``[N, 1, 2]`` (shift 4)."""
    return np.round(np.asarray(points, np.float64) * _SUB).astype(np.int32).reshape(-1, 1, 2)


def almond(cx: float, cy: float, hw: float, hh: float, n: int = 24) -> np.ndarray:
    """Eye outline ``[2n, 2]``: the upper arc, then the flatter lower arc back."""
    u = np.linspace(-1.0, 1.0, n)
    top = cy - hh * (1 - u**2) ** 0.9
    bot = cy + 0.7 * hh * (1 - u**2) ** 1.1
    xs = cx + hw * u
    return np.concatenate([np.stack([xs, top], 1), np.stack([xs[::-1], bot[::-1]], 1)])


def blend(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """In place: ``img = img * (1 - alpha) + color * alpha`` (color an RGB triple or image)."""
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    img *= 1.0 - a
    img += a * np.asarray(color, np.float32)


@dataclass
class Painter:
    """A float32 canvas of size ``c = R + 2 margin`` with pixel grids and mask helpers."""

    R: int
    rng: np.random.Generator

    def __post_init__(self) -> None:
        self.m = int(round(MARGIN * self.R))
        self.c = self.R + 2 * self.m
        y, x = np.mgrid[0 : self.c, 0 : self.c].astype(np.float32)
        self.x, self.y = x, y
        self.fx, self.fy = (x - self.m) / self.R, (y - self.m) / self.R  # frame fractions
        self.img = np.zeros((self.c, self.c, 3), np.float32)

    def px(self, fx: float, fy: float) -> tuple[float, float]:
        """Frame fractions -> canvas pixels."""
        return self.m + fx * self.R, self.m + fy * self.R

    def _mask(self, draw, blur: float) -> np.ndarray:
        m = np.zeros((self.c, self.c), np.float32)
        draw(m)
        return cv2.GaussianBlur(m, (0, 0), blur) if blur > 0 else m

    def ellipse(self, center, axes, angle: float = 0.0, blur: float = 0.0) -> np.ndarray:
        """Filled ellipse mask; ``center`` and ``axes`` in canvas pixels."""
        cx, cy = pts([center])[0, 0]
        ax = (int(axes[0] * _SUB), int(axes[1] * _SUB))
        return self._mask(lambda m: cv2.ellipse(m, (int(cx), int(cy)), ax, angle, 0, 360, 1.0, -1, cv2.LINE_AA, 4),
                          blur)

    def polygon(self, points, blur: float = 0.0) -> np.ndarray:
        return self._mask(lambda m: cv2.fillPoly(m, [pts(points)], 1.0, cv2.LINE_AA, 4), blur)

    def polyline(self, points, thickness: float, blur: float = 0.0) -> np.ndarray:
        t = max(1, int(round(thickness)))
        return self._mask(lambda m: cv2.polylines(m, [pts(points)], False, 1.0, t, cv2.LINE_AA, 4), blur)

    def noise(self, sigma: float, sx: float | None = None) -> np.ndarray:
        """Unit-variance smooth noise ``[c, c]`` (anisotropic when ``sx`` is given)."""
        n = self.rng.standard_normal((self.c, self.c)).astype(np.float32)
        n = cv2.GaussianBlur(n, (0, 0), sigmaX=sx if sx is not None else sigma, sigmaY=sigma)
        return n / (n.std() + 1e-6)

    def blob(self, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        """Gaussian bump centred at canvas pixel (cx, cy) with widths (sx, sy) in pixels."""
        return np.exp(-(((self.x - cx) / sx) ** 2 + ((self.y - cy) / sy) ** 2))

    def shade(self, amount: np.ndarray) -> None:
        """Multiply the image by ``1 + amount`` (negative darkens)."""
        self.img *= (1.0 + amount)[..., None]
