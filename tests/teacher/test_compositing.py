"""Compositing: the paste weight, the paste that changes only the regenerated region, and the boundary measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from teacher.conditioning import (
    boundary_visibility,
    composite,
    paste_alpha,
    paste_faces,
    paste_faces_torch,
    paste_weight,
    pixels_to_uint8,
)
from teacher.face import AlignedFace, FaceAligner, lower_face_mask


def test_paste_weight_is_zero_outside_the_mask_and_ramps_inside():
    mask = lower_face_mask(128)
    w = paste_weight(mask).numpy()
    assert w.shape == (128, 128) and w.dtype == np.float32
    assert np.all(w[mask > 0.5] == 0)  # kept pixels are never pasted over
    assert w.max() == 1.0 and w[90, 64] == 1.0  # deep inside the mouth region
    # the ramp: 0 on the region's edge, 1 after R / 20 = 6.4 px, monotone in between (a column through the chin)
    col = w[:, 64]
    bottom = np.nonzero(mask[:, 64] < 0.5)[0].max()
    ramp = col[bottom - 8 : bottom + 1][::-1]  # from the edge inward
    assert 0 < ramp[0] < 0.1 and ramp[7] == 1.0 and np.all(np.diff(ramp) >= 0)
    narrow = paste_weight(mask, feather=2).numpy()[bottom - 2 : bottom + 1, 64][::-1]
    assert np.all(narrow > ramp[:3])  # a narrower feather rises faster
    assert torch.equal(paste_weight(torch.from_numpy(mask)), paste_weight(mask))


def test_matched_composite_takes_the_originals_colour_only_near_the_edge():
    r = 64
    mask = torch.from_numpy(lower_face_mask(r))
    check = (torch.arange(r)[:, None] + torch.arange(r)[None]) % 2 * 0.2 - 0.1  # finest detail, +-0.1
    decoded = (0.3 + check).expand(1, 3, 2, r, r)  # generated: brighter, textured
    pixels = torch.full((1, 3, 2, r, r), -0.3)  # the original: flat and darker
    hard = composite(decoded, pixels, mask)
    assert torch.equal(hard, decoded.clamp(-1, 1) * (1 - mask) + pixels * mask)  # LatentSync's, the default
    out = composite(decoded, pixels, mask, matched=True)
    keep = mask > 0.5
    assert torch.equal(out[..., keep], pixels[..., keep])  # the original outside the mask, exactly
    deep = paste_weight(mask, feather=r / 10) == 1
    assert deep.sum() > 100 and torch.allclose(out[..., deep], decoded[..., deep])  # the mouth as generated
    edge = (paste_weight(mask, feather=r / 10) > 0) & (paste_weight(mask, feather=r / 10) < 0.05)
    local = torch.nn.functional.avg_pool2d(out[0, :, 0], 3, 1, 1)  # the low band of the result
    assert (local[:, edge] - (-0.3)).abs().max() < 0.15  # near the edge: the original's level (hard: 0.6 off)
    assert ((out[0, :, 0] - local)[:, edge].abs().mean() - 0.1).abs() < 0.03  # the generated detail kept
    per_frame = mask.expand(1, 1, 2, r, r).clone()  # masks of any leading shape, e.g. [B, 1, F, R, R]
    assert torch.allclose(composite(decoded, pixels, per_frame, matched=True), out, atol=1e-6)
    per_frame[0, 0, 1] = 1  # frame 1 keeps everything
    assert torch.equal(composite(decoded, pixels, per_frame, matched=True)[:, :, 1], pixels[:, :, 1])


def _face_setup(res: int = 32):
    rng = np.random.default_rng(1)
    frame = rng.integers(60, 200, (80, 90, 3), dtype=np.uint8)
    angle, scale = 0.1, 0.7
    m = np.array([[scale * np.cos(angle), -scale * np.sin(angle), -10.0],
                  [scale * np.sin(angle), scale * np.cos(angle), -12.0]])  # fmt: skip
    return frame, AlignedFace(np.zeros((res, res, 3), np.uint8), m, np.zeros((3, 2))), FaceAligner(res, landmarker=None)


def test_paste_changes_only_the_regenerated_region():
    frame, aligned, aligner = _face_setup()
    face = np.full((32, 32, 3), 250, np.uint8)
    out = paste_faces([frame], face[None], [aligned], aligner)[0]
    alpha = paste_alpha(paste_weight(lower_face_mask(32)), aligned.matrix, frame.shape[:2])
    changed = (out != frame).any(-1)
    assert changed.sum() > 50 and not changed[alpha == 0].any()  # bit-identical wherever the weight is 0
    # a custom mask moves the pasted region with it
    top = np.ones((32, 32), np.float32)
    top[4:12, 8:24] = 0
    out2 = paste_faces([frame], face[None], [aligned], aligner, mask=top)[0]
    alpha2 = paste_alpha(paste_weight(top), aligned.matrix, frame.shape[:2])
    assert not (out2 != frame).any(-1)[alpha2 == 0].any() and (out2 != frame).any(-1)[alpha2 > 0.5].all()
    # the GPU paste takes the same mask (the engine passes its own)
    as_t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float()  # noqa: E731
    gpu = paste_faces_torch(as_t(frame), as_t(face), torch.from_numpy(aligned.matrix)[None], mask=torch.from_numpy(top))
    gpu = gpu[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    assert np.abs(gpu.astype(int) - out2).mean() < 0.5
    assert np.abs(gpu[alpha2 == 0].astype(int) - frame[alpha2 == 0]).max() <= 1  # sampling differs at the rim


def test_boundary_visibility_is_the_step_across_the_edge():
    flat = np.full((1, 60, 60, 3), 100.0)
    region = np.zeros((1, 60, 60), bool)
    region[:, 20:40, 20:40] = True
    assert boundary_visibility(flat, region) == pytest.approx(0.0, abs=1e-4)
    hard = flat.copy()
    hard[:, 20:40, 20:40] += 30.0  # a pasted patch 30 levels too bright, hard edge
    assert boundary_visibility(hard, region, width=3) == pytest.approx(30.0, rel=0.02)
    # the same patch faded in over 8 px inside the region: a smaller step at the edge, still measured
    y, x = np.mgrid[:60, :60]
    d = np.minimum.reduce([y - 19, 40 - y, x - 19, 40 - x]).clip(0)  # px inside the region's edge
    soft = flat + 30.0 * np.clip(d / 8, 0, 1)[None, ..., None]
    assert 0 < boundary_visibility(soft, region, width=3) < 0.5 * 30
    assert boundary_visibility(soft, region, width=3) < boundary_visibility(soft, region, width=8)
    assert np.isnan(boundary_visibility(flat, np.zeros((1, 60, 60), bool)))
    # a natural edge along the boundary counts in the ground truth too: the measure is relative to it
    edge = flat.copy()
    edge[:, :, 30:] = 160.0
    ref = boundary_visibility(edge, region, width=3)
    assert boundary_visibility(edge, region, width=3) == ref and 0 < ref < 60


@pytest.fixture(scope="module")
def synthetic_face():
    """A synthetic-world frame, its alignment at 128 px and the mask: the toy teacher's setting."""
    from distill.synthworld import make_clip

    frame = make_clip(3, resolution=256, seconds=0.08).frames[0]
    aligner = FaceAligner(128)
    aligned = aligner.align(frame)
    assert aligned is not None
    return frame, aligned, aligner, lower_face_mask(128)


def test_feathered_paste_of_an_off_colour_face_is_seamless_against_the_official_paste(synthetic_face):
    """A 'generated' face that is the true crop blurred and 12 levels bluish (what a weak decoder gives): pasted
    with the official hard composite + whole-crop paste its boundary step is far above the ground truth's; with the
    feathered region-only paste it stays within 10% of it. A perfect face pasted back changes nothing visible."""
    import cv2

    frame, aligned, aligner, mask = synthetic_face
    region = paste_alpha(1 - mask, aligned.matrix, frame.shape[:2]) >= 0.5
    gen = cv2.GaussianBlur(aligned.crop, (5, 5), 1.5).astype(np.float32) + np.array([-6.0, 2.0, 12.0])
    pixels = torch.from_numpy(aligned.crop).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
    decoded = torch.from_numpy(gen).permute(2, 0, 1)[None, :, None] / 127.5 - 1
    m = torch.from_numpy(mask)
    hard, face = (pixels_to_uint8(composite(decoded, pixels, m, matched)[0, :, 0].permute(1, 2, 0)).numpy()
                  for matched in (False, True))  # fmt: skip
    official = aligner.restore(frame, hard, aligned)  # LatentSync: hard composite, whole crop, blurred rectangle
    ours = paste_faces([frame], face[None], [aligned], aligner)[0]
    perfect = paste_faces([frame], aligned.crop[None], [aligned], aligner)[0]
    pastes = [("gt", frame), ("official", official), ("ours", ours), ("perfect", perfect)]
    measure = {name: boundary_visibility(x[None], region[None], width=6) for name, x in pastes}
    # measured: gt 5.55, official 8.29, ours 5.38, perfect 5.50
    assert measure["official"] > 1.25 * measure["gt"]
    assert abs(measure["ours"] / measure["gt"] - 1) < 0.1
    assert abs(measure["perfect"] / measure["gt"] - 1) < 0.03
    # the edit itself survives: deep inside the mouth region the pasted pixels are the generated ones as they are
    core = paste_alpha(paste_weight(mask, feather=128 / 10), aligned.matrix, frame.shape[:2]) == 1  # past the band
    direct = cv2.warpAffine(hard, aligned.matrix, frame.shape[1::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert core.sum() > 500 and np.abs(ours[core].astype(int) - direct[core]).max() <= 1
