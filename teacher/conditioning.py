"""The U-Net's conditioning inputs and the way generated faces go back: one function per step.

LatentSync feeds its U-Net 13 channels (DESIGN section 2): the noisy latent (4), the mask at
latent resolution (1, 1 = keep), the latent of the masked frame (4) and the latent of the
reference frame (4). Everything that builds those inputs from aligned face crops, or turns the
U-Net's x0 back into pixels, lives here, so the teacher pipeline, the data sets, the benchmark
and the streaming engine (which caches the latents of an avatar and calls the rest per chunk)
all run the same code:

    crops_to_pixels    uint8 crops [F, R, R, 3]          -> pixels [3, F, R, R] in [-1, 1]
    face_mask          resolution (+ optional image)    -> pixel mask [R, R] (1 = keep)
    masked_pixels      pixels, pixel mask               -> pixels * mask (the mouth blanked)
    latent_mask        pixel mask [B, 1, F, R, R]       -> [B, 1, F, h, h] (nearest)
    encode_condition   VAE, pixels [B, 3, F, R, R]      -> (masked_latents, ref_latents)
    condition_channels mask, masked, ref latents        -> [B, 9, F, h, w]
    unet_input         x_t, condition channels          -> [B, 13, F, h, w]
    composite          decoded, pixels, pixel mask      -> generated inside the mask, original outside
    pixels_to_uint8    [-1, 1] pixels                   -> uint8
    paste_faces        frames, uint8 faces, alignments  -> full frames with the faces pasted back (OpenCV, CPU)
    paste_faces_torch  the same as one batched torch warp, on the model's device (GPU)

At inference the reference frames are the frames being edited (unmasked); in training they
come from another window of the same clip. VAE encoding samples the latent distribution (not
its mode), masked frames first, then reference frames, as the official pipeline does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def crops_to_pixels(crops: np.ndarray) -> torch.Tensor:
    """uint8 aligned crops ``[F, R, R, 3]`` -> float32 ``[3, F, R, R]`` in [-1, 1] (x / 127.5 - 1)."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2)


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (any shape) -> uint8 ``round((clamp(x) + 1) * 127.5)``, same shape."""
    return pixels.clamp(-1, 1).add(1).mul(127.5).round().byte()


def face_mask(resolution: int, image_path: str | None = None) -> torch.Tensor:
    """The fixed LatentSync mask ``[R, R]`` float32, 1 = keep, 0 = the lower face to generate.

    ``image_path``: the official ``mask.png`` (or any mask image), resized to R; default: the
    built-in ``teacher.face.lower_face_mask``.
    """
    from teacher.face import load_mask_image, lower_face_mask

    mask = load_mask_image(image_path, resolution) if image_path else lower_face_mask(resolution)
    return torch.as_tensor(np.asarray(mask, dtype=np.float32))


def masked_pixels(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked frames the U-Net sees: ``pixels * mask`` (pixels [..., R, R], mask broadcastable)."""
    return pixels * mask


def latent_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel mask ``[B, 1, F, R, R]`` -> latent mask ``[B, 1, F, h, h]``, h = ``size`` (nearest, as the
    official pipeline's ``F.interpolate(mask, size=latent_size)``)."""
    b, _, f, r, _ = mask.shape
    m = F.interpolate(mask.permute(0, 2, 1, 3, 4).reshape(b * f, 1, r, r), size=(size, size))
    return m.reshape(b, f, 1, size, size).permute(0, 2, 1, 3, 4)


def encode_condition(
    vae, pixels: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked_latents, ref_latents) ``[B, 4, F, h, w]`` of pixels ``[B, 3, F, R, R]`` in [-1, 1].

    The reference is the frames themselves (LatentSync inference). Both are samples of the VAE
    posterior drawn from ``generator``: the masked frames first, then the reference.
    """
    masked = vae.encode(masked_pixels(pixels, mask), generator=generator)
    ref = vae.encode(pixels, generator=generator)
    return masked, ref


def condition_channels(
    mask_latent: torch.Tensor, masked_latents: torch.Tensor, ref_latents: torch.Tensor, dtype=None
) -> torch.Tensor:
    """cat([mask, masked, ref], dim=1): ``[B, 1 + 4 + 4, F, h, w]``, the U-Net's channels after x_t."""
    cond = torch.cat([mask_latent, masked_latents, ref_latents], dim=1)
    return cond if dtype is None else cond.to(dtype)


def check_condition_shapes(noise, mask, masked_latents, ref_latents, audio_embeds) -> None:
    """ValueError unless noise [B, 4, F, h, w], mask [B, 1, F, h, w], masked/ref latents [B, C, F, h, w] and
    audio [B, F, S, D] agree (the samplers' input check)."""
    if noise.ndim != 5:
        raise ValueError(f"noise must be [B, C, F, h, w], got {tuple(noise.shape)}")
    b, _, f, h, w = noise.shape
    for name, x in (("mask", mask), ("masked_latents", masked_latents), ("ref_latents", ref_latents)):
        want = (b, 1 if name == "mask" else x.shape[1], f, h, w)
        if x.ndim != 5 or tuple(x.shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if audio_embeds.ndim != 4 or tuple(audio_embeds.shape[:2]) != (b, f):
        raise ValueError(f"audio_embeds must be [{b}, {f}, S, D], got {tuple(audio_embeds.shape)}")


def unet_input(x_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The U-Net's sample: cat([x_t [B, 4, F, h, w], cond [B, 9, F, h, w]], dim=1) -> ``[B, 13, F, h, w]``."""
    return torch.cat([x_t, cond], dim=1)


def composite(decoded: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Generated pixels inside the mask, the original outside: ``clamp(decoded) * (1 - m) + pixels * m``.

    decoded, pixels: ``[B, 3, F, R, R]`` in [-1, 1]; mask broadcastable, 1 = keep the original.
    """
    return decoded.clamp(-1, 1) * (1 - mask) + pixels * mask


def paste_faces(frames: Sequence[np.ndarray], faces: np.ndarray, aligned: Sequence, aligner) -> list[np.ndarray]:
    """Full frames with uint8 faces ``[F, R, R, 3]`` pasted back (same order as ``frames`` and
    ``aligned``) through ``aligner.restore``: the inverse warp with the feathered mask."""
    return [aligner.restore(frame, face, a) for frame, face, a in zip(frames, faces, aligned)]


def crop_feather(resolution: int, device=None) -> torch.Tensor:
    """Paste weight in crop space ``[R, R]``: 1 inside, falling to 0 over ~R/20 px at the crop's border
    (LatentSync's eroded, Gaussian-feathered paste mask, drawn in crop space instead of frame space)."""
    w_edge = max(1, resolution // 20)
    x = torch.arange(resolution, device=device, dtype=torch.float32) + 0.5
    d = torch.minimum(x, resolution - x)  # distance to the nearer border, px
    ramp = ((d - 2) / (2 * w_edge)).clamp(0, 1)  # 2 px eroded, then a 2 w_edge px ramp
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return ramp[:, None] * ramp[None, :]


def paste_faces_torch(frames: torch.Tensor, faces: torch.Tensor, matrices: torch.Tensor,
                      feather: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Paste faces into frames with one batched inverse warp (``F.grid_sample``), on their device.

    frames: [B, 3, H, W] float (any range); faces: [B, 3, R, R] in the same range; matrices: [B, 2, 3]
    frame -> crop pixel affine (``AlignedFace.matrix``); feather: [R, R] paste weight (default
    ``crop_feather(R)``). Each frame pixel p takes a = feather(M p) and out = a * face(M p) + (1 - a) * frame.
    Returns [B, 3, H, W].
    """
    b, _, h, w = frames.shape
    r = faces.shape[-1]
    feather = crop_feather(r, frames.device) if feather is None else feather.to(frames.device)
    ys, xs = torch.meshgrid(torch.arange(h, device=frames.device, dtype=torch.float32),
                            torch.arange(w, device=frames.device, dtype=torch.float32), indexing="ij")  # fmt: skip
    p = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, h * w, 3)
    q = p @ matrices.to(frames.device, torch.float32).transpose(1, 2)  # [B, H*W, 2] crop pixel coordinates
    grid = ((q + 0.5) / r * 2 - 1).reshape(b, h, w, 2)  # align_corners=False convention
    src = torch.cat([faces.float(), feather.expand(b, 1, r, r)], dim=1)
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    a = warped[:, 3:4]
    return (a * warped[:, :3] + (1 - a) * frames.float()).to(frames.dtype)
