"""The toy teacher's training pieces: the loss against its closed form, the latent mask, the latent
scale calibration, and continuing from earlier weights."""

from __future__ import annotations

import pytest
import torch

from distill.toy import ToyConfig, calibrate_scaling, diffusion_loss, train_teacher
from student.sampler import video_noise
from teacher.sampler import alphas_cumprod


def _batch(b=2, f=3, h=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 1, f, h, h)
    mask[..., h // 2 :, :] = 0  # lower half generated
    return {
        "latents": torch.randn(b, 4, f, h, h, generator=g),
        "masked_latents": torch.randn(b, 4, f, h, h, generator=g),
        "ref_latents": torch.randn(b, 4, f, h, h, generator=g),
        "audio_embeds": torch.randn(b, f, 50, 384, generator=g),
        "mask_latent": mask,
    }


@pytest.mark.parametrize("x0_weight", [0.0, 0.7])
def test_diffusion_loss_closed_form(x0_weight):
    """A model that predicts eps = 0: eps loss = weighted mean eps^2, x0 term = mean over the generated
    region of ((1 - a) / a) eps^2 (x0_pred = x_t / sqrt(a))."""
    batch, acp, mouth_weight = _batch(), alphas_cumprod(), 3.0
    zero = lambda sample, t, audio: torch.zeros_like(sample[:, :4])  # noqa: E731
    got = diffusion_loss(zero, batch, acp, mouth_weight, 1.0, torch.Generator().manual_seed(5), x0_weight)

    g = torch.Generator().manual_seed(5)  # the same draws, in the same order, as diffusion_loss
    x0 = batch["latents"]
    t = torch.randint(0, len(acp), (x0.shape[0],), generator=g)
    eps = video_noise(tuple(x0.shape), "mixed", g, mixed_alpha=1.0)
    a = acp[t].view(-1, 1, 1, 1, 1).float()
    gen = (1 - batch["mask_latent"]).expand_as(x0)
    expected = (eps.square() * (1 + (mouth_weight - 1) * gen)).mean()
    expected = expected + x0_weight * (((1 - a) / a) * eps.square() * gen).sum() / gen.sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_diffusion_loss_perfect_model_is_zero():
    batch, acp = _batch(), alphas_cumprod()
    g = torch.Generator().manual_seed(1)
    x0 = batch["latents"]
    torch.randint(0, len(acp), (x0.shape[0],), generator=g)  # advance g as diffusion_loss draws t
    eps = video_noise(tuple(x0.shape), "mixed", g, mixed_alpha=1.0)
    oracle = lambda sample, t_, audio: eps  # noqa: E731
    loss = diffusion_loss(oracle, batch, acp, 4.0, 1.0, torch.Generator().manual_seed(1), x0_weight=1.0)
    assert loss.item() < 1e-8


def test_calibrate_scaling_gives_unit_variance_latents():
    from teacher.vae import load_vae

    vae = load_vae(None)
    frames = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calibrate_scaling(vae, frames, batch=4)
    with torch.no_grad():
        means = vae.vae.encode(frames).latent_dist.mean
    assert float(means.std() * vae.scaling_factor) == pytest.approx(1.0, abs=1e-4)
    assert vae.vae.config.scaling_factor == pytest.approx(vae.scaling_factor)


def test_train_teacher_continues_from_given_weights():
    cfg = ToyConfig(resolution=32, num_frames=2, unet_steps=2, unet_batch=2, unet_lr=0.0, unet_widths=[32, 32, 32, 32])
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "latents": torch.randn(4, 2, 4, 4, generator=g),
            "masked_latents": torch.randn(4, 2, 4, 4, generator=g),
            "ref_latents": torch.randn(4, 2, 4, 4, generator=g),
            "audio_embeds": torch.randn(2, 50, 384, generator=g),
            "mask": torch.ones(1, 2, 32, 32),
        }
        for _ in range(2)
    ]
    first = train_teacher(items, cfg, log=lambda m: None)
    init = {k: v + 0.01 for k, v in first.state_dict().items()}
    cont = train_teacher(items, cfg, log=lambda m: None, init_state=init)  # lr 0: the weights stay as given
    for k, v in cont.state_dict().items():
        assert torch.equal(v, init[k]), k
