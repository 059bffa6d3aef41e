"""A prepared avatar: what the engine needs of a face video, computed once and loaded in milliseconds.

    turbosync avatar prepare VIDEO_OR_IMAGE OUT_DIR --student EXPORT

writes (all ``np.load``-able, memory-mapped on load, so loading costs no decode and no VAE pass):

    OUT/frames.npy          uint8 [T, H, W, 3]  source frames at 25 fps (an image gives T = 1)
    OUT/crops.npy           uint8 [T, R, R, 3]  aligned faces (zeros where no face)
    OUT/matrices.npy        float64 [T, 2, 3]   frame -> crop affine (NaN where no face)
    OUT/has_face.npy        bool [T]            False: the frame passes through unedited
    OUT/masked_latents.npy  float32 [T, 4, h, h] VAE latents of the masked crops (samples of the posterior)
    OUT/ref_latents.npy     float32 [T, 4, h, h] VAE latents of the crops (the reference = the frame itself)
    OUT/manifest.json       source sha256, T, resolution, mask hash, VAE config hash and scaling, aligner
                            settings, seed, format

Latents are drawn as the teacher pipeline draws them (``teacher.conditioning.encode_condition``, 16-frame
chunks, one generator seeded by ``seed``). When the audio outlasts the video the engine plays the frames
forward then backward (``pingpong``), as LatentSync loops a video.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "turbosync.avatar/1"
ARRAYS = ("frames", "crops", "matrices", "has_face", "masked_latents", "ref_latents")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class AvatarError(ValueError):
    """An avatar that cannot be prepared or used; the message names the folder or file and the reason."""


@dataclass
class Avatar:
    """A prepared avatar (arrays memory-mapped from ``path``); see the module docstring for shapes."""

    path: Path
    frames: np.ndarray
    crops: np.ndarray
    matrices: np.ndarray
    has_face: np.ndarray
    masked_latents: np.ndarray
    ref_latents: np.ndarray
    manifest: dict[str, Any]

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    def aligned(self, i: int):
        """``teacher.face.AlignedFace`` of source frame i (for paste-back), or None without a face."""
        from teacher.face import AlignedFace

        if not self.has_face[i]:
            return None
        return AlignedFace(crop=self.crops[i], matrix=np.asarray(self.matrices[i]), landmarks=np.zeros((3, 2)))


def pingpong(k: np.ndarray | int, num_frames: int) -> np.ndarray:
    """Source frame of output frame k when a T-frame video loops forward then backward
    (0, 1, ..., T-1, T-1, ..., 0, 0, 1, ...), LatentSync's looping; T = 1 gives 0."""
    k = np.asarray(k, dtype=np.int64)
    if num_frames <= 1:
        return np.zeros_like(k)
    r = k % (2 * num_frames)
    return np.where(r < num_frames, r, 2 * num_frames - 1 - r)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _name(source) -> str:
    return "the frames" if isinstance(source, np.ndarray) else str(source)


def vae_fingerprint(vae) -> dict[str, Any]:
    """What the latents depend on besides the pixels: the VAE's config hash and scaling."""
    config = {k: v for k, v in dict(vae.vae.config).items() if not k.startswith("_")}  # not _name_or_path: a copied
    config = json.dumps(config, sort_keys=True, default=str)  # or moved export stays the same student
    return {"config_sha256": hashlib.sha256(config.encode()).hexdigest(), "scaling_factor": float(vae.scaling_factor),
            "shift_factor": float(vae.shift_factor)}  # fmt: skip


def _mask_hash(mask: torch.Tensor) -> str:
    return hashlib.sha256(mask.detach().cpu().float().numpy().tobytes()).hexdigest()


def iter_source(source: str | os.PathLike | np.ndarray) -> Iterator[np.ndarray]:
    """uint8 frames [H, W, 3] at 25 fps, streamed: a video decoded frame by frame (``teacher.media``), an image
    once, or the rows of a uint8 [T, H, W, 3] array. AvatarError for a missing or unreadable file (raised by
    the iteration for a video that fails part-way)."""
    from teacher.media import MediaError, iter_video_frames

    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3 or len(source) == 0:
            raise AvatarError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {source.dtype} {source.shape}")
        yield from source
        return
    path = Path(source)
    if path.is_dir():
        raise AvatarError(f"{path}: is a folder, not a video or image (an avatar folder goes to --avatar)")
    if not path.is_file():
        raise AvatarError(f"{path}: file not found")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise AvatarError(f"{path}: not a readable image")
        yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return
    try:
        yield from iter_video_frames(path, fps=25)
    except MediaError as err:
        raise AvatarError(str(err)) from None


def read_source(source: str | os.PathLike | np.ndarray) -> np.ndarray:
    """All of ``iter_source`` as one uint8 array [T, H, W, 3] (a short clip; ``prepare_avatar`` streams)."""
    return np.stack(list(iter_source(source)))


def _expected_frames(source) -> int | None:
    """How many frames ``iter_source`` will give, for the progress bar (None when unknown)."""
    if isinstance(source, np.ndarray):
        return len(source)
    if Path(source).suffix.lower() in IMAGE_EXTENSIONS:
        return 1
    from teacher.media import MediaError, video_end

    try:
        return int(np.ceil(video_end(source) * 25 - 1e-6))
    except MediaError:
        return None


class NpyStream:
    """One ``.npy`` file written row by row as the rows come, without knowing their count in advance.

    The NPY 1.0 header (numpy's ``format`` documentation: magic, version, little-endian uint16 length, a
    dict literal padded with spaces and ended by a newline, 64-byte aligned) is given a fixed 128 bytes and
    written last, with the final shape ``[n, *row_shape]``; the data goes to ``.NAME.tmp.npy`` and is renamed
    to ``path`` by ``close``, so a reader never sees a half-written file. ``discard`` removes it.
    """

    HEADER = 128

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), tuple(int(d) for d in row_shape)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp.npy")
        self._file = open(self.tmp, "wb")
        self._file.write(b"\0" * self.HEADER)
        self.count = 0

    def append(self, rows: np.ndarray) -> None:
        """Append ``rows`` ``[k, *row_shape]``; ValueError for another row shape (a video whose size changes)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: row {self.count} is {rows.shape[1:]}, the first was {self.row_shape}")
        self._file.write(rows.tobytes())
        self.count += len(rows)

    def close(self) -> None:
        shape = (self.count, *self.row_shape)
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})
        body = text.encode("latin1")
        pad = self.HEADER - 10 - len(body) - 1
        if pad < 0:
            raise ValueError(f"{self.path.name}: the shape {shape} does not fit a {self.HEADER}-byte NPY header")
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n")
        self._file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


@torch.no_grad()
def prepare_avatar(
    source: str | os.PathLike | np.ndarray, out_dir: str | os.PathLike, bundle, seed: int = 0, progress: bool = True,
    chunk: int = 16, face: dict[str, Any] | None = None,
) -> Avatar:  # fmt: skip
    """Align, crop and encode ``source`` once for the student ``bundle`` (``student.load_bundle``); writes
    ``out_dir`` (see the module docstring) and returns the loaded avatar. AvatarError for unusable input.

    Streamed: frames are decoded, aligned, written and encoded ``chunk`` at a time, so memory does not grow
    with the clip (the arrays go to disk). ``face``: ``teacher.face.build_aligner`` options (``small_faces``,
    ``choose``, ``scene_cut``; default LatentSync's: the largest face of at least 50 x 80 px)."""
    from tqdm import tqdm

    from teacher.conditioning import crops_to_pixels, encode_condition
    from teacher.face import build_aligner, iter_aligned, too_small_message

    res, vae = bundle.resolution, bundle.vae
    face = {"small_faces": False, "choose": "largest", "scene_cut": True, **(face or {})}
    try:
        aligner = build_aligner(res, **face)
    except (TypeError, ValueError) as err:
        raise AvatarError(f"face options {face}: {err}") from None
    h = res // vae.scale_factor
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    streams: dict[str, NpyStream] = {}
    g = torch.Generator().manual_seed(seed)
    mask = bundle.mask.to(vae.device)
    hasher = hashlib.sha256()
    pending: list[np.ndarray] = []
    current: list[np.ndarray] = []
    faces = 0

    def frames():
        for frame in iter_source(source):
            current[:] = [frame]
            yield frame

    def encode() -> None:
        pixels = crops_to_pixels(np.stack(pending))[None].to(vae.device, vae.dtype)  # [1, 3, F, R, R]
        m, r = encode_condition(vae, pixels, mask, generator=g)
        streams["masked_latents"].append(m[0].permute(1, 0, 2, 3).float().cpu().numpy())
        streams["ref_latents"].append(r[0].permute(1, 0, 2, 3).float().cpu().numpy())
        pending.clear()

    try:
        bar = None  # shown from the first frame on: an unreadable source fails with its one-line error alone
        for aligned in iter_aligned(frames(), aligner):
            frame = current[0]
            if not streams:
                bar = tqdm(total=_expected_frames(source), desc="prepare avatar", unit="frame", disable=not progress)
                lat = ((4, h, h), np.float32)
                shapes = {"frames": (frame.shape, np.uint8), "crops": ((res, res, 3), np.uint8),
                          "matrices": ((2, 3), np.float64), "has_face": ((), np.bool_),
                          "masked_latents": lat, "ref_latents": lat}  # fmt: skip
                streams.update({n: NpyStream(out / f"{n}.npy", dt, shape) for n, (shape, dt) in shapes.items()})
            if isinstance(source, np.ndarray):
                hasher.update(np.ascontiguousarray(frame).tobytes())
            try:
                streams["frames"].append(frame[None])
            except ValueError as err:
                raise AvatarError(f"{_name(source)}: {err}") from None
            crop = aligned.crop if aligned is not None else np.zeros((res, res, 3), np.uint8)
            streams["crops"].append(crop[None])
            streams["matrices"].append((aligned.matrix if aligned is not None else np.full((2, 3), np.nan))[None])
            streams["has_face"].append(np.array([aligned is not None]))
            faces += aligned is not None
            pending.append(crop)
            if len(pending) == chunk:
                encode()
            bar.update()
        if bar is not None:
            bar.close()
        if not streams:
            raise AvatarError(f"{_name(source)}: no frames")
        if pending:
            encode()
        if faces == 0:
            why = (too_small_message(aligner) if aligner.too_small else "no face found" if face["choose"] == "largest"
                   else f"no face matching face choice {face['choose']!r} (--face) found")
            raise AvatarError(f"{_name(source)}: {why} in any of its {streams['frames'].count} frames")
        for st in streams.values():
            st.close()
    except BaseException:
        for st in streams.values():
            st.discard()
        raise
    n, frame_hw = streams["frames"].count, streams["frames"].row_shape[:2]
    manifest = {
        "format": FORMAT,
        "source": "<array>" if isinstance(source, np.ndarray) else str(source),
        "source_sha256": hasher.hexdigest() if isinstance(source, np.ndarray) else file_sha256(source),
        "num_frames": int(n),
        "frame_size": [int(frame_hw[0]), int(frame_hw[1])],
        "faces": int(faces),
        "fps": 25,
        "resolution": int(res),
        "latent_size": int(h),
        "mask_sha256": _mask_hash(bundle.mask),
        "vae": vae_fingerprint(vae),
        "aligner": {"resolution": res, "smooth": aligner.smooth, "round_anchors": aligner.round_anchors,
                    "exact_resampling": aligner.exact_resampling, "landmarker": type(aligner.landmarker).__name__,
                    "face": {k: list(v) if isinstance(v, tuple) else v for k, v in face.items()}},
        "seed": int(seed),
        "student": str(bundle.path),
    }  # fmt: skip
    (out / ".manifest.tmp.json").write_text(json.dumps(manifest, indent=1))
    os.replace(out / ".manifest.tmp.json", out / "manifest.json")  # last: marks a complete avatar
    return load_avatar(out, bundle)


def load_avatar(path: str | os.PathLike, bundle=None) -> Avatar:
    """The avatar prepared in ``path`` (memory-mapped). With ``bundle`` (``student.load_bundle``), checks
    it was prepared for that student's resolution, mask and VAE. AvatarError when it is not usable."""
    folder = Path(path)
    if not (folder / "manifest.json").is_file():
        raise AvatarError(f"{folder} is not a prepared avatar (no manifest.json; run `turbosync avatar prepare`)")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except json.JSONDecodeError as err:
        raise AvatarError(f"{folder}/manifest.json is not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise AvatarError(f"{folder}: unknown avatar format {manifest.get('format')!r} (expected {FORMAT})")
    missing = [f"{n}.npy" for n in ARRAYS if not (folder / f"{n}.npy").is_file()]
    if missing:
        raise AvatarError(f"{folder} is missing {', '.join(missing)}: prepare the avatar again")
    try:
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ARRAYS}
    except ValueError as err:
        raise AvatarError(f"{folder}: a file is corrupt ({err}); prepare the avatar again") from None
    t = int(manifest["num_frames"])
    if any(len(a) != t for a in arrays.values()):
        raise AvatarError(f"{folder}: its arrays do not all have {t} frames; prepare the avatar again")
    if bundle is not None:
        _check_compatible(folder, manifest, bundle)
    return Avatar(folder, manifest=manifest, **arrays)


def _check_compatible(folder: Path, manifest: dict, bundle) -> None:
    if int(manifest["resolution"]) != bundle.resolution:
        raise AvatarError(f"{folder} was prepared at {manifest['resolution']} px, the student works at "
                          f"{bundle.resolution} px: prepare it again with this student")  # fmt: skip
    if manifest["mask_sha256"] != _mask_hash(bundle.mask):
        raise AvatarError(f"{folder} was prepared with another mask than the student's: prepare it again")
    if manifest["vae"]["config_sha256"] != vae_fingerprint(bundle.vae)["config_sha256"]:
        raise AvatarError(f"{folder} was prepared with another VAE than the student's: prepare it again")
