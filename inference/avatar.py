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


def _source_hash(source, frames: np.ndarray) -> str:
    if isinstance(source, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
    return file_sha256(source)


def vae_fingerprint(vae) -> dict[str, Any]:
    """What the latents depend on besides the pixels: the VAE's config hash and scaling."""
    config = {k: v for k, v in dict(vae.vae.config).items() if not k.startswith("_")}  # not _name_or_path: a copied
    config = json.dumps(config, sort_keys=True, default=str)  # or moved export stays the same student
    return {"config_sha256": hashlib.sha256(config.encode()).hexdigest(), "scaling_factor": float(vae.scaling_factor),
            "shift_factor": float(vae.shift_factor)}  # fmt: skip


def _mask_hash(mask: torch.Tensor) -> str:
    return hashlib.sha256(mask.detach().cpu().float().numpy().tobytes()).hexdigest()


def read_source(source: str | os.PathLike | np.ndarray) -> np.ndarray:
    """uint8 frames [T, H, W, 3] at 25 fps from a video, [1, H, W, 3] from an image, or the array itself."""
    from teacher.media import MediaError, read_video

    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3 or len(source) == 0:
            raise AvatarError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {source.dtype} {source.shape}")
        return source
    path = Path(source)
    if not path.is_file():
        raise AvatarError(f"{path}: file not found")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise AvatarError(f"{path}: not a readable image")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[None]
    try:
        frames, _ = read_video(path, fps=25)
    except MediaError as err:
        raise AvatarError(str(err)) from None
    return frames


@torch.no_grad()
def prepare_avatar(
    source: str | os.PathLike | np.ndarray, out_dir: str | os.PathLike, bundle, seed: int = 0, progress: bool = True,
    chunk: int = 16,
) -> Avatar:  # fmt: skip
    """Align, crop and encode ``source`` once for the student ``bundle`` (``student.load_bundle``); writes
    ``out_dir`` (see the module docstring) and returns the loaded avatar. AvatarError for unusable input."""
    from tqdm import tqdm

    from teacher.conditioning import crops_to_pixels, encode_condition
    from teacher.face import FaceAligner, align_video

    frames = read_source(source)
    res, vae = bundle.resolution, bundle.vae
    aligner = FaceAligner(resolution=res)
    aligned = align_video(tqdm(frames, desc="align", unit="frame", disable=not progress), aligner)
    has_face = np.array([a is not None for a in aligned])
    if not has_face.any():
        from teacher.face import too_small_message

        why = too_small_message(aligner) if aligner.too_small else "no face found"
        raise AvatarError(f"{_name(source)}: {why} in any of its {len(frames)} frames")
    crops = np.zeros((len(frames), res, res, 3), np.uint8)
    matrices = np.full((len(frames), 2, 3), np.nan)
    for i, a in enumerate(aligned):
        if a is not None:
            crops[i], matrices[i] = a.crop, a.matrix
    h = res // vae.scale_factor
    masked = np.zeros((len(frames), 4, h, h), np.float32)
    ref = np.zeros_like(masked)
    g = torch.Generator().manual_seed(seed)
    mask = bundle.mask.to(vae.device)
    for s in tqdm(range(0, len(frames), chunk), desc="encode", unit="chunk", disable=not progress):
        pixels = crops_to_pixels(crops[s : s + chunk])[None].to(vae.device, vae.dtype)  # [1, 3, F, R, R]
        m, r = encode_condition(vae, pixels, mask, generator=g)
        masked[s : s + chunk] = m[0].permute(1, 0, 2, 3).float().cpu().numpy()
        ref[s : s + chunk] = r[0].permute(1, 0, 2, 3).float().cpu().numpy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("frames", frames), ("crops", crops), ("matrices", matrices), ("has_face", has_face),
                      ("masked_latents", masked), ("ref_latents", ref)):  # fmt: skip
        np.save(out / f".{name}.tmp.npy", arr)
        os.replace(out / f".{name}.tmp.npy", out / f"{name}.npy")
    manifest = {
        "format": FORMAT,
        "source": "<array>" if isinstance(source, np.ndarray) else str(source),
        "source_sha256": _source_hash(source, frames),
        "num_frames": int(len(frames)),
        "frame_size": [int(frames.shape[1]), int(frames.shape[2])],
        "faces": int(has_face.sum()),
        "fps": 25,
        "resolution": int(res),
        "latent_size": int(h),
        "mask_sha256": _mask_hash(bundle.mask),
        "vae": vae_fingerprint(vae),
        "aligner": {"resolution": res, "smooth": aligner.smooth, "round_anchors": aligner.round_anchors,
                    "exact_resampling": aligner.exact_resampling, "landmarker": type(aligner.landmarker).__name__},
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
