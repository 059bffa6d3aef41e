"""Face landmark back-ends that return LatentSync's three alignment anchors.

A landmarker maps one RGB uint8 [H, W, 3] frame to ``None`` (no usable face) or float64 [3, 2]
pixel (x, y) anchors in LatentSync's order:

    0: centre of the eyebrow on the image-left side of an upright face (the subject's right),
    1: centre of the other eyebrow,
    2: centre of the nose.

LatentSync 1.5/1.6 takes them from InsightFace's 106 points (``image_processor.py``):
brow 0 = mean of points {43, 48, 49, 50, 51}, brow 1 = mean of {101..105}, nose = mean of
{74, 77, 83, 86}, after rounding each landmark to whole pixels. The other back-ends average
what we take to be the corresponding points of their own topologies (``MEDIAPIPE_ANCHOR_INDICES``,
``FAN68_ANCHOR_INDICES``): the whole brow, and for the nose one mid-bridge point, the two alar
sides and the tip. The InsightFace 106 markup is not published as text, so the nose set is an
anatomical reading, good to a few pixels; the similarity fit absorbs a constant offset as a
slightly different framing of the crop. Detections follow LatentSync's filter (``face_detector.py``): the largest
face whose box is at least 50 x 80 px with width / height in [0.2, 1.5] and score >= 0.5; then
``anchors_plausible`` rejects geometry no face has.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "FAN68_ANCHOR_INDICES",
    "INSIGHTFACE_ANCHOR_INDICES",
    "MEDIAPIPE_ANCHOR_INDICES",
    "BackendUnavailableError",
    "FaceAlignmentLandmarker",
    "FaceCandidate",
    "FaceLandmarker",
    "InsightFaceLandmarker",
    "MediaPipeLandmarker",
    "anchors_from_landmarks",
    "anchors_plausible",
    "box_plausible",
    "left_to_right",
]

# (brow 0, brow 1, nose) index sets per topology.
INSIGHTFACE_ANCHOR_INDICES = ((43, 48, 49, 51, 50), (101, 102, 103, 104, 105), (74, 77, 83, 86))
# MediaPipe 468-point mesh: both edges of each brow (upper 70..107 / lower 46..55 and mirrors),
# nose = mid-bridge 195, alar sides 129 / 358, tip 4.
MEDIAPIPE_ANCHOR_INDICES = (
    (70, 63, 105, 66, 107, 46, 53, 52, 65, 55),
    (336, 296, 334, 293, 300, 285, 295, 282, 283, 276),
    (195, 129, 358, 4),
)
# 68-point (iBUG / face-alignment, 0-based): brows 17..21 and 22..26, nose bridge 29, alae 31 / 35, tip 30.
FAN68_ANCHOR_INDICES = ((17, 18, 19, 20, 21), (22, 23, 24, 25, 26), (29, 31, 35, 30))


class BackendUnavailableError(RuntimeError):
    """A landmark back-end cannot run here (package or weights missing)."""


@contextlib.contextmanager
def quiet_native_stderr(active: bool = True):
    """Send file descriptor 2 to /dev/null while ``active``: mediapipe and TensorFlow Lite write their start-up
    log lines (absl / glog, "W0000 ... feedback manager", "Created TensorFlow Lite XNNPACK delegate") from C++
    straight to fd 2, which no Python logging setting reaches. Used around the graphs' creation and ``process``
    calls (two dup2 calls, microseconds); Python exceptions still propagate (and print after the descriptor is
    restored)."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@runtime_checkable
class FaceLandmarker(Protocol):
    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """frame: RGB uint8 [H, W, 3] -> anchors float64 [3, 2] (x, y), or None."""
        ...


def anchors_from_landmarks(points: np.ndarray, index_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean of each index set: [N, 2] landmarks -> [3, 2] anchors."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([points[list(idx)].mean(axis=0) for idx in index_sets])


def box_plausible(box: Sequence[float], min_size: tuple[float, float] = (50, 80)) -> bool:
    """LatentSync's face box filter: w >= 50, h >= 80, 0.2 <= w / h <= 1.5 (box = x1, y1, x2, y2)."""
    w, h = box[2] - box[0], box[3] - box[1]
    return w >= min_size[0] and h >= min_size[1] and 0.2 <= w / h <= 1.5


def anchors_plausible(anchors: np.ndarray, frame_shape: Sequence[int], min_brow_distance: float = 12.0) -> bool:
    """Reject anchor triples no upright-or-rotated face produces.

    Checks: finite; nose inside the frame; brows at least ``min_brow_distance`` px apart;
    the nose on the chin side of the brow line (positive orientation in image coordinates,
    as for any non-mirrored face); nose distance from that line 0.15 - 1.5 brow distances.
    LatentSync's template has 20 / 41 = 0.49.
    """
    a = np.asarray(anchors, dtype=np.float64)
    if a.shape != (3, 2) or not np.isfinite(a).all():
        return False
    h, w = frame_shape[:2]
    if not (0 <= a[2, 0] < w and 0 <= a[2, 1] < h):
        return False
    brow = a[1] - a[0]
    d = float(np.hypot(*brow))
    if d < min_brow_distance:
        return False
    nose = a[2] - (a[0] + a[1]) / 2
    drop = (brow[0] * nose[1] - brow[1] * nose[0]) / d  # signed distance below the brow line
    return 0.15 * d <= drop <= 1.5 * d


@dataclass(frozen=True)
class FaceCandidate:
    """One face a back-end found: anchors float64 [3, 2] (brow, brow, nose) and its box (x1, y1, x2, y2) in px."""

    anchors: np.ndarray
    box: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def left_to_right(faces: Sequence[FaceCandidate]) -> list[FaceCandidate]:
    """Faces ordered by the x of their box centre (index 0 = the leftmost): the order ``choose=<index>`` counts in."""
    return sorted(faces, key=lambda f: f.box[0] + f.box[2])


class MediaPipeLandmarker:
    """MediaPipe face mesh (468 points), CPU, offline; the default back-end.

    The mesh's own detector is short-range (faces must fill a good part of the frame); when it
    finds nothing, MediaPipe's full-range face detector proposes boxes (score >=
    ``min_detection_confidence``) and the mesh runs again on a square crop twice the box size.
    ``static_image_mode=True`` makes every call independent (no tracking state). The largest
    plausible face wins; as in LatentSync, boxes under 50 x 80 px are rejected. About 4 ms a
    512 px frame with a large face, about 15 ms a 1080p frame that needs the fallback.

    ``small_faces=True`` finds faces under LatentSync's minimum: the box minimum becomes ``small_min_box``
    (16 x 16 px), and when the whole frame gives nothing the detector runs again on overlapping ``tile`` px tiles
    (each tile is scaled to the detector's 192 px input, so a face is seen ~``side / 192`` times larger: a 40 px
    face in a 1080p frame is 4 px to the whole-frame pass, 20 px to a 384 px tile), and every mesh runs on its
    square crop upscaled to at least 192 px (bicubic). The tiled pass costs ~28 detector calls on a 1080p frame
    (0.7-1.7 s on the shared 2-core dev CPU); in a video (``FaceAligner.align_step``) later frames first try the
    square where the face was (``near``: one mesh call, ~55 ms a 1080p frame with a 40 px face, all passes counted).
    """

    def __init__(self, min_detection_confidence: float = 0.5, max_num_faces: int = 4,
                 min_box_size: tuple[float, float] = (50, 80), detector_fallback: bool = True,
                 static_image_mode: bool = True, small_faces: bool = False,
                 small_min_box: tuple[float, float] = (16, 16), tile: int = 384):  # fmt: skip
        self.min_detection_confidence = min_detection_confidence
        self.max_num_faces = max_num_faces
        self.small_faces, self.tile = small_faces, tile
        self.min_box_size = tuple(small_min_box) if small_faces else tuple(min_box_size)
        self.detector_fallback = detector_fallback
        self.static_image_mode = static_image_mode
        self._mesh = self._detector = None
        self.too_small: tuple[float, float] | None = None
        self.turned_away = False

    def _solutions(self):
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as e:
            raise BackendUnavailableError("MediaPipeLandmarker needs `pip install mediapipe<=0.10.21`") from e
        return face_detection, face_mesh

    def _meshes(self, image: np.ndarray) -> list[np.ndarray]:
        first = self._mesh is None
        with quiet_native_stderr():  # the graph's C++ log lines (start-up, and once-per-condition warnings)
            if first:
                self._mesh = self._solutions()[1].FaceMesh(
                    static_image_mode=self.static_image_mode, max_num_faces=self.max_num_faces,
                    refine_landmarks=False, min_detection_confidence=self.min_detection_confidence,
                )
            result = self._mesh.process(image)
        h, w = image.shape[:2]
        faces = result.multi_face_landmarks or []
        return [np.array([(p.x * w, p.y * h) for p in f.landmark], dtype=np.float64) for f in faces]

    def _detections(self, image: np.ndarray) -> list[tuple[float, float, float]]:
        """Full-range detector boxes as (centre x, centre y, side = 2 x the box's longer side) px, best first."""
        first = self._detector is None
        with quiet_native_stderr():
            if first:
                self._detector = self._solutions()[0].FaceDetection(
                    model_selection=1, min_detection_confidence=self.min_detection_confidence)
            result = self._detector.process(np.ascontiguousarray(image))
        h, w = image.shape[:2]
        out = []
        for det in sorted(result.detections or [], key=lambda d: -d.score[0])[: self.max_num_faces]:
            box = det.location_data.relative_bounding_box
            out.append(((box.xmin + box.width / 2) * w, (box.ymin + box.height / 2) * h,
                        2 * max(box.width * w, box.height * h)))  # fmt: skip
        return out

    def _mesh_around(self, frame: np.ndarray, cx: float, cy: float, side: float) -> list[np.ndarray]:
        """Meshes in the square crop of ``side`` px centred on (cx, cy) (zero-padded outside the frame)."""
        side = int(round(side))
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        h, w = frame.shape[:2]
        sx, sy, ex, ey = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        if side < (8 if self.small_faces else 16) or ex <= sx or ey <= sy:
            return []
        crop = np.zeros((side, side, 3), np.uint8)
        crop[sy - y0: ey - y0, sx - x0: ex - x0] = frame[sy:ey, sx:ex]
        scale = 192 / side if self.small_faces and side < 192 else 1.0
        if scale != 1.0:
            import cv2

            crop = cv2.resize(crop, (192, 192), interpolation=cv2.INTER_CUBIC)
        return [pts / scale + (x0, y0) for pts in self._meshes(crop)]  # mediapipe's x * width: edge-based

    def _meshes_from_detections(self, frame: np.ndarray) -> list[np.ndarray]:
        return [m for det in self._detections(frame) for m in self._mesh_around(frame, *det)]

    def _meshes_from_tiles(self, frame: np.ndarray) -> list[np.ndarray]:
        """Detector on overlapping ``tile`` px tiles (a quarter overlap); meshes from the full frame; duplicates of
        one face (found in two tiles) dropped."""
        h, w = frame.shape[:2]
        t = min(self.tile, h, w)
        step = max(1, t * 3 // 4)
        ys = sorted({*range(0, max(h - t, 0) + 1, step), max(h - t, 0)})
        xs = sorted({*range(0, max(w - t, 0) + 1, step), max(w - t, 0)})
        tiles = [(x, y, frame[y : y + t, x : x + t]) for y in ys for x in xs]
        dets = [(cx + x, cy + y, side) for x, y, tile in tiles for cx, cy, side in self._detections(tile)]
        kept: list[tuple[float, float, float]] = []
        for d in dets:  # one face seen by two tiles: keep the first
            if all(np.hypot(d[0] - k[0], d[1] - k[1]) > 0.25 * max(d[2], k[2]) for k in kept):
                kept.append(d)
        return [m for det in kept[: self.max_num_faces] for m in self._mesh_around(frame, *det)]

    def landmarks(self, frame: np.ndarray, near: tuple[float, float, float] | None = None) -> list[np.ndarray]:
        """All detected meshes as float64 [468, 2] pixel coordinates. ``near`` (small_faces only): (x, y, side) px
        of a square where a face was a frame ago, tried before the tiles (one mesh call instead of ~28 detector
        calls on a 1080p frame)."""
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
        meshes = self._meshes(frame)
        if not meshes and self.detector_fallback:
            meshes = self._meshes_from_detections(frame)
        if not meshes and self.small_faces and near is not None:
            meshes = self._mesh_around(frame, *near)
        if not meshes and self.small_faces:
            meshes = self._meshes_from_tiles(frame)
        return meshes

    def faces(self, frame: np.ndarray, near: tuple[float, float, float] | None = None) -> list[FaceCandidate]:
        """Every plausible face, left to right (``near``: see ``landmarks``). Also sets ``self.too_small`` to the
        (w, h) px of the largest face rejected only for being under ``min_box_size`` (None if none) and
        ``self.turned_away`` to whether a face of a usable size was rejected for its landmark geometry (a profile
        or turned-away head)."""
        out = []
        self.too_small, self.turned_away = None, False
        min_brow = 12.0 if not self.small_faces else 4.0
        for pts in self.landmarks(frame, near):
            (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
            if not box_plausible((x1, y1, x2, y2), self.min_box_size):
                w, h = float(x2 - x1), float(y2 - y1)
                if 0.2 <= w / max(h, 1e-6) <= 1.5 and (self.too_small is None or w * h > np.prod(self.too_small)):
                    self.too_small = (w, h)
                continue
            anchors = anchors_from_landmarks(pts, MEDIAPIPE_ANCHOR_INDICES)
            if anchors_plausible(anchors, frame.shape, min_brow_distance=min_brow):
                out.append(FaceCandidate(anchors, (float(x1), float(y1), float(x2), float(y2))))
            else:
                self.turned_away = True
        return left_to_right(out)

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """Anchors of the largest plausible face, or None (see ``faces`` for ``too_small`` / ``turned_away``)."""
        faces = self.faces(frame)
        return max(faces, key=lambda f: f.area).anchors if faces else None

    def close(self) -> None:
        for graph in (self._mesh, self._detector):
            if graph is not None:
                graph.close()
        self._mesh = self._detector = None


def _fan_weight_files() -> dict[str, str]:
    """face-alignment's 2D-FAN and S3FD weights, as paths in the torch hub cache."""
    import torch

    try:
        from face_alignment.api import models_urls
        from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls
        urls = [models_urls["2DFAN-4"], sfd_urls["s3fd"]]
    except (ImportError, KeyError):
        urls = ["https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
                "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"]
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    return {url: os.path.join(folder, url.rsplit("/", 1)[-1]) for url in urls}


class FaceAlignmentLandmarker:
    """face-alignment (Bulat & Tzimiropoulos) 2D-FAN 68 points with its S3FD detector.

    Built on first use. Its weights must already be in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``); with ``allow_download=True`` face-alignment may fetch them.
    """

    def __init__(self, device: str = "cpu", threshold: float = 0.5, allow_download: bool = False,
                 min_box_size: tuple[float, float] = (50, 80)):
        self.device, self.threshold = device, threshold
        self.allow_download = allow_download
        self.min_box_size = min_box_size
        self._fa = None

    def _get_model(self):
        if self._fa is not None:
            return self._fa
        try:
            import face_alignment
        except ImportError as e:
            raise BackendUnavailableError("FaceAlignmentLandmarker needs `pip install face-alignment`") from e
        missing = {u: p for u, p in _fan_weight_files().items() if not os.path.isfile(p)}
        if missing and not self.allow_download:
            lines = "\n".join(f"  {p}  (from {u})" for u, p in missing.items())
            raise BackendUnavailableError(
                "face-alignment weights are not in the torch hub cache; download them elsewhere and "
                f"place them at:\n{lines}\n(or pass allow_download=True where the internet is reachable)"
            )
        try:
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=self.device, flip_input=False,
                face_detector="sfd", face_detector_kwargs={"filter_threshold": self.threshold}, compile=False,
            )
        except OSError as e:  # URLError is an OSError
            lines = "\n".join(f"  {p}" for p in _fan_weight_files().values())
            raise BackendUnavailableError(
                f"face-alignment could not download its weights ({e}); place them at:\n{lines}"
            ) from e
        return self._fa

    def faces(self, frame: np.ndarray) -> list[FaceCandidate]:
        """Every plausible face (score, box filter, anchor geometry), left to right."""
        fa = self._get_model()
        lmks, _, boxes = fa.get_landmarks_from_image(np.ascontiguousarray(frame), return_bboxes=True)
        out = []
        if lmks is None:
            return out
        for pts, box in zip(lmks, boxes):
            if box[4] < self.threshold or not box_plausible(box[:4], self.min_box_size):
                continue
            anchors = anchors_from_landmarks(pts[:, :2], FAN68_ANCHOR_INDICES)
            if anchors_plausible(anchors, frame.shape):
                out.append(FaceCandidate(anchors, tuple(float(v) for v in box[:4])))
        return left_to_right(out)

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        faces = self.faces(frame)
        return max(faces, key=lambda f: f.area).anchors if faces else None


class InsightFaceLandmarker:
    """InsightFace detection + 2d106 landmarks: LatentSync's own back-end (optional dependency).

    LatentSync feeds the RGB frame to InsightFace unchanged (InsightFace expects BGR);
    ``swap_rb=False`` keeps that behaviour, True converts to BGR first.
    """

    def __init__(self, root: str = "checkpoints/auxiliary", det_size: int = 512, threshold: float = 0.5,
                 providers: Sequence[str] | None = None, ctx_id: int = -1, swap_rb: bool = False,
                 min_box_size: tuple[float, float] = (50, 80)):
        try:
            from insightface.app import FaceAnalysis
        except ImportError as e:
            raise BackendUnavailableError(
                "InsightFaceLandmarker needs insightface and onnxruntime: `pip install turbosync[insightface]`"
            ) from e
        self.app = FaceAnalysis(allowed_modules=["detection", "landmark_2d_106"], root=root,
                                providers=list(providers or ["CPUExecutionProvider"]))
        self.app.prepare(ctx_id=ctx_id, det_size=(det_size, det_size))
        self.threshold, self.swap_rb, self.min_box_size = threshold, swap_rb, min_box_size

    def faces(self, frame: np.ndarray) -> list[FaceCandidate]:
        """Every face passing the official filters with plausible anchors, left to right."""
        img = np.ascontiguousarray(frame[..., ::-1] if self.swap_rb else frame)
        out = []
        for face in self.app.get(img):
            box = face.bbox.astype(np.int64).tolist()
            if face.det_score < self.threshold or not box_plausible(box, self.min_box_size):
                continue
            lmk = np.round(face.landmark_2d_106).astype(np.int64)
            anchors = anchors_from_landmarks(lmk, INSIGHTFACE_ANCHOR_INDICES)
            if anchors_plausible(anchors, frame.shape):
                out.append(FaceCandidate(anchors, tuple(float(v) for v in box)))
        return left_to_right(out)

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """LatentSync's rule: the largest face box, None when its anchors are implausible."""
        img = np.ascontiguousarray(frame[..., ::-1] if self.swap_rb else frame)
        best, best_area = None, 0
        for face in self.app.get(img):
            box = face.bbox.astype(np.int64).tolist()
            if face.det_score < self.threshold or not box_plausible(box, self.min_box_size):
                continue
            area = (box[2] - box[0]) * (box[3] - box[1])
            if area > best_area:
                best, best_area = face, area
        if best is None:
            return None
        lmk = np.round(best.landmark_2d_106).astype(np.int64)
        anchors = anchors_from_landmarks(lmk, INSIGHTFACE_ANCHOR_INDICES)
        return anchors if anchors_plausible(anchors, frame.shape) else None
