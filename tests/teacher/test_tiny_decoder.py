"""TinyDecoder (AutoencoderTiny / TAESD) as a drop-in for VideoVAE.decode: latent convention, shapes,
folder round trip, and the committed toy decoder against the toy VAE on real toy faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from teacher.tiny_decoder import TinyDecoder, decoder_flops, load_tiny_decoder

ROOT = Path(__file__).resolve().parents[2]
TOY_TINY = ROOT / "assets" / "toy_student" / "tiny_decoder"
TOY_VAE = ROOT / "assets" / "toy_teacher" / "vae"
SD_SCALING = 0.18215

# Measured (train.json, 4 held-out shards): tiny 28.9 dB vs toy VAE 31.6 dB against the real faces,
# tiny vs VAE 30.9 dB, 6.6 % of the VAE decoder's FLOPs; on the test clip below 31.0 vs 32.4 dB,
# tiny vs VAE 34.2 dB. The thresholds keep a margin of about 1.5-3 dB.
MAX_PSNR_GAP_DB = 4.0
MIN_TINY_VS_VAE_DB = 28.0
MAX_FLOPS_RATIO = 0.08


def frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B * F, C, H, W] in (b, f) order."""
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1)


def latents(b: int = 2, f: int = 3, hw: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 4, f, hw, hw, generator=torch.Generator().manual_seed(seed))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * torch.log10(4 / (a.clamp(-1, 1) - b).square().mean()).item()


@pytest.fixture(scope="module")
def taesd() -> TinyDecoder:
    """A random AutoencoderTiny in the official madebyollin/taesd config (diffusers defaults)."""
    torch.manual_seed(0)
    return TinyDecoder(AutoencoderTiny()).eval()


@torch.no_grad()
def test_official_taesd_takes_unet_latents_as_they_are(taesd):
    z = latents()
    assert taesd.scaling_factor == 1.0 and taesd.shift_factor == 0.0 and taesd.scale_factor == 8
    out = taesd.decode(z)
    # what a diffusers pipeline does with pipe.vae = AutoencoderTiny: vae.decode(latents / vae.config.scaling_factor)
    ref = taesd.tae.decode(frames(z) / taesd.tae.config.scaling_factor).sample
    torch.testing.assert_close(frames(out), ref)
    # ... which is NOT the SD VAE's rule x = D(z / 0.18215)
    wrong = taesd.tae.decode(frames(z) / SD_SCALING).sample
    assert (frames(out) - wrong).abs().max() > 1e-2


@torch.no_grad()
def test_scale_and_shift_come_from_the_config():
    """taesd3 / taef1 folders record their latent scale and shift: x = D(z / scaling + shift)."""
    dec = TinyDecoder.tiny(seed=1, scaling_factor=1.5305, shift_factor=0.0609).eval()
    z = latents(1, 2)
    ref = dec.tae.decode(frames(z) / 1.5305 + 0.0609).sample
    torch.testing.assert_close(frames(dec.decode(z)), ref)


@torch.no_grad()
def test_shapes_order_and_chunking():
    dec = TinyDecoder.tiny(seed=0).eval()
    z = latents(2, 3, 4)
    out = dec.decode(z)
    assert out.shape == (2, 3, 3, 32, 32) and out.dtype == torch.float32
    # frame (b, f) of the video is the decode of latent frame (b, f); chunking changes nothing
    torch.testing.assert_close(out[1, :, 2], dec.decode(z[1:2, :, 2:3])[0, :, 0])
    torch.testing.assert_close(dec.decode(z, chunk_size=1), out)
    assert torch.equal(dec(z), out)
    with pytest.raises(ValueError):
        dec.decode(z[:, :3])
    with pytest.raises(ValueError):
        dec.decode(z[0])


@torch.no_grad()
def test_save_load_round_trip(tmp_path):
    dec = TinyDecoder.tiny(seed=3, scaling_factor=0.5).eval()
    dec.save_pretrained(tmp_path / "td")
    again = load_tiny_decoder(tmp_path / "td", torch_dtype=torch.float32).eval()
    assert again.scaling_factor == 0.5 and again.scale_factor == dec.scale_factor
    z = latents(1, 2)
    assert torch.equal(again.decode(z), dec.decode(z))
    dec.half().save_pretrained(tmp_path / "half")  # the committed format
    assert torch.equal(load_tiny_decoder(tmp_path / "half").tae.decoder.layers[0].weight.half(),
                       dec.tae.decoder.layers[0].weight)  # fmt: skip
    with pytest.raises(FileNotFoundError):
        load_tiny_decoder(tmp_path / "missing")
    assert isinstance(load_tiny_decoder(None), TinyDecoder)


# ----------------------------------------------------------------- the committed toy decoder
@pytest.fixture(scope="module")
def toy():
    from teacher.vae import load_vae

    if not (TOY_TINY / "config.json").is_file():
        pytest.skip("assets/toy_student/tiny_decoder not built (python -m scripts.train_tiny_decoder)")
    return load_tiny_decoder(TOY_TINY, torch.float32).eval(), load_vae(TOY_VAE, torch.float32).eval()


@pytest.fixture(scope="module")
def toy_faces() -> torch.Tensor:
    """Aligned 128 px faces [1, 3, F, 128, 128] of a synthetic clip the decoder never saw (as `prepare` makes them)."""
    from distill.synthworld import make_clip
    from teacher.conditioning import crops_to_pixels
    from teacher.face import FaceAligner, align_video

    clip = make_clip(9001, resolution=256, seconds=0.24)
    aligned = [a for a in align_video(clip.frames, FaceAligner(resolution=128)) if a is not None]
    assert len(aligned) >= 4
    return crops_to_pixels(np.stack([a.crop for a in aligned]))[None]


@torch.no_grad()
def test_committed_toy_decoder_matches_the_toy_vae(toy, toy_faces):
    tiny, vae = toy
    assert tiny.scale_factor == vae.scale_factor == 8 and tiny.scaling_factor == 1.0
    assert tiny.latent_channels == vae.latent_channels
    z = vae.encode(toy_faces, generator=torch.Generator().manual_seed(0))  # posterior samples, scaled
    out, ref = tiny.decode(z), vae.decode(z)
    assert out.shape == ref.shape == toy_faces.shape
    assert out.min() > -1.5 and out.max() < 1.5
    p_tiny, p_vae = psnr(out, toy_faces), psnr(ref, toy_faces)
    assert p_tiny > p_vae - MAX_PSNR_GAP_DB, (p_tiny, p_vae)
    assert psnr(out, ref.clamp(-1, 1)) > MIN_TINY_VS_VAE_DB


def test_flops_ratio_and_train_report(toy):
    tiny, vae = toy
    f_tiny, f_vae = decoder_flops(tiny, 16), decoder_flops(vae, 16)
    assert 0 < f_tiny < MAX_FLOPS_RATIO * f_vae, (f_tiny, f_vae)
    report = json.loads((TOY_TINY / "train.json").read_text())
    assert report["flops_per_frame"]["tiny"] == f_tiny and report["flops_per_frame"]["vae"] == f_vae
    assert "scripts.train_tiny_decoder" in report["command"]
    assert {"tiny_vs_real", "vae_vs_real"} <= report["psnr_db"].keys()


def test_mouth_weighted_l1_and_train_step():
    from scripts.train_tiny_decoder import MouthWeightedL1, train_step

    mouth = torch.zeros(4, 4)
    mouth[2:] = 1  # lower half of the crop
    loss_fn = MouthWeightedL1(mouth_weight=4.0)
    pred, target = torch.zeros(2, 3, 1, 4, 4), torch.ones(2, 3, 1, 4, 4)
    torch.testing.assert_close(loss_fn(pred, target, mouth), torch.full((2,), (8 * 1 + 8 * 4) / 16))
    dec = TinyDecoder.tiny(seed=0)
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    z, x = latents(2, 1, 2), torch.rand(2, 3, 1, 16, 16) * 2 - 1
    mouth = torch.zeros(16, 16)
    logs = [train_step(dec, opt, sched, z, x, mouth, loss_fn) for _ in range(20)]
    assert logs[-1]["loss"] < 0.7 * logs[0]["loss"] and logs[-1]["lr"] < 3e-3
