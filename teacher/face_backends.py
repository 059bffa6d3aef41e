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
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "FAN68_ANCHOR_INDICES",
    "INSIGHTFACE_ANCHOR_INDICES",
    "MEDIAPIPE_ANCHOR_INDICES",
    "BackendUnavailableError",
    "FaceAlignmentLandmarker",
    "FaceLandmarker",
    "InsightFaceLandmarker",
    "MediaPipeLandmarker",
    "anchors_from_landmarks",
    "anchors_plausible",
    "box_plausible",
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


class MediaPipeLandmarker:
    """MediaPipe face mesh (468 points), CPU, offline; the default back-end.

    The mesh's own detector is short-range (faces must fill a good part of the frame); when it
    finds nothing, MediaPipe's full-range face detector proposes boxes (score >=
    ``min_detection_confidence``) and the mesh runs again on a square crop twice the box size.
    ``static_image_mode=True`` makes every call independent (no tracking state). The largest
    plausible face wins; as in LatentSync, boxes under 50 x 80 px are rejected. About 4 ms a
    512 px frame with a large face, about 15 ms a 1080p frame that needs the fallback.
    """

    def __init__(self, min_detection_confidence: float = 0.5, max_num_faces: int = 4,
                 min_box_size: tuple[float, float] = (50, 80), detector_fallback: bool = True,
                 static_image_mode: bool = True):
        self.min_detection_confidence = min_detection_confidence
        self.max_num_faces = max_num_faces
        self.min_box_size = min_box_size
        self.detector_fallback = detector_fallback
        self.static_image_mode = static_image_mode
        self._mesh = self._detector = None
        self.too_small: tuple[float, float] | None = None

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

    def _meshes_from_detections(self, frame: np.ndarray) -> list[np.ndarray]:
        first = self._detector is None
        with quiet_native_stderr():
            if first:
                self._detector = self._solutions()[0].FaceDetection(
                    model_selection=1, min_detection_confidence=self.min_detection_confidence)
            result = self._detector.process(frame)
        h, w = frame.shape[:2]
        dets = sorted(result.detections or [], key=lambda d: -d.score[0])
        out = []
        for det in dets[: self.max_num_faces]:
            box = det.location_data.relative_bounding_box
            side = int(round(2 * max(box.width * w, box.height * h)))
            x0 = int(round((box.xmin + box.width / 2) * w - side / 2))
            y0 = int(round((box.ymin + box.height / 2) * h - side / 2))
            if side < 16:
                continue
            crop = np.zeros((side, side, 3), np.uint8)  # zero-padded where the square leaves the frame
            sx, sy = max(x0, 0), max(y0, 0)
            ex, ey = min(x0 + side, w), min(y0 + side, h)
            if ex <= sx or ey <= sy:
                continue
            crop[sy - y0: ey - y0, sx - x0: ex - x0] = frame[sy:ey, sx:ex]
            out += [pts + (x0, y0) for pts in self._meshes(crop)]
        return out

    def landmarks(self, frame: np.ndarray) -> list[np.ndarray]:
        """All detected meshes as float64 [468, 2] pixel coordinates."""
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
        meshes = self._meshes(frame)
        if not meshes and self.detector_fallback:
            meshes = self._meshes_from_detections(frame)
        return meshes

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """Anchors of the largest plausible face, or None. ``self.too_small`` is then the (w, h) in px of the
        largest face found but rejected only for being under ``min_box_size`` (None if there was none)."""
        best, best_area = None, 0.0
        self.too_small = None
        for pts in self.landmarks(frame):
            (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
            if not box_plausible((x1, y1, x2, y2), self.min_box_size):
                w, h = float(x2 - x1), float(y2 - y1)
                if 0.2 <= w / max(h, 1e-6) <= 1.5 and (self.too_small is None or w * h > np.prod(self.too_small)):
                    self.too_small = (w, h)
                continue
            anchors = anchors_from_landmarks(pts, MEDIAPIPE_ANCHOR_INDICES)
            area = (x2 - x1) * (y2 - y1)
            if area > best_area and anchors_plausible(anchors, frame.shape):
                best, best_area = anchors, area
        return best

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

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        fa = self._get_model()
        lmks, _, boxes = fa.get_landmarks_from_image(np.ascontiguousarray(frame), return_bboxes=True)
        if lmks is None:
            return None
        best, best_area = None, 0.0
        for pts, box in zip(lmks, boxes):
            if box[4] < self.threshold or not box_plausible(box[:4], self.min_box_size):
                continue
            anchors = anchors_from_landmarks(pts[:, :2], FAN68_ANCHOR_INDICES)
            area = (box[2] - box[0]) * (box[3] - box[1])
            if area > best_area and anchors_plausible(anchors, frame.shape):
                best, best_area = anchors, area
        return best


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

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
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
