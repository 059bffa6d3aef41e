"""Consistency formulas against closed forms, the solver grid, and the LCM sampler against diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from student.consistency import add_noise, boundary_scalings, consistency_x0, solver_pairs, solver_timesteps
from student.denoiser import StudentDenoiser
from student.model import StudentUNet
from student.sampler import lcm_timesteps, sample_lcm, video_noise
from teacher.sampler import alphas_cumprod
from tests.student import HW, B, F, rel_err, tiny_batch, tiny_teacher


def official_lcm_scheduler() -> LCMScheduler:
    """LCMScheduler configured like LatentSync's DDIM (scaled_linear 0.00085-0.012, no alpha_one)."""
    return LCMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        set_alpha_to_one=False, original_inference_steps=50, timestep_scaling=10.0,
                        prediction_type="epsilon", clip_sample=False)  # fmt: skip


# ------------------------------------------------------------------ formulas
def test_boundary_scalings_closed_form():
    for t in (0, 1, 19, 259, 500, 999):
        c_skip, c_out = boundary_scalings(torch.tensor(t))
        st = 10.0 * t
        assert c_skip.item() == pytest.approx(0.25 / (st**2 + 0.25), rel=1e-6)
        assert c_out.item() == pytest.approx(st / math.sqrt(st**2 + 0.25), rel=1e-6)
    c_skip, c_out = boundary_scalings(0)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0  # f(x, 0) = x
    c_skip, c_out = boundary_scalings(torch.tensor([0.3, 2.0]), sigma_data=1.0, timestep_scaling=1.0)
    torch.testing.assert_close(c_skip, torch.tensor([1 / 1.09, 1 / 5.0]))
    torch.testing.assert_close(c_out, torch.tensor([0.3 / 1.09**0.5, 2.0 / 5.0**0.5]))
    sched = official_lcm_scheduler()
    for t in (19, 259, 999):
        ref = sched.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        for ours, theirs in zip(boundary_scalings(torch.tensor(t)), ref):
            assert ours.item() == pytest.approx(float(theirs), rel=1e-6)


def test_consistency_x0_closed_form():
    g = torch.Generator().manual_seed(0)
    eps, x_t = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)
    t = torch.tensor([0, 259, 999])
    acp = alphas_cumprod()
    x0 = consistency_x0(eps, x_t, t, acp)
    for i, ti in enumerate(t.tolist()):
        a = acp[ti].double()
        st = 10.0 * ti
        c_skip, c_out = 0.25 / (st**2 + 0.25), st / math.sqrt(st**2 + 0.25)
        pred = (x_t[i].double() - (1 - a).sqrt() * eps[i].double()) / a.sqrt()
        torch.testing.assert_close(x0[i].double(), c_skip * x_t[i].double() + c_out * pred, rtol=1e-5, atol=1e-5)
    assert torch.equal(x0[0], x_t[0])  # boundary condition at t = 0
    torch.testing.assert_close(consistency_x0(eps[1:2], x_t[1:2], 259, acp), x0[1:2])  # int t


def test_add_noise_closed_form():
    x0, noise = torch.full((2, 1, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1, 1), -1.0)
    out = add_noise(x0, noise, torch.tensor([0.36, 0.64]))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.6 * 2 - 0.8, 0.8 * 2 - 0.6]))
    torch.testing.assert_close(add_noise(x0, noise, 0.25), torch.full_like(x0, 0.5 * 2 - 0.75**0.5))


def test_solver_grid_and_pairs():
    grid = solver_timesteps()
    assert grid.dtype == torch.long and grid.tolist() == list(range(19, 1000, 20))
    expected = (np.arange(1, 51) * (1000 // 50)).round() - 1  # diffusers DDIMSolver
    assert grid.tolist() == expected.astype(int).tolist()
    start, prev = solver_pairs()
    assert torch.equal(start, grid)
    assert prev[:3].tolist() == [0, 19, 39] and prev[-1].item() == 979
    assert solver_timesteps(1000, 4).tolist() == [249, 499, 749, 999]


@pytest.mark.parametrize("n", range(1, 51))
def test_lcm_timesteps_match_diffusers(n):
    sched = official_lcm_scheduler()
    sched.set_timesteps(n)
    assert lcm_timesteps(n).tolist() == sched.timesteps.tolist()


def test_lcm_timesteps_known_values():
    assert lcm_timesteps(1).tolist() == [999]
    assert lcm_timesteps(2).tolist() == [999, 499]
    assert lcm_timesteps(4).tolist() == [999, 759, 499, 259]
    with pytest.raises(ValueError):
        lcm_timesteps(0)
    with pytest.raises(ValueError):
        lcm_timesteps(51)


# ------------------------------------------------------------------ noise
def test_video_noise_structure():
    shape = (64, 4, 3, 16, 16)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    shared = video_noise(shape, "shared", g())
    assert torch.equal(shared[:, :, 0], shared[:, :, 1]) and torch.equal(shared[:, :, 0], shared[:, :, 2])
    per_frame = video_noise(shape, "per_frame", g())
    assert torch.equal(per_frame, video_noise(shape, "per_frame", g()))  # reproducible
    mixed = video_noise(shape, "mixed", g(), mixed_alpha=1.0)
    for x, corr in ((per_frame, 0.0), (mixed, 0.5), (shared, 1.0)):
        assert x.shape == shape
        assert x.std().item() == pytest.approx(1.0, abs=0.01)
        c = torch.corrcoef(torch.stack([x[:, :, 0].flatten(), x[:, :, 1].flatten()]))[0, 1].item()
        assert c == pytest.approx(corr, abs=0.01)
    mixed3 = video_noise(shape, "mixed", g(), mixed_alpha=3.0)  # a^2 / (1 + a^2) = 0.9
    c = torch.corrcoef(torch.stack([mixed3[:, :, 0].flatten(), mixed3[:, :, 2].flatten()]))[0, 1].item()
    assert c == pytest.approx(0.9, abs=0.01)
    with pytest.raises(ValueError, match="noise mode"):
        video_noise(shape, "iid")


# ------------------------------------------------------------------ sampler
@pytest.fixture(scope="module")
def student():
    s = StudentUNet.from_teacher(tiny_teacher()).eval()
    with torch.no_grad():  # a non-trivial guidance embedding
        s.guidance_embedding.linear.weight.normal_(0.0, 0.05)
    return s


def _record_inputs(module, store):
    return module.register_forward_pre_hook(lambda m, args: store.append([a.clone() for a in args[:2]]))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sample_lcm_matches_diffusers_lcm_scheduler(student, steps):
    batch = tiny_batch()
    noise = torch.randn(B, 4, F, HW, HW, generator=torch.Generator().manual_seed(3))
    cond = torch.cat([batch["mask"], batch["masked_latents"], batch["ref_latents"]], dim=1)
    w = 1.7

    ours, theirs = [], []
    handle = _record_inputs(student, ours)
    with torch.no_grad():
        x0 = sample_lcm(student, lcm_timesteps(steps), noise, batch["mask"], batch["masked_latents"],
                        batch["ref_latents"], batch["audio_embeds"], w=w, generator=torch.Generator().manual_seed(7))
    handle.remove()

    sched = official_lcm_scheduler()
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(7)
    x, denoised = noise, None
    handle = _record_inputs(student, theirs)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = student(torch.cat([x, cond], dim=1), t, batch["audio_embeds"], w)
            x, denoised = sched.step(eps, t, x, generator=g, return_dict=False)
    handle.remove()

    assert len(ours) == len(theirs) == steps  # one student call per step, batch B (no CFG branch)
    for (s_ours, t_ours), (s_theirs, t_theirs) in zip(ours, theirs):
        assert s_ours.shape[0] == B and int(t_ours) == int(t_theirs)
        assert rel_err(s_ours, s_theirs) < 1e-5
    assert rel_err(x0, denoised) < 1e-5


def test_sample_lcm_renoise_structure_and_purity():
    """A frame-wise fake model: frames stay identical with shared re-noising, not with per-frame."""
    fake = lambda sample, t, audio, w: 0.5 * sample[:, :4]  # noqa: E731
    b, f = 1, 3
    g = torch.Generator().manual_seed(0)
    frame = lambda c: torch.randn(b, c, 1, 4, 4, generator=g).repeat(1, 1, f, 1, 1)  # noqa: E731
    noise, mask, masked, ref = frame(4), torch.ones(b, 1, f, 4, 4), frame(4), frame(4)
    audio = torch.zeros(b, f, 50, 384)
    ts = lcm_timesteps(4)

    def run(mode, seed=1):
        return sample_lcm(StudentDenoiser(fake), ts, noise, mask, masked, ref, audio,
                          generator=torch.Generator().manual_seed(seed), renoise=mode)  # fmt: skip

    shared = run("shared")
    assert torch.equal(shared[:, :, 0], shared[:, :, 1]) and torch.equal(shared[:, :, 1], shared[:, :, 2])
    per_frame = run("per_frame")
    assert not torch.allclose(per_frame[:, :, 0], per_frame[:, :, 1])
    assert torch.equal(run("per_frame"), per_frame)  # pure: same inputs and seed, same output
    assert not torch.equal(run("per_frame", seed=2), per_frame)
    with pytest.raises(ValueError, match="mask"):
        sample_lcm(StudentDenoiser(fake), ts, noise, mask[:, :, :2], masked, ref, audio)


def test_sample_lcm_deterministic_renoise_closed_forms():
    """"initial" re-noises with the starting noise; "ddim" is an eta = 0 DDIM jump on the student's output."""
    from teacher.sampler import ddim_step

    g = torch.Generator().manual_seed(0)
    b, f, hw = 2, 3, 4
    noise, masked, ref = (torch.randn(b, 4, f, hw, hw, generator=g) for _ in range(3))
    mask, audio = torch.ones(b, 1, f, hw, hw), torch.zeros(b, f, 50, 384)
    eps_of = lambda x: torch.tanh(x) + 0.1 * x.roll(1, dims=-1)  # noqa: E731 (a frame-mixing fake model)
    calls = []

    def fake(sample, t, audio_embeds, w):
        calls.append((sample[:, :4].clone(), int(t)))
        return eps_of(sample[:, :4])

    acp = alphas_cumprod()
    ts = lcm_timesteps(2)  # [999, 499]
    for mode in ("initial", "ddim"):
        calls.clear()
        with torch.no_grad():
            sample_lcm(StudentDenoiser(fake), ts, noise, mask, masked, ref, audio, renoise=mode,
                       generator=torch.Generator())
        x0 = consistency_x0(eps_of(noise), noise, ts[0], acp)
        if mode == "initial":
            expected = acp[499].sqrt() * x0 + (1 - acp[499]).sqrt() * noise
        else:  # c_skip(999) ~ 2.5e-8: the DDIM step of the teacher's sampler
            expected = ddim_step(eps_of(noise), noise, acp[999], acp[499])
        assert [t for _, t in calls] == [999, 499]
        assert rel_err(calls[1][0], expected.float()) < 1e-5, mode
    # no generator involved: the same output for any seed
    runs = [sample_lcm(StudentDenoiser(fake), lcm_timesteps(4), noise, mask, masked, ref, audio, renoise="ddim",
                       generator=torch.Generator().manual_seed(s)) for s in (1, 2)]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="renoise"):
        sample_lcm(StudentDenoiser(fake), ts, noise, mask, masked, ref, audio, renoise="fresh")
    with pytest.raises(TypeError, match="denoiser settings"):
        sample_lcm(fake, ts, noise, mask, masked, ref, audio)  # a bare network has no boundary scalings


def test_student_denoiser_is_the_consistency_function(student):
    """StudentDenoiser(net, settings)(x_t, t, cond, audio, w) = c_skip x_t + c_out x0_pred(net(...)) with the
    settings' scalings, which a StudentUNet carries (from its training config or its export)."""
    from student.denoiser import DenoiserSettings, as_denoiser

    batch = tiny_batch()
    cond = torch.cat([batch["mask"], batch["masked_latents"], batch["ref_latents"]], dim=1)
    x_t, t = batch["latents"], torch.tensor([1, 2])  # small t: where c_skip is not negligible
    settings = DenoiserSettings(sigma_data=0.3, timestep_scaling=4.0)
    acp = alphas_cumprod()
    with torch.no_grad():
        eps = student(torch.cat([x_t, cond], dim=1), t, batch["audio_embeds"], 1.5)
        x0 = StudentDenoiser(student, settings)(x_t, t, cond, batch["audio_embeds"], 1.5)
        expected = consistency_x0(eps, x_t, t, acp, sigma_data=0.3, timestep_scaling=4.0)
        assert rel_err(x0, expected) < 1e-6
        assert rel_err(x0, consistency_x0(eps, x_t, t, acp)) > 1e-4  # the settings matter
        before, student.denoiser_settings = student.denoiser_settings, settings
        try:
            assert as_denoiser(student).settings == settings
            assert rel_err(as_denoiser(student)(x_t, t, cond, batch["audio_embeds"], 1.5), expected) < 1e-6
        finally:
            student.denoiser_settings = before
