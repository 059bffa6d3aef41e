"""LatentSync's face path: 3-point similarity alignment, the fixed lower-face mask, paste-back.

Geometry (LatentSync ``affine_transform.py`` ``AlignRestore``, 3 points):

* template at 256 px: brows (17, 20), (58, 20), nose (37.5, 40), scaled by r = res / 256 * 2.8;
  crop ``face_size = (int(75 r), int(100 r))`` (W, H), 3:4; at 512: r = 5.6, 420 x 560;
* anchors (see ``teacher.face_backends``) rounded to whole pixels, then mapped to the template
  by ``similarity_from_points`` (SVD Procrustes, scale = ratio of point spreads);
* ``M[:, 2] += EMA(bias)``, bias = nose offset between the normalised template and anchors;
* bilinear warp to ``face_size`` with grey 127 fill, then a Lanczos resize to res x res.

Here the warp and the resize are one 2x3 ``matrix`` (frame pixel -> crop pixel), so
``cv2.warpAffine(frame, matrix, (res, res))`` gives the crop up to interpolation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from teacher.face_backends import (
    BackendUnavailableError,
    FaceAlignmentLandmarker,
    FaceCandidate,
    FaceLandmarker,
    InsightFaceLandmarker,
    MediaPipeLandmarker,
)

__all__ = [
    "FILL_VALUE",
    "AlignState",
    "AlignedFace",
    "BackendUnavailableError",
    "FaceAligner",
    "FaceAlignmentLandmarker",
    "FaceLandmarker",
    "InsightFaceLandmarker",
    "MediaPipeLandmarker",
    "SceneCut",
    "align_video",
    "build_aligner",
    "iter_aligned",
    "crop_matrix",
    "face_template",
    "load_mask_image",
    "lower_face_mask",
    "similarity_from_points",
    "smooth_translation",
]

log = logging.getLogger(__name__)

FILL_VALUE = 127  # LatentSync's border fill (grey) for the aligned crop
EMA_MOMENTUM = 0.2  # weight of the previous bias in LatentSync's p_bias smoothing


@dataclass(frozen=True)
class AlignedFace:
    """One aligned face: crop uint8 [res, res, 3]; matrix float64 [2, 3] frame -> crop pixels;
    landmarks float64 [3, 2] anchors used (brow, brow, nose)."""

    crop: np.ndarray
    matrix: np.ndarray
    landmarks: np.ndarray


@dataclass(frozen=True)
class SceneCut:
    """When the translation smoothing restarts. A cut between two consecutive frames is a jump of the picture (mean
    absolute difference of their 32 x 32 grey thumbnails above ``frame_diff`` levels: within a shot it stays under
    ~2 on the synthetic world and the ``../shared/cases`` clips, between different shots it is ~5-35) or a jump of
    the face (the nose anchor moves more than ``face_jump`` brow distances between two frames with a face, or the
    brow distance changes by more than ``scale_jump`` times)."""

    frame_diff: float = 12.0
    face_jump: float = 0.5
    scale_jump: float = 1.5


@dataclass(frozen=True)
class AlignState:
    """What ``FaceAligner.align_step`` carries from frame to frame: the translation EMA (``bias``, None = restart),
    the last face's anchors [3, 2] and the last frame's thumbnail (scene cuts), frames seen, cuts found, and whether
    the several-faces choice has been stated."""

    bias: np.ndarray | None = None
    anchors: np.ndarray | None = None
    thumb: np.ndarray | None = None
    frame: int = 0
    cuts: int = 0
    stated: bool = False


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    """32 x 32 grey float32 thumbnail (area average) of an RGB frame."""
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def _face_jumped(prev: np.ndarray, cur: np.ndarray, cut: SceneCut) -> bool:
    """The face moved or resized too much for one frame (anchors [3, 2]: brow, brow, nose)."""
    d0, d1 = (float(np.hypot(*(a[1] - a[0]))) for a in (prev, cur))
    if min(d0, d1) <= 0:
        return True
    return bool(np.hypot(*(cur[2] - prev[2])) > cut.face_jump * d0 or max(d1 / d0, d0 / d1) > cut.scale_jump)


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def choose_face(faces: Sequence[FaceCandidate], choose) -> FaceCandidate | None:
    """The face to lip-sync among ``faces`` (left to right): ``"largest"`` (LatentSync's rule), an int index
    (0 = leftmost, -1 = rightmost; None when there are fewer faces), or a box (x1, y1, x2, y2) in frame px
    (the face overlapping it most; None when none overlaps)."""
    if not faces:
        return None
    if isinstance(choose, str):
        return max(faces, key=lambda f: f.area)
    if isinstance(choose, int):
        return faces[choose] if -len(faces) <= choose < len(faces) else None
    iou = [_box_iou(f.box, choose) for f in faces]
    return faces[int(np.argmax(iou))] if max(iou) > 0 else None


def parse_choice(choose) -> str | int | tuple[float, float, float, float]:
    """``face.choose`` from a config or the command line: 'largest', an int (or its text), or 4 numbers (a list or
    'x1,y1,x2,y2'). ValueError otherwise."""
    if isinstance(choose, str) and choose.strip().lower() == "largest":
        return "largest"
    if isinstance(choose, str):
        parts = [p for p in choose.replace("[", "").replace("]", "").split(",") if p.strip()]
        choose = int(parts[0]) if len(parts) == 1 and parts[0].strip().lstrip("-").isdigit() else parts
    if isinstance(choose, (int, np.integer)) and not isinstance(choose, bool):
        return int(choose)
    try:
        box = tuple(float(v) for v in choose)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"face.choose must be 'largest', a face index (0 = leftmost) or a box [x1, y1, x2, y2] "
                         f"with x2 > x1 and y2 > y1, got {choose!r}")  # fmt: skip
    return box


def face_template(resolution: int = 512) -> tuple[np.ndarray, tuple[int, int]]:
    """LatentSync's 3-point template [3, 2] and the 3:4 crop size (W, H) it lives in."""
    ratio = resolution / 256 * 2.8
    template = np.array([[19 - 2, 30 - 10], [56 + 2, 30 - 10], [37.5, 45 - 5]], dtype=np.float64) * ratio
    return template, (int(75 * ratio), int(100 * ratio))


def similarity_from_points(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarity M [2, 3] with M @ [p; 1] ~ template, as LatentSync's ``transformation_from_points``.

    Both point sets are centred and divided by their scalar std; R is the orthogonal Procrustes
    rotation (SVD of the normalised covariance, reflection removed); s = std(template) / std(points)
    (the ratio of spreads, not the least-squares scale); T = c_t - s R c_p. Also returns the raw
    smoothing bias = normalised template nose - normalised anchor nose (unitless, added in pixels).
    """
    p = np.asarray(points, dtype=np.float64)
    q = np.asarray(template, dtype=np.float64)
    c1, c2 = p.mean(axis=0), q.mean(axis=0)
    s1, s2 = (p - c1).std(ddof=1), (q - c2).std(ddof=1)
    p_n, q_n = (p - c1) / s1, (q - c2) / s2
    u, _, vt = np.linalg.svd(p_n.T @ q_n)
    v = vt.T
    r = v @ u.T
    if np.linalg.det(r) < 0:
        v[:, -1] = -v[:, -1]
        r = v @ u.T
    s_r = (s2 / s1) * r
    t = c2 - s_r @ c1
    return np.concatenate([s_r, t[:, None]], axis=1), q_n[2] - p_n[2]


def smooth_translation(bias: np.ndarray, state: np.ndarray | None,
                       momentum: float = EMA_MOMENTUM) -> tuple[np.ndarray, np.ndarray]:
    """LatentSync's p_bias EMA: b~_0 = b_0, b~_t = 0.2 b~_{t-1} + 0.8 b_t. Returns (b~_t, state = b~_t).

    Closed form: b~_t = 0.2^t b_0 + sum_{k=1..t} 0.8 * 0.2^(t-k) b_k. ``state`` None starts a clip.
    """
    bias = np.asarray(bias, dtype=np.float64)
    smoothed = bias.copy() if state is None else momentum * state + (1 - momentum) * bias
    return smoothed, smoothed.copy()


def _resize_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """3x3 pixel map of cv2.resize from size src_hw to dst_hw (pixel centres: x' = s (x + 1/2) - 1/2)."""
    sx, sy = dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]
    return np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2], [0.0, 0.0, 1.0]])


def _homogeneous(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def crop_matrix(affine: np.ndarray, face_size: tuple[int, int], resolution: int) -> np.ndarray:
    """Fold the face_size (W, H) -> res x res resize into ``affine``: [2, 3] frame -> crop pixels."""
    return (_resize_matrix(face_size[::-1], (resolution, resolution)) @ _homogeneous(affine))[:2]


def _crop_to_float(crop) -> np.ndarray:
    """uint8 [h, w, 3] in [0, 255], or float [3, h, w] / [h, w, 3] in [-1, 1] (numpy or torch)
    -> float32 [h, w, 3] in [0, 255]."""
    if hasattr(crop, "detach"):  # torch tensor, without importing torch here
        crop = crop.detach().float().cpu().numpy()
    crop = np.asarray(crop)
    if crop.ndim != 3:
        raise ValueError(f"crop must be [h, w, 3] or [3, h, w], got {crop.shape}")
    if crop.shape[0] == 3 and crop.shape[-1] != 3:
        crop = crop.transpose(1, 2, 0)
    if crop.dtype == np.uint8:
        return crop.astype(np.float32)
    return ((np.clip(crop.astype(np.float32), -1, 1) + 1) * 127.5).astype(np.float32)


class FaceAligner:
    """Align faces to LatentSync's crop and paste generated crops back.

    ``align(frame)`` is stateless (it equals the first frame of a LatentSync run);
    ``align_step(frame, state)`` threads the translation EMA explicitly for video (an ``AlignState``).
    ``exact_resampling`` reproduces LatentSync's two resamplings (bilinear warp to the 3:4 crop,
    Lanczos resize); False does a single bilinear warp with ``matrix`` (faster).
    ``choose``: which face when there are several (``choose_face``: "largest" as LatentSync, an index from the
    left, or a box); the first frame with several faces logs one line saying which was taken.
    ``scene_cut``: when the EMA restarts (``SceneCut``; None = never, as LatentSync).
    """

    def __init__(self, resolution: int = 512, landmarker: FaceLandmarker | None = None, *,
                 smooth: bool = True, round_anchors: bool = True, exact_resampling: bool = True,
                 choose="largest", scene_cut: SceneCut | None = SceneCut()):  # fmt: skip
        self.resolution = resolution
        self.landmarker = landmarker if landmarker is not None else MediaPipeLandmarker()
        self.smooth, self.round_anchors, self.exact_resampling = smooth, round_anchors, exact_resampling
        self.choose, self.scene_cut = parse_choice(choose), scene_cut
        self.template, self.face_size = face_template(resolution)
        self.too_small: tuple[float, float] | None = None  # set by align_video

    def align(self, frame: np.ndarray) -> AlignedFace | None:
        """RGB uint8 [H, W, 3] -> AlignedFace, or None when no face is found."""
        return self.align_step(frame, None)[0]

    def align_step(self, frame: np.ndarray, state: AlignState | np.ndarray | None
                   ) -> tuple[AlignedFace | None, AlignState]:  # fmt: skip
        """One video frame: (AlignedFace or None, new state). ``state`` None starts a clip (a bare EMA array is
        taken as its bias). A faceless frame keeps the EMA; a scene cut (``self.scene_cut``: the picture or the
        face jumps) restarts it, so the first face after a cut aligns as a clip's first frame."""
        st = state if isinstance(state, AlignState) else AlignState(bias=state)
        thumb = _thumbnail(frame) if self.scene_cut is not None else None
        cut = st.thumb is not None and float(np.abs(thumb - st.thumb).mean()) > self.scene_cut.frame_diff
        anchors, stated = self._pick(frame, st)
        if anchors is None:
            keep = dict(bias=None, anchors=None) if cut else {}
            return None, replace(st, thumb=thumb, frame=st.frame + 1, cuts=st.cuts + cut, stated=stated, **keep)
        if not cut and self.scene_cut is not None and st.anchors is not None:
            cut = _face_jumped(st.anchors, np.asarray(anchors, np.float64), self.scene_cut)
        aligned, bias = self.align_anchors(frame, anchors, None if cut else st.bias)
        return aligned, AlignState(bias, np.asarray(anchors, np.float64), thumb, st.frame + 1, st.cuts + cut, stated)

    def _pick(self, frame: np.ndarray, st: AlignState) -> tuple[np.ndarray | None, bool]:
        """Anchors of the chosen face (or None) and whether the choice has been stated."""
        faces_of = getattr(self.landmarker, "faces", None)
        if faces_of is None:  # a plain landmarker callable: one face or none
            return self.landmarker(frame), st.stated
        if st.anchors is not None and getattr(self.landmarker, "small_faces", False):  # where the face was
            d = float(np.hypot(*(st.anchors[1] - st.anchors[0])))
            faces = faces_of(frame, near=(*st.anchors[2], 6 * d))  # a square of 6 brow distances about the nose
        else:
            faces = faces_of(frame)
        face = choose_face(faces, self.choose)
        if len(faces) > 1 and not st.stated:
            log.warning("%d faces in frame %d: %s (set face.choose to 'largest', a face index from the left, "
                        "0 = leftmost, or a box [x1, y1, x2, y2] in px)",
                        len(faces), st.frame, self._said(face))  # fmt: skip
            return (face.anchors if face else None), True
        return (face.anchors if face else None), st.stated

    def _said(self, face: FaceCandidate | None) -> str:
        where = "none matches" if face is None else "at box ({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*face.box)
        if isinstance(self.choose, str):
            return f"lip-syncing the largest, {where}"
        if isinstance(self.choose, int):
            return f"lip-syncing face {self.choose} from the left, {where}"
        return "lip-syncing the face overlapping ({:.0f}, {:.0f}, {:.0f}, {:.0f}) most, ".format(*self.choose) + where

    def align_anchors(self, frame: np.ndarray, anchors: np.ndarray, state: np.ndarray | None = None
                      ) -> tuple[AlignedFace, np.ndarray | None]:
        """Align with given anchors [3, 2]: (AlignedFace, new smoothing state)."""
        anchors = np.asarray(anchors, dtype=np.float64)
        if self.round_anchors:
            anchors = np.round(anchors)
        affine, bias = similarity_from_points(anchors, self.template)
        if self.smooth:
            bias, state = smooth_translation(bias, state)
            affine[:, 2] += bias
        matrix = crop_matrix(affine, self.face_size, self.resolution)
        border = dict(borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL_VALUE,) * 3)
        if self.exact_resampling:
            face = cv2.warpAffine(frame, affine, self.face_size, flags=cv2.INTER_LINEAR, **border)
            crop = cv2.resize(face, (self.resolution,) * 2, interpolation=cv2.INTER_LANCZOS4)
        else:
            crop = cv2.warpAffine(frame, matrix, (self.resolution,) * 2, flags=cv2.INTER_LINEAR, **border)
        return AlignedFace(crop=crop, matrix=matrix, landmarks=anchors), state

    def restore(self, frame: np.ndarray, crop, aligned: AlignedFace, weight: np.ndarray | None = None) -> np.ndarray:
        """Paste ``crop`` (uint8 [res, res, 3], or float [3, res, res] in [-1, 1]; any square size
        works, it is taken to span the aligned crop) back into a copy of ``frame``.

        weight: float [r, r] paste weight in crop space (``teacher.conditioning.paste_weight``: the region the
        U-Net regenerated, feathered inward); each frame pixel p takes a = weight(M p) and
        out = a * crop(M p) + (1 - a) * frame, so pixels where a = 0 stay exactly as they were. None: the
        official whole-crop paste, as LatentSync: inverse warp, a mask of the crop area eroded by 2 px, an
        inner core eroded by ~w_edge px with w_edge = sqrt(mask area) // 20, Gaussian-feathered over
        2 w_edge + 1 px. Unlike it: one resampling (the crop is area-downscaled first when it shrinks > 1.5x),
        only the face's bounding box is processed, values are rounded rather than truncated.
        """
        img = _crop_to_float(crop)
        if weight is not None:
            weight = np.asarray(weight, np.float32)
            if weight.shape != img.shape[:2]:
                weight = cv2.resize(weight, img.shape[1::-1], interpolation=cv2.INTER_AREA)
        matrix = (_resize_matrix((self.resolution,) * 2, img.shape[:2]) @ _homogeneous(aligned.matrix))[:2]
        # area pre-filter when the crop is much denser than the frame (avoids aliasing)
        dens = np.linalg.norm(matrix[:, :2], axis=1)  # crop px per frame px along crop x, y
        if (dens > 1.5).any():
            new_hw = (max(1, round(img.shape[0] / max(dens[1], 1))), max(1, round(img.shape[1] / max(dens[0], 1))))
            matrix = (_resize_matrix(img.shape[:2], new_hw) @ _homogeneous(matrix))[:2]
            img = cv2.resize(img, new_hw[::-1], interpolation=cv2.INTER_AREA)
            if weight is not None:
                weight = cv2.resize(weight, new_hw[::-1], interpolation=cv2.INTER_AREA)
        h, w = frame.shape[:2]
        ch, cw = img.shape[:2]
        inv = cv2.invertAffineTransform(matrix)
        corners = np.array([[-0.5, -0.5, 1], [cw - 0.5, -0.5, 1], [-0.5, ch - 0.5, 1], [cw - 0.5, ch - 0.5, 1]])
        xy = corners @ inv.T
        x0, y0 = np.maximum(np.floor(xy.min(axis=0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(xy.max(axis=0)).astype(int) + 3, (w, h))
        out = frame.copy()
        if x1 <= x0 or y1 <= y0:
            return out
        roi = matrix.copy()
        roi[:, 2] += roi[:, :2] @ np.array([x0, y0], dtype=np.float64)  # ROI pixel -> crop pixel
        size = (int(x1 - x0), int(y1 - y0))
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        face = cv2.warpAffine(img, roi, size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(FILL_VALUE,) * 3)
        base = frame[y0:y1, x0:x1].astype(np.float32)
        if weight is None:
            mask = cv2.warpAffine(np.ones((ch, cw), np.float32), roi, size, flags=flags,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            soft, mask = _feather(mask)
            face = mask[..., None] * face
        else:
            soft = cv2.warpAffine(weight, roi, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        blended = soft[..., None] * face + (1 - soft[..., None]) * base
        out[y0:y1, x0:x1] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        return out


def _feather(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LatentSync's paste mask: (soft mask, 2 px eroded mask), float32 [h, w]."""
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    w_edge = int(float(mask.sum()) ** 0.5) // 20
    if w_edge == 0:
        return mask, mask
    # LatentSync erodes with an even 2 w_edge kernel (w_edge px on one side, w_edge - 1 on the
    # other), which lets the feather touch the mask's fractional rim: a dark fringe. Odd kernel here.
    core = cv2.erode(mask, np.ones((2 * w_edge + 1, 2 * w_edge + 1), np.uint8))
    k = 2 * w_edge + 1
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's default sigma for a k-tap kernel
    return cv2.GaussianBlur(core, (k, k), sigma), mask


def iter_aligned(frames: Iterable[np.ndarray], aligner: FaceAligner) -> Iterator[AlignedFace | None]:
    """Align each frame as it comes, the translation EMA carried across frames (restarted at scene cuts): yields an
    ``AlignedFace`` or None (no face; the EMA state is left as it was), holding nothing of earlier frames. When the
    frames are exhausted, one warning counts the faceless ones (not one per frame), naming those whose face was
    turned away or in profile, when some frames do have a face; ``aligner.too_small`` is left at the largest face
    found but under the minimum box."""
    state = None
    small = None  # the largest face the landmarker found but rejected as too small
    turned = 0  # faceless frames whose face was rejected for its geometry (profile, turned away)
    faceless: list[int] = []
    n = 0
    for n, frame in enumerate(frames, 1):
        face, state = aligner.align_step(frame, state)
        seen = getattr(aligner.landmarker, "too_small", None) if face is None else None
        if seen is not None and (small is None or seen[0] * seen[1] > small[0] * small[1]):
            small = seen
        turned += face is None and bool(getattr(aligner.landmarker, "turned_away", False))
        if face is None:
            faceless.append(n - 1)
        yield face
    aligner.too_small = small
    if faceless and len(faceless) < n:  # none at all: the caller says so (its error or summary)
        why = [f"{turned} turned away or in profile"] if turned else []
        why += [too_small_message(aligner)] if small else []
        log.warning("no face in %d of %d frames (%s): passed through unedited%s", len(faceless), n,
                    _ranges(faceless), "; " + "; ".join(why) if why else "")  # fmt: skip


def align_video(frames: Iterable[np.ndarray], aligner: FaceAligner) -> list[AlignedFace | None]:
    """``iter_aligned`` collected in a list (one entry per frame)."""
    return list(iter_aligned(frames, aligner))


def build_aligner(resolution: int, small_faces: bool = False, choose="largest", scene_cut: bool = True) -> FaceAligner:
    """The face aligner of a preset's ``face:`` section (``configs.instantiate``). ``small_faces``: find faces
    under LatentSync's 50 x 80 px minimum (``MediaPipeLandmarker(small_faces=True)``); ``choose``: which face
    when there are several ('largest', an index from the left or a box [x1, y1, x2, y2] in px; ValueError for
    anything else); ``scene_cut``: restart the translation smoothing at scene cuts (``SceneCut()``)."""
    landmarker = MediaPipeLandmarker(small_faces=bool(small_faces))
    return FaceAligner(int(resolution), landmarker, choose=choose, scene_cut=SceneCut() if scene_cut else None)


def too_small_message(aligner) -> str:
    """'face too small (W x H px, minimum 50 x 80 px)' after ``align_video`` saw only faces under the minimum box."""
    w, h = aligner.too_small
    mw, mh = getattr(aligner.landmarker, "min_box_size", (50, 80))
    return (f"face too small ({w:.0f} x {h:.0f} px, minimum {mw:.0f} x {mh:.0f} px; smaller ones: --small-faces or "
            "face.small_faces=true)")


def _ranges(indices: list[int], most: int = 4) -> str:
    """'3-7, 12, 20-21' for sorted frame indices (the first ``most`` runs, then '...')."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:most])
    return text + (", ..." if len(runs) > most else "")


# Lower-face mask. LatentSync multiplies the aligned crop by a fixed binary mask.png (white =
# keep); we rasterise our own parametric shape that approximates it, in units of the crop side:
# cheek strips beside the nose from y = 0.37, the full width below y = 0.5, closed at the bottom
# by a half-ellipse down to y = 0.95 (the jaw).
_CHEEK_TOP, _MOUTH_TOP, _JAW_BOTTOM = 0.37, 0.5, 0.95
_HALF_WIDTH = 0.465  # half-width of the masked region at y = 0.5, about x = 0.5
_NOSE_HALF_WIDTH = 0.2  # kept band over the nose between y = 0.37 and 0.5


def lower_face_mask(resolution: int = 512) -> np.ndarray:
    """float32 [res, res], 1 = keep (upper face, margins), 0 = region the U-Net regenerates."""
    c = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution  # pixel centres in [0, 1]
    y, x = c[:, None], c[None, :]
    dx = np.abs(x - 0.5)
    cheeks = (y >= _CHEEK_TOP) & (y < _MOUTH_TOP) & (dx <= _HALF_WIDTH) & (dx > _NOSE_HALF_WIDTH)
    t = np.clip((y - _MOUTH_TOP) / (_JAW_BOTTOM - _MOUTH_TOP), 0, 1)
    jaw = (y >= _MOUTH_TOP) & (y <= _JAW_BOTTOM) & (dx <= _HALF_WIDTH * np.sqrt(1 - t**2))
    return np.where(cheeks | jaw, 0.0, 1.0).astype(np.float32)


def load_mask_image(path: str, resolution: int = 512) -> np.ndarray:
    """An official-style mask.png as LatentSync loads it: RGB, INTER_LANCZOS4 resize to
    res x res, / 255, first channel -> float32 [res, res]."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: cannot read mask image")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    return (img[..., 0] / 255.0).astype(np.float32)
