"""Procedurally drawn identities: shaded skin, hair, ears, eyes, brows, nose, body, background.

Proportions follow a real face closely enough for mediapipe's face detector and mesh
(checked by the tests on every identity); the mouth region is left as bare skin for
:mod:`.mouth`. Eyes are drawn last so an identical closed-eye canvas can be made for blinks.
"""

from __future__ import annotations

import numpy as np

from .canvas import EYE_Y, Painter, almond, blend

# Per identity: skin / hair / iris / lips / shirt RGB, two background RGBs (top, bottom),
# face half-width ``a`` and chin y (frame fractions), eye spacing, jaw exponent, hair style.
DRAWN = [
    dict(skin=(236, 192, 162), hair=(92, 60, 38), iris=(70, 110, 160), lips=(196, 104, 108),
         bg=((96, 130, 170), (40, 60, 90)), shirt=(40, 70, 120), a=0.255, chin=0.83, eyes=0.245, jaw=1.9,
         hair_style="long"),
    dict(skin=(140, 94, 68), hair=(28, 22, 20), iris=(60, 38, 24), lips=(132, 70, 66),
         bg=((214, 196, 160), (150, 120, 90)), shirt=(180, 180, 176), a=0.27, chin=0.84, eyes=0.26, jaw=2.2,
         hair_style="short"),
    dict(skin=(214, 164, 124), hair=(196, 160, 96), iris=(90, 120, 80), lips=(182, 98, 92),
         bg=((128, 150, 128), (70, 90, 72)), shirt=(120, 40, 40), a=0.25, chin=0.82, eyes=0.24, jaw=1.8,
         hair_style="long"),
    dict(skin=(196, 150, 116), hair=(120, 116, 112), iris=(80, 64, 40), lips=(168, 94, 86),
         bg=((170, 170, 176), (110, 110, 120)), shirt=(60, 90, 60), a=0.265, chin=0.835, eyes=0.255, jaw=2.4,
         hair_style="short"),
    dict(skin=(242, 204, 186), hair=(170, 74, 36), iris=(60, 130, 90), lips=(206, 112, 120),
         bg=((200, 180, 200), (120, 100, 130)), shirt=(200, 200, 210), a=0.245, chin=0.815, eyes=0.235,
         jaw=1.85, hair_style="long"),
    dict(skin=(172, 122, 90), hair=(36, 30, 28), iris=(50, 36, 26), lips=(150, 82, 78),
         bg=((150, 120, 170), (70, 50, 90)), shirt=(220, 160, 60), a=0.26, chin=0.83, eyes=0.25, jaw=2.0,
         hair_style="short"),
]
FOREHEAD_Y = 0.17
EYE_HALF = (0.052, 0.024)  # eye half-width, half-height (fractions of R)


def _background_and_body(pt: Painter, p: dict, cy: float) -> None:
    R, fx, fy = pt.R, pt.fx, pt.fy
    bg0, bg1 = (np.asarray(b, np.float32) for b in p["bg"])
    t = np.clip(fy, 0, 1)[..., None]
    pt.img[:] = (bg0 * (1 - t) + bg1 * t) * (1 + 0.06 * pt.noise(R * 0.03)[..., None])
    skin = np.asarray(p["skin"], np.float32)
    neck = np.clip((0.13 * R - np.abs(pt.x - pt.c / 2)) / 1.5, 0, 1) * (fy > cy)
    neck_shade = np.clip(0.6 + 0.4 * (1 - np.abs(fx - 0.5) / 0.13), 0.5, 1.0)
    blend(pt.img, neck, skin * 0.78 * neck_shade[..., None])
    shirt = np.asarray(p["shirt"], np.float32)
    shoulders = pt.ellipse(pt.px(0.5, 1.22), (0.62 * R, 0.36 * R), blur=1.0)
    blend(pt.img, shoulders, shirt * (0.8 + 0.25 * (1 - np.abs(fx - 0.5) * 2)[..., None]))
    collar = [pt.px(0.35, 0.9), pt.px(0.5, 1.0), pt.px(0.65, 0.9)]
    blend(pt.img, 0.7 * pt.polyline(collar, max(2, 0.012 * R), blur=0.8), shirt * 0.5)


def _hair_back(pt: Painter, p: dict, cy: float, b_up: float) -> tuple[np.ndarray, np.ndarray]:
    """Hair behind the head; returns its mask and the strand texture (for the cap)."""
    R, fx, fy = pt.R, pt.fx, pt.fy
    hair = np.asarray(p["hair"], np.float32)
    strands = 1 + 0.18 * pt.noise(R * 0.02, sx=R * 0.002)[..., None]
    hb = (1.15 if p["hair_style"] == "long" else 1.02) * p["a"]
    back = pt.ellipse(pt.px(0.5, cy - 0.02), (hb * R, (b_up + 0.06) * R), blur=1.5)
    if p["hair_style"] == "long":
        fall = (np.abs(fx - 0.5) < hb * 0.98) * (fy > cy) * np.clip((cy + 0.3 - fy) / 0.05, 0, 1)
        back = np.maximum(back, fall)
    blend(pt.img, back, hair * strands * 0.8)
    return back, strands


def _skin(pt: Painter, p: dict, cy: float, b_up: float, b_low: float) -> None:
    """Ears, then the face: a superellipse with a narrower jaw, Lambert-shaded as an ellipsoid."""
    R, fx, fy = pt.R, pt.fx, pt.fy
    skin = np.asarray(p["skin"], np.float32)
    a, chin, n_low = p["a"], p["chin"], p["jaw"]
    for s in (-1, 1):
        blend(pt.img, pt.ellipse(pt.px(0.5 + s * 0.97 * a, 0.47), (0.035 * R, 0.07 * R), blur=0.8), skin * 0.82)
    dx, dy = (fx - 0.5) / a, np.where(fy < cy, (fy - cy) / b_up, (fy - cy) / b_low)
    r = np.where(dy < 0, np.abs(dx) ** 2.2 + np.abs(dy) ** 2.2, np.abs(dx) ** n_low + np.abs(dy) ** n_low)
    face = np.clip((1.0 - r) * R * 0.08, 0, 1)
    nz = np.sqrt(np.clip(1 - dx**2 - dy**2, 0.02, 1))
    light = (-0.35, -0.45, 0.82)
    lam = np.clip((dx * light[0] + dy * light[1] + nz * light[2]) / np.sqrt(dx**2 + dy**2 + nz**2), 0, 1)
    blush = np.exp(-(((np.abs(fx - 0.5) - 0.14) / 0.05) ** 2 + ((fy - 0.58) / 0.05) ** 2))
    tex = 1 + 0.025 * pt.noise(R * 0.012) + 0.012 * pt.noise(R * 0.002)
    rgb = skin * ((0.5 + 0.55 * lam) * tex)[..., None] + blush[..., None] * np.array([9, -3, -3], np.float32)
    blend(pt.img, face, rgb)
    under = np.exp(-(((fy - chin - 0.025) / 0.03) ** 2)) * (np.abs(fx - 0.5) < 0.16) * (1 - face)
    pt.shade(-0.35 * under)  # jaw shadow on the neck


def _brows_and_nose(pt: Painter, p: dict) -> None:
    R = pt.R
    hair, skin = np.asarray(p["hair"], np.float32), np.asarray(p["skin"], np.float32)
    for s in (-1, 1):
        ex, ey = pt.px(0.5 + s * p["eyes"] / 2, EYE_Y)
        u = np.linspace(-1, 1, 16)
        brow = np.stack([ex + s * 0.06 * R * u - s * 0.005 * R,
                         ey - 0.065 * R - 0.018 * R * (1 - u**2) + s * 0.006 * R * u], 1)
        blend(pt.img, 0.9 * pt.polyline(brow, max(2, 0.016 * R), blur=0.7), hair * 0.55)
    nx, tip = pt.px(0.5, 0.565)
    side = np.exp(-(((np.abs(pt.x - nx) - 0.028 * R) / (0.01 * R)) ** 2)) * ((pt.y > pt.px(0, 0.43)[1]) & (pt.y < tip))
    pt.shade(-0.12 * side)  # bridge sides
    pt.shade(0.12 * pt.blob(nx, tip - 0.01 * R, 0.025 * R, 0.02 * R))  # tip highlight
    for s in (-1, 1):
        pt.shade(-0.22 * pt.blob(nx + s * 0.035 * R, tip, 0.014 * R, 0.016 * R))  # alar wings
        nostril = pt.ellipse((nx + s * 0.018 * R, tip + 0.012 * R), (0.011 * R, 0.006 * R), s * 15, blur=0.6)
        blend(pt.img, 0.8 * nostril, skin * 0.25)
    pt.shade(-0.12 * pt.blob(nx, tip + 0.028 * R, 0.03 * R, 0.01 * R))  # shadow under the nose


def _eye(pt: Painter, p: dict, cx: float, cy: float, closed: bool) -> None:
    hw, hh = EYE_HALF[0] * pt.R, EYE_HALF[1] * pt.R
    skin = np.asarray(p["skin"], np.float32)
    pt.shade(-0.16 * pt.blob(cx, cy - 0.3 * hh, 1.5 * hw, 2.2 * hh))  # socket
    outline = almond(cx, cy, hw, hh)
    lid = pt.polygon(outline)
    if closed:
        blend(pt.img, lid, skin * 0.82)
        u = np.linspace(-1, 1, 20)
        blend(pt.img, pt.polyline(np.stack([cx + hw * u, cy + 0.35 * hh * (1 - u**2)], 1), hh * 0.25), (30, 20, 18))
        return
    blend(pt.img, lid, (236, 232, 226))
    pt.shade(-0.25 * lid * (1 - np.clip(1.0 - np.abs(pt.x - cx) / hw, 0, 1) ** 0.3))  # sclera corners
    r = 0.87 * hh
    ring = np.clip(np.hypot(pt.x - cx, pt.y - cy) / r, 0, 1)
    iris_rgb = np.asarray(p["iris"], np.float32) * (1.1 - 0.5 * ring**2)[..., None]
    blend(pt.img, pt.ellipse((cx, cy), (r, r)) * lid, iris_rgb)
    blend(pt.img, pt.ellipse((cx, cy), (0.45 * r, 0.45 * r)) * lid, (12, 10, 10))
    blend(pt.img, pt.ellipse((cx + 0.3 * r, cy - 0.3 * r), (0.2 * r, 0.2 * r), blur=0.5) * lid, (250, 250, 250))
    upper, lower = outline[:24], outline[24:]
    blend(pt.img, pt.polyline(upper, hh * 0.3), (28, 20, 18))  # lashes
    blend(pt.img, 0.35 * pt.polyline(upper + np.array([0.0, -0.55 * hh]), 1, blur=0.8), skin * 0.55)  # crease
    blend(pt.img, 0.4 * pt.polyline(lower, 1, blur=0.5), skin * 0.6)


def paint_drawn_face(p: dict, R: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Canvases with eyes open and closed (uint8 ``[C, C, 3]``) and the geometry (canvas pixels)."""
    pt = Painter(R, np.random.default_rng([1234, seed]))
    chin = p["chin"]
    cy = 0.5 * (FOREHEAD_Y + chin) - 0.02
    b_up, b_low = cy - FOREHEAD_Y, chin - cy
    _background_and_body(pt, p, cy)
    back, strands = _hair_back(pt, p, cy, b_up)
    _skin(pt, p, cy, b_up, b_low)
    hairline = FOREHEAD_Y + 0.04 + 0.07 * ((pt.fx - 0.5) / p["a"]) ** 2  # lower at the temples
    blend(pt.img, back * np.clip((hairline - pt.fy) * R / 1.5, 0, 1), np.asarray(p["hair"], np.float32) * strands)
    _brows_and_nose(pt, p)
    base = pt.img.copy()
    out, boxes = [], []
    for closed in (False, True):
        pt.img = base.copy()
        for s in (-1, 1):
            cx, cy_eye = pt.px(0.5 + s * p["eyes"] / 2, EYE_Y)
            _eye(pt, p, cx, cy_eye, closed)
            if not closed:
                hw, hh = EYE_HALF[0] * R, EYE_HALF[1] * R
                boxes.append((int(cx - 1.6 * hw), int(cy_eye - 2.6 * hh), int(cx + 1.6 * hw) + 1,
                              int(cy_eye + 2.2 * hh) + 1))
        out.append(np.clip(pt.img, 0, 255).astype(np.uint8))
    a = p["a"]
    x0, y0 = pt.px(0.5 - a, FOREHEAD_Y - 0.02)
    x1, y1 = pt.px(0.5 + a, chin)
    return out[0], out[1], {"eye_boxes": boxes, "face_box": (x0, y0, x1, y1)}
