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
    paste_weight       pixel mask [R, R]                -> paste weight [R, R]: the regenerated region, feathered inward
    paste_faces        frames, uint8 faces, alignments  -> full frames with the faces pasted back (OpenCV, CPU)
    paste_faces_torch  the same as one batched torch warp, on the model's device (GPU)
    paste_alpha        paste weight, matrix             -> the weight in frame space [H, W]
    boundary_visibility frames, pasted regions          -> the step in pixel values across the paste boundary

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


def composite(decoded: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor, matched: bool = False) -> torch.Tensor:
    """Generated pixels inside the mask, the original outside: ``x * (1 - m) + pixels * m``, x = clamp(decoded).

    decoded, pixels: ``[B, 3, F, R, R]`` in [-1, 1]; mask broadcastable (``[..., R, R]``), 1 = keep the original.
    ``matched`` (what the teacher pipeline and the engine paste): near the mask's edge the generated face takes the
    original's low frequencies, so its
    colour meets the surroundings (two-band blending, Burt & Adelson 1983): x = clamp(decoded) + (1 - b) *
    G_s(pixels - clamp(decoded)), G_s a Gaussian blur with s = R / 40 px, b the 0 -> 1 smoothstep over 2 R / 20 px
    inside the edge (``paste_weight(mask, R / 10)``): the first R / 10 px get the original's colour under the
    generated detail, deeper in (the mouth) x is the decoded face as it is. False (default): LatentSync's hard
    composite, what measures of the generator itself (``distill.benchmark``) take: the matched band pulls the
    region's low frequencies toward the original (the toy teacher's MSE to the truth over the region: -31%).
    """
    x = decoded.clamp(-1, 1)
    if matched:
        r = x.shape[-1]
        x = x + (1 - _band_weight(mask, r / 10).to(x.device, x.dtype)) * _gaussian_blur(pixels.to(x.dtype) - x, r / 40)
    return x * (1 - mask) + pixels * mask


def _band_weight(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """``paste_weight`` of every [R, R] image of ``mask`` (any leading shape; one computation when they are all
    the same, as for LatentSync's fixed mask), shaped like ``mask``."""
    images = mask.reshape(-1, *mask.shape[-2:])
    if bool((images == images[:1]).all()):
        return paste_weight(images[0], feather).to(mask.device).expand(mask.shape)
    return torch.stack([paste_weight(m, feather) for m in images]).to(mask.device).reshape(mask.shape)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the last two dims of x (any leading shape), reflected at the borders."""
    k = int(np.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-k, k + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    taps = taps / taps.sum()
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:])
    y = F.conv2d(F.pad(y, (k, k, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, k, k), mode="reflect"), taps.view(1, 1, -1, 1))
    return y.reshape(shape)


def paste_weight(mask, feather: float | None = None) -> torch.Tensor:
    """The paste-back weight ``[R, R]`` float32 in crop space: 1 where the generated face is kept, 0 outside
    the region the U-Net regenerated.

    mask: the U-Net's pixel mask ``[R, R]`` (numpy or torch, 1 = keep the original; the region it
    regenerates is ``mask < 0.5``). The weight is 0 on and outside that region's edge and rises to 1 over
    ``feather`` crop px inside it (default ``R / 20``, LatentSync's ``w_edge = sqrt(area) // 20`` scale), as a
    smoothstep of the Euclidean distance to the edge (``cv2.distanceTransform``). So the paste changes only
    pixels the U-Net regenerated, and the generated face fades in over a band inside the mask instead of a
    hard edge. LatentSync pastes the whole 3:4 crop (``AlignRestore.restore_img``: eroded, blurred crop
    rectangle) over a crop whose outside-the-mask part is the original resampled twice: the eyes, brows and
    face outline come back slightly blurred and shifted, and the crop's rectangle and the mask's hard edge
    (the cheek strips at nose level, the jaw ellipse) both show.
    """
    import cv2

    m = mask.detach().float().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask, np.float32)
    r = m.shape[-1]
    feather = r / 20 if feather is None else float(feather)
    gen = np.pad((m.reshape(m.shape[-2:]) < 0.5).astype(np.uint8), 1)  # outside the crop counts as not generated
    dist = cv2.distanceTransform(gen, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]  # px to the edge; 0 outside
    t = np.clip((dist - 0.5) / max(feather, 1e-6), 0, 1)  # the first pixel inside the edge sits at dist 1
    return torch.from_numpy((t * t * (3 - 2 * t)).astype(np.float32))


def paste_faces(frames: Sequence[np.ndarray], faces: np.ndarray, aligned: Sequence, aligner,
                mask=None) -> list[np.ndarray]:  # fmt: skip
    """Full frames with uint8 faces ``[F, R, R, 3]`` pasted back (same order as ``frames`` and ``aligned``):
    ``aligner.restore`` with ``paste_weight(mask)``, so only the region the U-Net regenerated changes.

    mask: the U-Net's pixel mask (1 = keep; any shape ending in ``[R, R]``), default the built-in
    ``teacher.face.lower_face_mask(R)``; pass the one the U-Net saw when it is another (a mask image).
    """
    weight = _weight_for(mask, faces.shape[1]).numpy()
    return [aligner.restore(frame, face, a, weight=weight) for frame, face, a in zip(frames, faces, aligned)]


def _weight_for(mask, resolution: int) -> torch.Tensor:
    from teacher.face import lower_face_mask

    m = lower_face_mask(resolution) if mask is None else mask
    return paste_weight(m.reshape(m.shape[-2:]) if isinstance(m, torch.Tensor) else np.asarray(m).reshape(m.shape[-2:]))


def crop_feather(resolution: int, device=None) -> torch.Tensor:
    """Weight of LatentSync's whole-crop paste in crop space ``[R, R]``: 1 inside, falling to 0 over ~R/20 px at
    the crop's border (its eroded, Gaussian-feathered paste mask, drawn in crop space instead of frame space).
    The official paste (``FaceAligner.restore`` without a weight); ``paste_weight`` is the one the pipelines use."""
    w_edge = max(1, resolution // 20)
    x = torch.arange(resolution, device=device, dtype=torch.float32) + 0.5
    d = torch.minimum(x, resolution - x)  # distance to the nearer border, px
    ramp = ((d - 2) / (2 * w_edge)).clamp(0, 1)  # 2 px eroded, then a 2 w_edge px ramp
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return ramp[:, None] * ramp[None, :]


def paste_faces_torch(frames: torch.Tensor, faces: torch.Tensor, matrices: torch.Tensor,
                      feather: torch.Tensor | None = None, mask=None) -> torch.Tensor:  # fmt: skip
    """Paste faces into frames with one batched inverse warp (``F.grid_sample``), on their device.

    frames: [B, 3, H, W] float (any range); faces: [B, 3, R, R] in the same range; matrices: [B, 2, 3]
    frame -> crop pixel affine (``AlignedFace.matrix``); feather: [R, R] paste weight in crop space (default
    ``paste_weight(mask)``, mask default ``lower_face_mask(R)``: the same weight as ``paste_faces``). Each frame
    pixel p takes a = feather(M p) and out = a * face(M p) + (1 - a) * frame. Returns [B, 3, H, W].
    """
    b, _, h, w = frames.shape
    r = faces.shape[-1]
    feather = _weight_for(mask, r) if feather is None else feather
    feather = feather.to(frames.device, torch.float32)
    ys, xs = torch.meshgrid(torch.arange(h, device=frames.device, dtype=torch.float32),
                            torch.arange(w, device=frames.device, dtype=torch.float32), indexing="ij")  # fmt: skip
    p = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, h * w, 3)
    q = p @ matrices.to(frames.device, torch.float32).transpose(1, 2)  # [B, H*W, 2] crop pixel coordinates
    grid = ((q + 0.5) / r * 2 - 1).reshape(b, h, w, 2)  # align_corners=False convention
    src = torch.cat([faces.float(), feather.expand(b, 1, r, r)], dim=1)
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    a = warped[:, 3:4]
    return (a * warped[:, :3] + (1 - a) * frames.float()).to(frames.dtype)


def paste_alpha(weight, matrix: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """The paste weight in frame space: float32 ``[H, W]``, ``weight`` ``[R, R]`` (crop space) warped by the
    frame -> crop ``matrix`` [2, 3] (bilinear, 0 outside the crop), as ``FaceAligner.restore`` blends."""
    import cv2

    w = (weight.numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)).astype(np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (int(frame_hw[1]), int(frame_hw[0]))
    return cv2.warpAffine(w, np.asarray(matrix, np.float64), size, flags=flags, borderValue=0)


def boundary_visibility(frames: Sequence[np.ndarray], regions: Sequence[np.ndarray], width: float = 4.0) -> float:
    """How visible a paste-back boundary is: the step in pixel values across it, in 8-bit levels.

    frames: ``[T, H, W, 3]`` (uint8 or float in 0..255); regions: ``[T, H, W]`` bool, the pasted region of each
    frame (e.g. ``paste_alpha(...) >= 0.5``). For every pixel just outside a region's edge (distance <= 1 px),
    the mean colour of the region's pixels within ``width`` px of the edge and the mean colour of the outside
    pixels within ``width`` px of it are taken in a Gaussian window (sigma = ``width``) around that pixel, and
    the step is their absolute difference averaged over the 3 channels. Returns the mean step over all edge
    pixels of all frames (NaN when no frame has an edge). A seamless paste of the true picture gives the
    picture's own step across that curve; compare against the same measure on ground-truth frames with the
    same regions. ``width`` should cover the paste's feather (its transition band), or the step spread over
    the feather is partly missed.
    """
    import cv2

    k = 2 * int(np.ceil(2 * width)) + 1
    steps = []
    for frame, region in zip(frames, regions):
        inside = np.asarray(region, bool).astype(np.uint8)
        if inside.all() or not inside.any():
            continue
        d_in = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        img = np.asarray(frame, np.float32)
        means = []
        for band in ((d_in > 0) & (d_in <= width), (d_out > 0) & (d_out <= width)):
            b = band.astype(np.float32)
            num = cv2.GaussianBlur(img * b[..., None], (k, k), width, borderType=cv2.BORDER_CONSTANT)
            den = cv2.GaussianBlur(b, (k, k), width, borderType=cv2.BORDER_CONSTANT)
            means.append((num, den))
        edge = (d_out > 0) & (d_out <= 1) & (means[0][1] > 1e-3) & (means[1][1] > 1e-3)
        if edge.any():
            m_in = means[0][0][edge] / means[0][1][edge, None]
            m_out = means[1][0][edge] / means[1][1][edge, None]
            steps.append(np.abs(m_in - m_out).mean(axis=1))
    return float(np.concatenate(steps).mean()) if steps else float("nan")
