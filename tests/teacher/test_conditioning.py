"""``teacher.conditioning``: the U-Net's inputs and the composite, each step against its closed form."""

from __future__ import annotations

import numpy as np
import torch

from teacher.conditioning import (
    composite,
    condition_channels,
    crops_to_pixels,
    encode_condition,
    face_mask,
    latent_mask,
    masked_pixels,
    pixels_to_uint8,
    unet_input,
)
from teacher.face import lower_face_mask


def test_pixels_round_trip_exactly():
    crops = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = crops_to_pixels(crops)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(x[:, 1, 2, 5], torch.from_numpy(crops[1, 2, 5]).float() / 127.5 - 1)
    back = pixels_to_uint8(x.permute(1, 2, 3, 0)).numpy()
    assert np.array_equal(back, crops)


def test_face_mask_is_the_lower_face_mask():
    m = face_mask(32)
    assert m.shape == (32, 32) and torch.equal(m, torch.as_tensor(lower_face_mask(32)))


def test_latent_mask_is_nearest_downsampling():
    mask = torch.ones(1, 1, 2, 16, 16)
    mask[..., 8:, :] = 0
    m = latent_mask(mask, 4)
    assert m.shape == (1, 1, 2, 4, 4)
    assert torch.equal(m[0, 0, 0], torch.tensor([[1.0] * 4, [1.0] * 4, [0.0] * 4, [0.0] * 4]))


def test_encode_condition_order_and_channels():
    """Masked frames are encoded first, then the reference (the official order of generator draws)."""
    calls = []

    class FakeVAE:
        def encode(self, x, generator=None):
            calls.append(x.clone())
            return x[:, :1].repeat(1, 4, 1, 1, 1) + torch.randn(1, 4, *x.shape[2:], generator=generator)

    pixels = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    mask = torch.zeros(4, 4)
    mask[:2] = 1
    masked, ref = encode_condition(FakeVAE(), pixels, mask, torch.Generator().manual_seed(0))
    assert torch.equal(calls[0], masked_pixels(pixels, mask)) and torch.equal(calls[1], pixels)
    g = torch.Generator().manual_seed(0)
    noise1 = torch.randn(1, 4, 2, 4, 4, generator=g)
    assert torch.equal(masked, calls[0][:, :1].repeat(1, 4, 1, 1, 1) + noise1)
    cond = condition_channels(torch.ones(1, 1, 2, 4, 4), masked, ref)
    assert cond.shape == (1, 9, 2, 4, 4) and torch.equal(cond[:, 1:5], masked) and torch.equal(cond[:, 5:], ref)
    assert unet_input(torch.zeros(1, 4, 2, 4, 4), cond).shape == (1, 13, 2, 4, 4)


def test_composite_keeps_the_original_outside_the_mask():
    decoded = torch.full((1, 3, 1, 4, 4), 3.0)  # out of range: clamped to 1 inside the generated region
    pixels = torch.rand(1, 3, 1, 4, 4) * 2 - 1
    mask = torch.zeros(4, 4)
    mask[:2] = 1
    out = composite(decoded, pixels, mask)
    assert torch.equal(out[..., :2, :], pixels[..., :2, :])
    assert torch.equal(out[..., 2:, :], torch.ones_like(out[..., 2:, :]))


def test_torch_paste_matches_the_opencv_paste():
    """The batched torch warp pastes like the OpenCV paste, with the pipelines' weight (paste_faces, the
    regenerated region feathered inward) and with the official whole-crop weight (restore without a weight,
    crop_feather): same pixels deep inside, the original outside, a small mean difference overall."""
    from teacher.conditioning import crop_feather, paste_faces, paste_faces_torch
    from teacher.face import AlignedFace, FaceAligner, lower_face_mask

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)
    face = np.full((32, 32, 3), 200, np.uint8)
    face[8:28, 6:26] = (30, 90, 160)
    angle, scale = 0.2, 0.8  # frame -> crop: rotate, scale, shift
    m = np.array([[scale * np.cos(angle), -scale * np.sin(angle), -20.0],
                  [scale * np.sin(angle), scale * np.cos(angle), -15.0]])  # fmt: skip
    aligner = FaceAligner(resolution=32, landmarker=lambda f: None)
    aligned = AlignedFace(face, m, np.zeros((3, 2)))
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    as_t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float()  # noqa: E731
    mat = torch.from_numpy(m)[None]
    masked = paste_faces([frame], face[None], [aligned], aligner)[0]
    whole = aligner.restore(frame, face, aligned)
    pairs = [(masked, paste_faces_torch(as_t(frame), as_t(face), mat), (16, 24)),  # deep inside the mouth region
             (whole, paste_faces_torch(as_t(frame), as_t(face), mat, feather=crop_feather(32)), (16, 16))]  # fmt: skip
    for ref, out, deep in pairs:
        out = out[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        x, y = (inv @ np.array([*deep, 1])).round().astype(int)
        assert np.array_equal(out[y, x], ref[y, x]) and np.array_equal(out[y, x], face[deep[1], deep[0]])
        assert np.array_equal(out[:3], frame[:3]) and np.array_equal(ref[:3], frame[:3])  # far outside
        assert np.abs(out.astype(int) - ref).mean() < 3.0
    # the pipelines' paste leaves the kept nose band (crop y = 0.4) as it was; the whole-crop paste does not
    assert lower_face_mask(32)[13, 16] == 1
    x, y = (inv @ np.array([16, 13, 1])).round().astype(int)
    assert np.array_equal(masked[y, x], frame[y, x]) and not np.array_equal(whole[y, x], frame[y, x])
