"""VideoVAE on a tiny random AutoencoderKL (factor 8, like sd-vae-ft-mse)."""

from __future__ import annotations

import pytest
import torch

from teacher.vae import TINY_VAE_CONFIG, VideoVAE

B, F, HW = 2, 3, 32


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    return VideoVAE.tiny(seed=0).eval()


def make_video(seed: int = 0, b: int = B, f: int = F, hw: int = HW) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, hw, hw, generator=g) * 2 - 1


def frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B * F, C, H, W] in (b, f) order."""
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1)


def test_tiny_config_factor_and_scalings(vae):
    assert vae.scale_factor == 8 and vae.latent_channels == 4
    assert vae.scaling_factor == pytest.approx(0.18215) and vae.shift_factor == 0.0
    assert sum(p.numel() for p in vae.parameters()) < 200_000
    # built with its own seed, without touching the global RNG
    state = torch.random.get_rng_state()
    again = VideoVAE.tiny(seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    for p, q in zip(vae.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)


@torch.no_grad()
def test_shapes_and_round_trip(vae):
    video = make_video()
    z = vae.encode(video, generator=torch.Generator().manual_seed(0))
    assert z.shape == (B, 4, F, HW // 8, HW // 8) and z.dtype == torch.float32
    rec = vae.decode(z)
    assert rec.shape == video.shape and torch.isfinite(rec).all()
    # non-square frames and a single frame
    z1 = vae.encode(make_video(1, b=1, f=1, hw=16)[..., :8], sample=False)
    assert z1.shape == (1, 4, 1, 2, 1)
    assert vae.decode(z1).shape == (1, 3, 1, 16, 8)
    # the same latents decoded twice are identical (deterministic decoder)
    assert torch.equal(vae.decode(z), rec)


@torch.no_grad()
def test_encode_mode_equals_manual_per_frame(vae):
    video = make_video(2)
    z = vae.encode(video, sample=False)
    for b in range(B):
        for f in range(F):
            mode = vae.vae.encode(video[b : b + 1, :, f]).latent_dist.mode()
            expected = (mode - vae.shift_factor) * vae.scaling_factor
            torch.testing.assert_close(z[b : b + 1, :, f], expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_encode_sample_equals_unchunked_latent_dist_sample(vae):
    video = make_video(3)
    z = vae.encode(video, generator=torch.Generator().manual_seed(7), chunk_size=2)
    dist = vae.vae.encode(frames(video)).latent_dist
    expected = dist.sample(generator=torch.Generator().manual_seed(7)) * vae.scaling_factor
    torch.testing.assert_close(frames(z), expected, rtol=1e-5, atol=1e-5)
    z_again = vae.encode(video, generator=torch.Generator().manual_seed(7))
    z_other = vae.encode(video, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(z_again, z, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(z_other, z)


@torch.no_grad()
def test_decode_equals_manual_per_frame(vae):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(B, 4, F, 4, 4, generator=g)
    out = vae.decode(z)
    for b in range(B):
        for f in range(F):
            expected = vae.vae.decode(z[b : b + 1, :, f] / vae.scaling_factor + vae.shift_factor).sample
            torch.testing.assert_close(out[b : b + 1, :, f], expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_chunking_does_not_change_results(vae):
    video = make_video(5, f=5)
    z_ref = vae.encode(video, generator=torch.Generator().manual_seed(0), chunk_size=16)
    mode_ref = vae.encode(video, sample=False, chunk_size=16)
    x_ref = vae.decode(z_ref, chunk_size=16)
    for chunk in (1, 3, 4):
        z = vae.encode(video, generator=torch.Generator().manual_seed(0), chunk_size=chunk)
        torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vae.encode(video, sample=False, chunk_size=chunk), mode_ref,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        torch.testing.assert_close(vae.decode(z_ref, chunk_size=chunk), x_ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_shift_factor_from_config():
    vae = VideoVAE.from_config({**TINY_VAE_CONFIG, "shift_factor": 0.1, "scaling_factor": 0.5})
    assert vae.shift_factor == 0.1 and vae.scaling_factor == 0.5
    video = make_video(6, b=1, f=2)
    mode = vae.vae.encode(frames(video)).latent_dist.mode()
    torch.testing.assert_close(frames(vae.encode(video, sample=False)), (mode - 0.1) * 0.5,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    z = torch.randn(1, 4, 2, 2, 2)
    torch.testing.assert_close(frames(vae.decode(z)), vae.vae.decode(frames(z) / 0.5 + 0.1).sample,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_decode_is_differentiable(vae):
    z = torch.randn(1, 4, 2, 2, 2, requires_grad=True)
    vae.decode(z).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("safe", [True, False])
@torch.no_grad()
def test_from_pretrained_round_trips_save_pretrained(vae, tmp_path, safe):
    vae.vae.save_pretrained(tmp_path / "vae", safe_serialization=safe)
    loaded = VideoVAE.from_pretrained(tmp_path / "vae")
    for (k, p), (k2, q) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(p, q)
    video = make_video(7, b=1, f=2)
    torch.testing.assert_close(loaded.encode(video, sample=False), vae.encode(video, sample=False))
    # an SD-pipeline-style folder with a vae/ subfolder, and a dtype
    half = VideoVAE.from_pretrained(tmp_path, subfolder="vae", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert half.encode(video, sample=False).dtype == torch.bfloat16


def test_from_pretrained_errors_name_the_path(vae, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        VideoVAE.from_pretrained(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoVAE.from_pretrained(empty)
    vae.vae.save_config(empty)
    with pytest.raises(FileNotFoundError, match="empty.*weights"):
        VideoVAE.from_pretrained(empty)


def test_input_errors(vae):
    video = make_video(8, b=1, f=1)
    with pytest.raises(ValueError, match="B, 3, F, H, W"):
        vae.encode(video[:, :, 0])
    with pytest.raises(ValueError, match="channels"):
        vae.encode(video[:, :1])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vae.encode(video * 0.5 + 0.6)
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.encode(video[..., :12])
    with pytest.raises(ValueError, match="chunk_size"):
        vae.encode(video, chunk_size=0)
    with pytest.raises(ValueError, match="channels"):
        vae.decode(torch.zeros(1, 3, 1, 4, 4))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 4, 4, 4))
