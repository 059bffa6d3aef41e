"""distill.benchmark: the oracle (perfect consistency function) against its closed forms, and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.benchmark import (
    Window,
    average_draws,
    laplacian_energy,
    laplacian_error,
    make_windows,
    oracle_method,
    pearson,
    teacher_method,
)
from student.consistency import add_noise
from teacher.sampler import alphas_cumprod, ddim_timesteps, sample_ddim
from tests.student import tiny_batch, tiny_teacher


@pytest.fixture(scope="module")
def setup():
    unet, batch = tiny_teacher(), tiny_batch(b=1)
    noise = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(5)).expand(-1, -1, 2, -1, -1)
    win = Window(frames=torch.zeros(1, 3, 2, 64, 64), mask=torch.ones(1, 1, 2, 64, 64), mask_latent=batch["mask"],
                 masked_latents=batch["masked_latents"], ref_latents=batch["ref_latents"],
                 audio_embeds=batch["audio_embeds"], noise=noise.contiguous(), mouth_open=np.zeros(2))  # fmt: skip
    return unet, win


def _ddim(unet, win, ts, x):
    return sample_ddim(unet, ts, x, win.mask_latent, win.masked_latents, win.ref_latents, win.audio_embeds,
                       w=1.5, alphas_cumprod=alphas_cumprod())  # fmt: skip


def test_one_step_oracle_is_the_lcd_solver_trajectory(setup):
    """x0 at t = 999 is the guided DDIM down the 50-step solver grid, i.e. teacher_ddim_50 (trailing)."""
    unet, win = setup
    with torch.no_grad():
        oracle = oracle_method(unet, 1)(win)
        t50 = teacher_method(unet, 50)(win)
    assert ddim_timesteps(50, "trailing").tolist() == list(range(999, 0, -20))
    torch.testing.assert_close(oracle, t50, rtol=0, atol=0)


def test_two_step_oracle_closed_form(setup):
    """2 steps, re-noising with the initial noise: ODE(999 -> 0), re-noise to 499, ODE(499 -> 0)."""
    unet, win = setup
    grid = torch.arange(999, 0, -20)
    with torch.no_grad():
        first = _ddim(unet, win, grid, win.noise)
        x_499 = add_noise(first, win.noise, alphas_cumprod()[499])
        expected = _ddim(unet, win, grid[grid <= 499], x_499)
        got = oracle_method(unet, 2, renoise="initial")(win)
        fresh = [oracle_method(unet, 2, seed=s)(win) for s in (0, 0, 1)]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fresh[0], fresh[1], rtol=0, atol=0)  # seeded fresh noise: reproducible
    assert not torch.allclose(fresh[0], fresh[2])  # and it is fresh: another seed, another sample


def test_metrics_closed_forms():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, np.ones(4)) == 0.0  # constant: defined as no correlation
    flat = torch.full((2, 40, 40, 3), 0.3)
    assert laplacian_energy(flat, box=(0, 0, 1, 1)) == 0.0
    checker = ((torch.arange(40)[:, None] + torch.arange(40)[None]) % 2).float()  # Laplacian = +-4 everywhere
    frames = checker[None, :, :, None].expand(1, 40, 40, 3)
    assert laplacian_energy(frames, box=(0, 0, 1, 1)) == pytest.approx(16.0)
    # high-frequency error: the truth 0, a flat output the truth's energy, the detail shifted by a pixel 4x that
    assert laplacian_error(frames, frames, box=(0, 0, 1, 1)) == 0.0
    assert laplacian_error(flat, frames[:, :, :, :].expand(2, -1, -1, -1), box=(0, 0, 1, 1)) == pytest.approx(16.0)
    shifted = 1 - frames  # the checker one pixel over: Laplacian -(+-4), difference +-8
    assert laplacian_energy(shifted, box=(0, 0, 1, 1)) == pytest.approx(16.0)
    assert laplacian_error(shifted, frames, box=(0, 0, 1, 1)) == pytest.approx(64.0)


def test_average_draws_mean_std_and_per_draw():
    a = {"m": {"x": 1.0, "y": 4.0}, "_setup": {"k": 1}}
    b = {"m": {"x": 3.0, "y": 4.0}, "_setup": {"k": 2}}
    out = average_draws([a, b])
    assert out["m"]["x"] == 2.0 and out["m"]["y"] == 4.0
    assert out["m"]["std"] == {"x": 1.0, "y": 0.0} and out["m"]["per_draw"]["x"] == [1.0, 3.0]
    assert out["_setup"] == {"k": 1}
    assert average_draws([a]) == a  # one draw: unchanged, no std


def test_noise_draws_change_only_the_noise():
    """Another noise_seed gives other initial noise on the very same encodings."""

    class Vae:
        def encode(self, x, generator=None):
            return torch.randn(x.shape[0], 4, x.shape[2], 8, 8, generator=generator)

    item = {"frames": torch.zeros(3, 2, 64, 64), "mask": torch.ones(1, 2, 64, 64),
            "audio_embeds": torch.zeros(2, 50, 384), "mouth_open": torch.zeros(2)}  # fmt: skip
    base, same, other = (make_windows([item, item], Vae(), noise_seed=s) for s in (None, None, 7))
    for w0, w1, w2 in zip(base, same, other):
        torch.testing.assert_close(w0.noise, w1.noise)
        torch.testing.assert_close(w0.masked_latents, w2.masked_latents)
        torch.testing.assert_close(w0.ref_latents, w2.ref_latents)
        assert not torch.allclose(w0.noise, w2.noise)
        assert (w2.noise == w2.noise[:, :, :1]).all()  # still one noise frame repeated
