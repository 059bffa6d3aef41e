"""Per-frame mouth drawing: lips, dark oral cavity, teeth, tongue and the jaw drop.

Geometry (canvas pixels, ``u`` = x - mouth centre, ``W`` = half width, ``H`` = inner-lip
distance = ``open * mouth_max_open``, ``g(u) = (1 - (u/W)^2)^p``):

    upper inner lip  y = my - 0.3 H g(u)        lower inner lip  y = my + 0.7 H g(u)
    upper outer lip  y = upper inner - t_up * g(u)^0.6 * cupid(u)
    lower outer lip  y = lower inner + t_low * g(u)^0.6

Inside the inner contour: once the lips part by more than ``TEETH_HIDDEN``, upper teeth,
lower teeth and a tongue bump take fixed fractions (20%, 8%, 10%) of the extra opening;
the rest is the dark cavity, whose height is therefore a piecewise-linear function of
``open`` (slope 1, then 0.62), which is what :func:`measure_mouth` reads back.
Teeth edges (fixed to the skull, not to the lips), lip striations and the tongue give the
mouth fine detail that a unsure model blurs away. All masks are analytic and anti-aliased,
evaluated on a small patch around the mouth only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .faces import FaceModel

CAVITY_RGB = np.array([22, 6, 9], np.float32)
TEETH_RGB = np.array([238, 234, 220], np.float32)
TONGUE_RGB = np.array([196, 86, 92], np.float32)
UPPER_TEETH, LOWER_TEETH, TONGUE = 0.2, 0.08, 0.1  # fractions of the inner opening beyond TEETH_HIDDEN
TEETH_HIDDEN = 0.15  # openings below this (fraction of the maximum) show only the dark cavity


@dataclass
class MouthPatch:
    """Static per-(identity, R) data: patch box, coordinate grids and textures."""

    x0: int
    y0: int
    skin: np.ndarray  # [h, w, 3] float32 neutral skin under the mouth
    u: np.ndarray  # [h, w] x - mouth centre
    v: np.ndarray  # [h, w] y - mouth centre
    lip_tex: np.ndarray  # [h, w, 3] float32 lip colour with striations
    jaw_fall: np.ndarray  # [h, w] 0..1 weight of the jaw-drop displacement


def _smooth(d: np.ndarray, soft: float = 0.7) -> np.ndarray:
    """Anti-aliased step: 0 for d << 0, 1 for d >> 0 (d in pixels)."""
    return np.clip(0.5 + d / (2.0 * soft), 0.0, 1.0)


@lru_cache(maxsize=32)
def mouth_patch(face: FaceModel) -> MouthPatch:
    R = face.R
    mx, my = face.mouth_center
    hw, top, bot = 0.2 * R, 0.07 * R, 0.2 * R
    x0, y0 = int(mx - hw), int(my - top)
    x1, y1 = int(mx + hw) + 1, int(my + bot) + 1
    skin = face.canvas[y0:y1, x0:x1].astype(np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, v = xx - mx, yy - my
    rng = np.random.default_rng([4242, face.identity, R])
    n = rng.standard_normal(u.shape).astype(np.float32)
    stri = cv2.GaussianBlur(n, (0, 0), sigmaX=max(0.5, 0.0025 * R), sigmaY=max(1.5, 0.012 * R))
    stri /= stri.std() + 1e-6
    lip = np.asarray(face.lip_rgb, np.float32)
    lip_tex = lip * (1.0 + 0.06 * stri)[..., None]
    lateral = np.clip(1.0 - (u / hw) ** 2, 0, 1) ** 2  # zero at the patch sides: no seams
    below = np.clip(v / (0.04 * R), 0, 1) * np.clip((bot - v) / (0.08 * R), 0, 1)
    jaw_fall = (lateral * below).astype(np.float32)
    return MouthPatch(x0, y0, skin, u, v, lip_tex.astype(np.float32), jaw_fall)


def _teeth_texture(
    u: np.ndarray, v: np.ndarray, W0: float, edge_y: np.ndarray, down: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Off-white teeth with dark gaps at skull-fixed positions and rounded biting edges."""
    gaps = np.array([0.0, 0.19, 0.36, 0.5, 0.62, 0.72, 0.8]) * W0
    pos = np.concatenate([-gaps[1:], gaps])
    d = np.abs(u[..., None] - pos).min(-1)
    gap = np.exp(-((d / max(0.6, 0.012 * W0)) ** 2))
    width = 0.17 * W0
    phase = np.mod(u, width) / width
    scallop = 0.08 * W0 * (np.abs(phase - 0.5) ** 2) * 2.0
    dist = (edge_y - v) if down else (v - edge_y)  # distance from the biting edge, >0 inside
    shade = 0.72 + 0.28 * np.clip(1.0 - np.abs(u) / (0.9 * W0), 0, 1)
    tex = TEETH_RGB * (shade * (1.0 - 0.45 * gap))[..., None]
    tex *= (0.85 + 0.15 * _smooth(dist - 1.5, 1.0))[..., None]
    return tex, scallop


@dataclass
class LipCurves:
    """Lip contours as y offsets per patch pixel column (``[h, w]`` broadcast), canvas pixels."""

    W: float  # half width
    H: float  # inner-lip distance
    g: np.ndarray  # opening profile (1 - (u/W)^2)^p
    inside: np.ndarray  # soft |u| < W
    mid: np.ndarray  # seam line
    up_in: np.ndarray
    lo_in: np.ndarray
    up_out: np.ndarray
    lo_out: np.ndarray
    t_lo: float


def lip_curves(face: FaceModel, u: np.ndarray, open_: float, width: float) -> LipCurves:
    """The contours of the module docstring for mouth ``open_`` and ``width`` in [0, 1]."""
    W = face.mouth_half_width * (0.8 + 0.38 * width)
    H = float(np.clip(open_, 0, 1)) * face.mouth_max_open
    q = np.clip(1.0 - (u / W) ** 2, 0.0, 1.0)
    g = q ** (0.45 + 0.35 * width)  # rounded lips: rounder opening
    g_out = q**0.6
    mid = -0.004 * face.R * width * (1 - q)  # spread lips pull the corners up a little
    up_in, lo_in = mid - 0.3 * H * g, mid + 0.7 * H * g
    bow = 1.0 + 0.25 * np.exp(-(((np.abs(u) - 0.3 * W) / (0.15 * W)) ** 2)) - 0.2 * np.exp(-((u / (0.1 * W)) ** 2))
    t_up = face.lip_upper * (1.0 + 0.4 * (1 - width))  # rounded lips pout: thicker
    t_lo = face.lip_lower * (1.0 + 0.3 * (1 - width))
    return LipCurves(W, H, g, _smooth(W - np.abs(u), 0.8), mid, up_in, lo_in,
                     up_in - t_up * g_out * bow - 0.5, lo_in + t_lo * g_out + 0.5, t_lo)


def _interior(face: FaceModel, u: np.ndarray, v: np.ndarray, lc: LipCurves) -> np.ndarray:
    """RGB ``[h, w, 3]`` of the inside of the mouth: dark cavity, teeth, tongue."""
    W, H, g = lc.W, lc.H, lc.g
    deep = np.clip(1.0 - ((u / W) ** 2 + ((v - (lc.up_in + lc.lo_in) / 2) / (0.5 * H + 1)) ** 2), 0, 1)
    cav = CAVITY_RGB * (1.2 - 0.5 * deep)[..., None]
    # teeth and tongue show once the lips part beyond TEETH_HIDDEN (lips cover them before)
    shown = max(0.0, H - TEETH_HIDDEN * face.mouth_max_open)
    sc = min(1.0, shown / (0.2 * face.mouth_max_open))
    edge_u = lc.up_in + UPPER_TEETH * shown * g
    tex_u, scal = _teeth_texture(u, v, face.mouth_half_width, edge_u, down=False)
    teeth_u = (_smooth(edge_u - sc * scal - v, 0.6) * (np.abs(u) < 0.85 * W))[..., None]
    cav = cav * (1 - teeth_u) + tex_u * teeth_u
    edge_l = lc.lo_in - LOWER_TEETH * shown * g
    tex_l, scal = _teeth_texture(u, v, face.mouth_half_width, edge_l, down=True)
    teeth_l = _smooth(v - edge_l - sc * scal, 0.6) * (np.abs(u) < 0.75 * W)
    tongue_top = lc.lo_in - (LOWER_TEETH + TONGUE) * shown * np.clip(1 - (u / (0.6 * W)) ** 2, 0, 1) ** 0.5
    tongue = (_smooth(v - tongue_top, 0.8) * (1 - teeth_l) * (np.abs(u) < 0.6 * W))[..., None]
    tshade = 0.75 + 0.25 * np.clip((v - tongue_top) / (0.15 * H + 1), 0, 1)
    cav = cav * (1 - tongue) + (TONGUE_RGB * tshade[..., None]) * tongue
    teeth_l = teeth_l[..., None]
    return cav * (1 - teeth_l) + tex_l * teeth_l


def draw_mouth(canvas: np.ndarray, face: FaceModel, open_: float, width: float) -> None:
    """Draw the mouth of ``face`` in place on ``canvas`` [C, C, 3] uint8 for (open, width) in [0, 1]."""
    p = mouth_patch(face)
    u, v = p.u, p.v
    lc = lip_curves(face, u, open_, width)
    if lc.H > 0.05:  # jaw drop: pull the skin below the mouth down by up to 0.7 H
        map_x = (u + face.mouth_center[0] - p.x0).astype(np.float32)
        map_y = (v + face.mouth_center[1] - 0.7 * lc.H * p.jaw_fall - p.y0).astype(np.float32)
        img = cv2.remap(p.skin, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        img = p.skin.copy()
    t_lo = lc.t_lo
    shadow = np.exp(-(((v - lc.lo_out - 0.5 * t_lo) / (0.8 * t_lo)) ** 2)) * np.exp(-((u / lc.W) ** 2))
    img *= (1.0 - 0.22 * shadow)[..., None]  # under the lower lip, on the chin
    if lc.H > 0.3:
        cavity = (lc.inside * _smooth(v - lc.up_in) * _smooth(lc.lo_in - v))[..., None]
        img = img * (1 - cavity) + _interior(face, u, v, lc) * cavity
    # lips: striated texture, darker towards the corners and the seam, highlight on the lower lip
    lips_dark = 0.92 + 0.08 * np.clip(np.abs(v - lc.mid) / (t_lo + 0.5 * lc.H + 1), 0, 1)
    hl = 1.0 + 0.18 * np.exp(-((u / (0.45 * lc.W)) ** 2 + ((v - lc.lo_in - 0.45 * t_lo) / (0.3 * t_lo)) ** 2))
    corners = 1.0 - 0.15 * (u / lc.W) ** 2
    edge = max(1.0, 0.005 * face.R)  # soft outer lip border
    upper = (lc.inside * _smooth(v - lc.up_out, edge) * _smooth(lc.up_in - v))[..., None]
    lower = (lc.inside * _smooth(v - lc.lo_in) * _smooth(lc.lo_out - v, edge))[..., None]
    lip_col = (0.85 * p.lip_tex + 0.15 * img) * (lips_dark * hl * corners)[..., None]
    img = img * (1 - upper) + (lip_col * 0.9) * upper
    img = img * (1 - lower) + lip_col * lower
    # the seam where the lips meet (fades as the mouth opens)
    seam = lc.inside * np.exp(-(((v - lc.mid) / max(0.6, 0.004 * face.R)) ** 2)) * max(0.0, 1.0 - lc.H / 2.0)
    img *= (1.0 - 0.2 * seam)[..., None]
    h, w = img.shape[:2]
    canvas[p.y0 : p.y0 + h, p.x0 : p.x0 + w] = np.clip(img, 0, 255).astype(np.uint8)
