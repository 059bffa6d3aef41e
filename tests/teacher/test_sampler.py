"""Math units for the teacher's guided DDIM sampler, checked against diffusers' DDIMScheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from teacher.sampler import (
    OFFICIAL_SCHEDULER_CONFIG,
    alphas_cumprod,
    ddim_step,
    ddim_timesteps,
    guided_eps,
    make_ddim_scheduler,
    predict_x0,
    sample_ddim,
)

# LatentSync configs/scheduler_config.json, written out independently of teacher.sampler.
OFFICIAL_JSON = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
    "skip_prk_steps": True,
}

B, F, H, W = 2, 3, 4, 4


def reference_scheduler(spacing: str = "leading") -> DDIMScheduler:
    cfg = {k: v for k, v in OFFICIAL_JSON.items() if k not in ("_class_name", "skip_prk_steps")}
    return DDIMScheduler(**cfg, timestep_spacing=spacing)


# ------------------------------------------------------------------ schedule
def test_official_config_and_alphas_closed_form():
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample",
                "set_alpha_to_one", "steps_offset"):  # fmt: skip
        assert OFFICIAL_SCHEDULER_CONFIG[key] == OFFICIAL_JSON[key]
    assert OFFICIAL_SCHEDULER_CONFIG["prediction_type"] == "epsilon"
    sched = make_ddim_scheduler()
    assert sched.config.timestep_spacing == "leading" and sched.config.prediction_type == "epsilon"
    # scaled_linear: beta = linspace(sqrt(b0), sqrt(b1), T)^2, alpha_bar = cumprod(1 - beta)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0)
    acp = alphas_cumprod()
    assert acp.shape == (1000,) and acp.dtype == torch.float32
    torch.testing.assert_close(acp.double(), expected, rtol=1e-5, atol=1e-7)
    assert sched.final_alpha_cumprod == acp[0]  # set_alpha_to_one = false


def test_make_ddim_scheduler_accepts_raw_json_and_rejects_unknown_keys():
    sched = make_ddim_scheduler(OFFICIAL_JSON, timestep_spacing="trailing")
    assert sched.config.timestep_spacing == "trailing" and sched.config.steps_offset == 1
    torch.testing.assert_close(sched.alphas_cumprod, alphas_cumprod(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="guidance"):
        make_ddim_scheduler(guidance=1.5)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 20, 25, 50, 1000])
def test_ddim_timesteps_match_diffusers(spacing, n):
    sched = reference_scheduler(spacing)
    sched.set_timesteps(n)
    ts = ddim_timesteps(n, spacing)
    assert ts.dtype == torch.long
    assert torch.equal(ts, sched.timesteps)


def test_ddim_timesteps_known_values():
    assert ddim_timesteps(20).tolist() == list(range(951, 0, -50))
    assert ddim_timesteps(1).tolist() == [1]  # why few-step baselines need "trailing"
    assert ddim_timesteps(1, "trailing").tolist() == [999]
    assert ddim_timesteps(2, "trailing").tolist() == [999, 499]
    assert ddim_timesteps(4, "trailing").tolist() == [999, 749, 499, 249]
    with pytest.raises(ValueError):
        ddim_timesteps(4, "karras")
    with pytest.raises(ValueError):
        ddim_timesteps(0)


# ------------------------------------------------------------------ formulas
def test_predict_x0_and_ddim_step_closed_form():
    g = torch.Generator().manual_seed(0)
    eps, x_t = torch.randn(2, B, 4, F, H, W, generator=g, dtype=torch.float64)
    a_t, a_prev = 0.3, 0.7
    x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    torch.testing.assert_close(predict_x0(eps, x_t, a_t), x0)
    torch.testing.assert_close(ddim_step(eps, x_t, a_t, a_prev), a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps)
    # x_t built from a known x0 and eps is inverted exactly
    x0_true = torch.randn(B, 4, F, H, W, generator=g, dtype=torch.float64)
    torch.testing.assert_close(predict_x0(eps, a_t**0.5 * x0_true + (1 - a_t) ** 0.5 * eps, a_t), x0_true)
    # alpha_bar_prev = 1 lands on x0; alpha_bar_prev = alpha_bar_t is the identity
    torch.testing.assert_close(ddim_step(eps, x_t, a_t, 1.0), x0)
    torch.testing.assert_close(ddim_step(eps, x_t, a_t, a_t), x_t)


def test_ddim_step_per_sample_alphas():
    g = torch.Generator().manual_seed(1)
    eps, x_t = torch.randn(2, B, 4, F, H, W, generator=g)
    a_t = torch.tensor([0.2, 0.6]).view(B, 1, 1, 1, 1)
    a_prev = torch.tensor([0.5, 0.9]).view(B, 1, 1, 1, 1)
    out = ddim_step(eps, x_t, a_t, a_prev)
    for b in range(B):
        ref = ddim_step(eps[b : b + 1], x_t[b : b + 1], float(a_t[b]), float(a_prev[b]))
        torch.testing.assert_close(out[b : b + 1], ref)
        torch.testing.assert_close(predict_x0(eps, x_t, a_t)[b : b + 1],
                                   predict_x0(eps[b : b + 1], x_t[b : b + 1], float(a_t[b])))  # fmt: skip


@pytest.mark.parametrize(("n", "spacing"), [(20, "leading"), (4, "trailing"), (1, "trailing")])
def test_ddim_step_matches_diffusers_step(n, spacing):
    sched = reference_scheduler(spacing)
    sched.set_timesteps(n)
    acp = alphas_cumprod()
    ts = ddim_timesteps(n, spacing)
    g = torch.Generator().manual_seed(2)
    for i, t in enumerate(ts):
        eps, x_t = torch.randn(2, B, 4, F, H, W, generator=g)
        ref = sched.step(eps, t, x_t, eta=0.0).prev_sample
        a_prev = acp[ts[i + 1]] if i + 1 < len(ts) else acp[0]
        torch.testing.assert_close(ddim_step(eps, x_t, acp[t], a_prev), ref, rtol=0, atol=1e-6)
        ref_x0 = sched.step(eps, t, x_t, eta=0.0).pred_original_sample
        torch.testing.assert_close(predict_x0(eps, x_t, acp[t]), ref_x0, rtol=0, atol=1e-6)


def test_guided_eps_closed_form():
    g = torch.Generator().manual_seed(3)
    eu, ec = torch.randn(2, B, 4, F, H, W, generator=g)
    torch.testing.assert_close(guided_eps(eu, ec, 1.0), ec)
    torch.testing.assert_close(guided_eps(eu, ec, 0.0), eu)
    torch.testing.assert_close(guided_eps(eu, ec, 1.5), eu + 1.5 * (ec - eu))
    w = torch.tensor([1.0, 2.0]).view(B, 1, 1, 1, 1)
    torch.testing.assert_close(guided_eps(eu, ec, w)[1], eu[1] + 2.0 * (ec[1] - eu[1]))


# ------------------------------------------------------------------ sampler
class FakeUNet:
    """Deterministic stand-in: a fixed 1x1x1 'conv' over the 13 channels plus audio and t terms.

    Records every call's (sample shape, t, audio) for inspection.
    """

    def __init__(self, seed: int = 0, wrap: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(4, 13, generator=g) * 0.3
        self.audio_gain = torch.randn(4, generator=g)
        self.wrap = wrap
        self.calls: list[tuple[tuple[int, ...], int, torch.Tensor]] = []

    def __call__(self, sample, t, audio_embeds):
        self.calls.append((tuple(sample.shape), int(t), audio_embeds.clone()))
        eps = torch.einsum("oc,bcfhw->bofhw", self.weight.to(sample.dtype), sample)
        audio = audio_embeds.float().mean(dim=(2, 3)).to(sample.dtype)  # [B', F]
        eps = eps + self.audio_gain.to(sample.dtype).view(1, 4, 1, 1, 1) * audio[:, None, :, None, None]
        eps = eps + torch.sin(torch.as_tensor(t, dtype=sample.dtype) / 100.0)
        if self.wrap:
            return type("Out", (), {"sample": eps})()
        return eps


def make_inputs(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, 4, 1, H, W, generator=g).repeat(1, 1, F, 1, 1)  # one frame, repeated
    mask = (torch.rand(B, 1, F, H, W, generator=g) > 0.5).float()
    masked = torch.randn(B, 4, F, H, W, generator=g)
    ref = torch.randn(B, 4, F, H, W, generator=g)
    audio = torch.randn(B, F, 50, 384, generator=g)
    return [x.to(dtype) for x in (noise, mask, masked, ref, audio)]


def reference_loop(unet, n, spacing, noise, mask, masked, ref, audio, w):
    """The official pipeline's loop, written with diffusers' DDIMScheduler."""
    sched = reference_scheduler(spacing)
    sched.set_timesteps(n)
    cfg = w > 1.0
    if cfg:
        audio = torch.cat([torch.zeros_like(audio), audio])
        mask, masked, ref = (torch.cat([x] * 2) for x in (mask, masked, ref))
    latents = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        unet_input = torch.cat([latents] * 2) if cfg else latents
        unet_input = sched.scale_model_input(unet_input, t)
        unet_input = torch.cat([unet_input, mask, masked, ref], dim=1)
        noise_pred = unet(unet_input, t, audio)
        if cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + w * (cond - uncond)
        latents = sched.step(noise_pred, t, latents, eta=0.0).prev_sample
    return latents


@pytest.mark.parametrize(
    ("n", "spacing", "w"),
    [(20, "leading", 1.5), (1, "trailing", 1.5), (2, "trailing", 1.5), (4, "trailing", 1.5),
     (4, "trailing", 1.0), (10, "leading", 2.0)],
)  # fmt: skip
def test_sample_ddim_matches_diffusers_loop(n, spacing, w):
    inputs = make_inputs()
    unet = FakeUNet()
    out = sample_ddim(unet, ddim_timesteps(n, spacing), *inputs, w=w)
    ref = reference_loop(FakeUNet(), n, spacing, *inputs, w)
    assert out.shape == (B, 4, F, H, W)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert len(unet.calls) == n
    assert [c[1] for c in unet.calls] == ddim_timesteps(n, spacing).tolist()


def test_uncond_half_gets_zero_audio():
    noise, mask, masked, ref, audio = make_inputs(1)
    unet = FakeUNet()
    sample_ddim(unet, ddim_timesteps(3, "trailing"), noise, mask, masked, ref, audio, w=1.5)
    assert len(unet.calls) == 3
    for shape, _, a in unet.calls:
        assert shape == (2 * B, 13, F, H, W)
        assert torch.count_nonzero(a[:B]) == 0
        assert torch.equal(a[B:], audio)


def test_no_guidance_is_one_conditional_call_per_step():
    noise, mask, masked, ref, audio = make_inputs(2)
    unet = FakeUNet()
    sample_ddim(unet, ddim_timesteps(5), noise, mask, masked, ref, audio, w=1.0)
    assert len(unet.calls) == 5
    for shape, _, a in unet.calls:
        assert shape == (B, 13, F, H, W)
        assert torch.equal(a, audio)


def test_unet_output_with_sample_attribute_and_tensor_agree():
    inputs = make_inputs(3)
    ts = ddim_timesteps(4, "trailing")
    a = sample_ddim(FakeUNet(), ts, *inputs)
    b = sample_ddim(FakeUNet(wrap=True), ts, *inputs)
    assert torch.equal(a, b)


def test_final_alpha_override_one_step_returns_x0():
    noise, mask, masked, ref, audio = make_inputs(4)
    unet = FakeUNet()
    out = sample_ddim(unet, [999], noise, mask, masked, ref, audio, w=1.0,
                      final_alpha_cumprod=1.0)  # fmt: skip
    x_in = torch.cat([noise, mask, masked, ref], dim=1)
    eps = FakeUNet()(x_in, torch.tensor(999), audio)
    torch.testing.assert_close(out, predict_x0(eps, noise, alphas_cumprod()[999]))


def test_custom_alphas_and_dtype_preserved():
    inputs = make_inputs(5, dtype=torch.bfloat16)
    acp = torch.linspace(0.999, 0.01, 1000)
    out = sample_ddim(FakeUNet(), ddim_timesteps(2, "trailing"), *inputs, alphas_cumprod=acp)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_sample_ddim_shape_errors():
    noise, mask, masked, ref, audio = make_inputs(6)
    ts = ddim_timesteps(2, "trailing")
    with pytest.raises(ValueError, match="mask"):
        sample_ddim(FakeUNet(), ts, noise, masked, masked, ref, audio)
    with pytest.raises(ValueError, match="audio_embeds"):
        sample_ddim(FakeUNet(), ts, noise, mask, masked, ref, audio[:, :2])
    with pytest.raises(ValueError, match="noise"):
        sample_ddim(FakeUNet(), ts, noise[0], mask, masked, ref, audio)


def test_guided_teacher_builds_the_2x_batch_once():
    """GuidedTeacher: unconditional half first with all-zero audio, then eps_u + w (eps_c - eps_u); a [B] w
    applies per sample and a [B] t is doubled; w = 1 runs the conditional branch alone."""
    from teacher.sampler import GuidedTeacher

    calls = []

    def unet(sample, t, audio):
        calls.append((sample.clone(), t.clone(), audio.clone()))
        return sample[:, :4] * (1 + audio.mean(dim=(1, 2, 3))).view(-1, 1, 1, 1, 1)

    g = torch.Generator().manual_seed(0)
    x_t, cond = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 9, 3, 4, 4, generator=g)
    audio = torch.rand(2, 3, 50, 384, generator=g)
    eps_c = x_t * (1 + audio.mean(dim=(1, 2, 3))).view(-1, 1, 1, 1, 1)
    out = GuidedTeacher(unet)(x_t, torch.tensor(999), cond, audio, 1.5)
    (sample, t, a), = calls
    assert sample.shape[0] == 4 and torch.equal(a[:2], torch.zeros_like(audio)) and torch.equal(a[2:], audio)
    assert torch.equal(sample[:2], sample[2:]) and torch.equal(sample[:2, 4:], cond) and t.ndim == 0
    torch.testing.assert_close(out, x_t + 1.5 * (eps_c - x_t))
    calls.clear()
    w = torch.tensor([1.0, 2.0])
    out = GuidedTeacher(unet)(x_t, torch.tensor([999, 19]), cond, audio, w)
    assert calls[0][1].tolist() == [999, 19, 999, 19]
    torch.testing.assert_close(out, x_t + w.view(-1, 1, 1, 1, 1) * (eps_c - x_t))
    calls.clear()
    torch.testing.assert_close(GuidedTeacher(unet)(x_t, torch.tensor(5), cond, audio, 1.0), eps_c)
    assert len(calls) == 1 and calls[0][0].shape[0] == 2


def test_repeated_noise_is_one_frame():
    from teacher.sampler import repeated_noise

    n = repeated_noise((2, 4, 5, 3, 3), torch.Generator().manual_seed(1))
    first = torch.randn(2, 4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    assert n.shape == (2, 4, 5, 3, 3) and all(torch.equal(n[:, :, i : i + 1], first) for i in range(5))
