"""The LCD step: gradients only where they belong, the teacher's guided DDIM target, noise modes,
losses built once from the config and wired to the step's tensors (frames decoded once), the EMA target, and a tiny
run whose loss goes down. The losses' closed forms are in tests/losses."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

import configs
from distill.step import (
    AuxTerm,
    StepLosses,
    build_losses,
    distill_step,
    ema_update,
    make_target,
    step_weights,
)
from losses.consistency import L2, PseudoHuber
from losses.reconstruction import LatentReconstruction
from student.model import StudentUNet
from teacher.sampler import alphas_cumprod
from tests.student import B, rel_err, tiny_batch, tiny_teacher

RECON = {"loss": {"_target_": "losses.reconstruction.LatentReconstruction", "power": 2, "mouth_weight": 4.0}}
CFG = {"weights": {"recon": 0.5}, "aux": {"recon": RECON}}


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


@pytest.fixture()
def student(teacher):
    return StudentUNet.from_teacher(teacher)


@pytest.fixture(scope="module")
def batch():
    return tiny_batch()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Spy:
    """Records (args, output) of every forward call of a module."""

    def __init__(self, module):
        self.module = module
        self.calls = []
        self._pending = None
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def remove(self):
        for h in self.handles:
            h.remove()

    def _pre(self, module, args):
        self._pending = [a.detach().clone() if torch.is_tensor(a) else a for a in args]

    def _post(self, module, args, output):
        self.calls.append((self._pending, output.detach().clone()))


# ------------------------------------------------------------------ gradients
def test_finite_loss_and_gradients_only_on_the_student(teacher, student, batch):
    target = make_target(student, {})
    assert target is not student and not any(p.requires_grad for p in target.parameters())
    out = distill_step(student, target, teacher, batch, OmegaConf.create(CFG), generator=_gen())
    assert set(out) == {"loss", "consistency", "recon", "recon_weight", "t_mean", "w_mean"}
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    assert 19 <= out["t_mean"].item() <= 999 and 1.0 <= out["w_mean"].item() <= 2.0
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in target.parameters())
    missing = [n for n, p in student.named_parameters() if p.grad is None]
    assert not missing, missing
    assert student.guidance_embedding.linear.weight.grad.abs().sum() > 0


def test_lora_student_with_online_target(teacher, batch):
    student = StudentUNet.from_teacher(teacher, lora={"rank": 4})
    target = make_target(student, {"target": "auto"})
    assert target is student
    out = distill_step(student, target, teacher, batch, CFG, generator=_gen())
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    for name, p in student.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        assert p.requires_grad == ("lora_" in name or name.startswith("guidance_embedding.")), name


def test_unfrozen_teacher_is_refused(student, batch):
    loose = tiny_teacher().requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        distill_step(student, student, loose, batch, CFG)


# ------------------------------------------------------------------ what the networks receive
def test_teacher_guided_ddim_target(teacher, student, batch):
    """Unconditional half gets zero audio; the target's x_s is one hand-computed guided DDIM step."""
    target = make_target(student, {})
    spies = {name: Spy(m) for name, m in (("teacher", teacher), ("student", student), ("target", target))}
    distill_step(student, target, teacher, batch, {"noise": "per_frame"}, generator=_gen(1))
    for spy in spies.values():
        spy.remove()
    assert len(spies["teacher"].calls) == 1  # one 2B call
    [(t_args, _)] = spies["teacher"].calls
    assert len(spies["student"].calls) == len(spies["target"].calls) == 1
    (s_args, _), (g_args, _) = spies["student"].calls[0], spies["target"].calls[0]
    sample2, t2, audio2 = t_args
    assert sample2.shape[0] == 2 * B
    assert torch.all(audio2[:B] == 0) and torch.equal(audio2[B:], batch["audio_embeds"])
    assert torch.equal(sample2[:B], sample2[B:]) and torch.equal(t2[:B], t2[B:])
    x_t, t, w = s_args[0][:, :4], s_args[1], s_args[3]
    assert torch.equal(sample2[:B], s_args[0]) and torch.equal(t2[:B], t)  # same x_t, t as the student
    assert torch.equal(g_args[3], w) and torch.all((w >= 1.0) & (w <= 2.0))  # target and teacher use the same w
    assert torch.equal(s_args[0][:, 4:], g_args[0][:, 4:])  # same conditioning
    assert set(t.tolist()) <= set(range(19, 1000, 20))
    s = g_args[1]
    assert torch.equal(s, (t - 20).clamp(min=0))

    acp = alphas_cumprod().double()
    for i in range(B):
        with torch.no_grad():  # separate, unbatched teacher calls
            e_u = teacher(s_args[0][i : i + 1], t[i : i + 1], torch.zeros_like(batch["audio_embeds"][i : i + 1]))
            e_c = teacher(s_args[0][i : i + 1], t[i : i + 1], batch["audio_embeds"][i : i + 1])
        eps = (e_u + w[i] * (e_c - e_u)).double()
        a_t, a_s = acp[t[i]], acp[s[i]]
        x0 = (x_t[i : i + 1].double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
        assert rel_err(g_args[0][i : i + 1, :4].double(), x_s) < 1e-5


@pytest.mark.parametrize("mode", ["shared", "per_frame", "mixed"])
def test_noise_modes_inside_the_step(teacher, student, mode):
    """eps recovered from x_t = sqrt(ab) x0 + sqrt(1 - ab) eps has the mode's structure over frames."""
    batch = tiny_batch(b=8, f=3, hw=8)
    spy = Spy(student)
    distill_step(student, student, teacher, batch, {"noise": mode}, generator=_gen(2))
    args = spy.calls[0][0]  # the student's call (the online target's call comes second)
    x_t, t = args[0][:, :4].double(), args[1]
    ab = alphas_cumprod().double()[t].view(-1, 1, 1, 1, 1)
    eps = (x_t - ab.sqrt() * batch["latents"].double()) / (1 - ab).sqrt()
    same = torch.allclose(eps[:, :, 0], eps[:, :, 1], atol=1e-4) and torch.allclose(eps[:, :, 1], eps[:, :, 2],
                                                                                    atol=1e-4)  # fmt: skip
    assert same == (mode == "shared")
    corr = torch.corrcoef(torch.stack([eps[:, :, 0].flatten(), eps[:, :, 2].flatten()]))[0, 1].item()
    assert corr == pytest.approx({"shared": 1.0, "per_frame": 0.0, "mixed": 0.5}[mode], abs=0.1)


# ------------------------------------------------------------------ losses
def test_build_losses_from_the_presets():
    for preset, mouth in (("distill/tiny", 1.0), ("distill/toy", 4.0)):
        cfg = configs.load(preset).distill
        losses = build_losses(cfg)
        assert isinstance(losses.consistency, PseudoHuber) and losses.consistency.c == 0.001
        recon = losses.aux["recon"]
        assert isinstance(recon.loss, LatentReconstruction) and recon.loss.mouth_weight == mouth
        assert recon.inputs == {"x0": "x0", "latents": "latents", "mask": "mask"}
        assert recon.required == ("x0", "latents", "mask")
        assert set(losses.aux) <= set(cfg.weights)  # every term has its weight
    assert configs.load("distill/tiny").distill.weights.recon == 1.0  # LatentSync's stage-2 recon weight
    off = build_losses(configs.load("distill/tiny", ["distill.aux.recon=null"]).distill)
    assert off.aux == {}
    default = build_losses(None)
    assert isinstance(default.consistency, PseudoHuber) and default.consistency.c == 0.001 and default.aux == {}
    # issue 13's presets train the relative sync reward; one override returns LatentSync's absolute form
    relative = build_losses(configs.load("distill/losses_sync").distill).aux["sync"]
    assert relative.inputs["real_frames"] == "frames" and "real_frames" in relative.required
    absolute = build_losses(configs.load("distill/losses_sync", ["distill.aux.sync.inputs.real_frames=null"]).distill)
    assert "real_frames" not in absolute.aux["sync"].inputs


def test_consistency_and_recon_go_through_the_built_losses(teacher, student, batch):
    """The step's numbers are the losses' own: the distance on (student x0, target x0), the reported recon
    term and its weight."""
    recon = LatentReconstruction(2, mouth_weight=4.0)
    spy = Spy(student)  # online target: the student's call, then the target's
    plain = distill_step(student, student, teacher, batch, {}, StepLosses(L2()), generator=_gen(4))
    spy.remove()
    x0, x0_target = student_x0(spy, batch, 0), student_x0(spy, batch, 1)
    assert set(plain) == {"loss", "consistency", "t_mean", "w_mean"}
    torch.testing.assert_close(plain["consistency"], L2()(x0, x0_target).mean())
    huber = distill_step(student, student, teacher, batch, {}, StepLosses(PseudoHuber(0.01)), generator=_gen(4))
    torch.testing.assert_close(huber["consistency"], PseudoHuber(0.01)(x0, x0_target).mean())
    aux = {"recon": AuxTerm.of(recon)}
    out = distill_step(student, student, teacher, batch, {"weights": {"recon": 2.0}}, StepLosses(L2(), aux),
                       generator=_gen(4))  # fmt: skip
    torch.testing.assert_close(out["consistency"], plain["consistency"])
    torch.testing.assert_close(out["recon"], recon(x0, batch["latents"], batch["mask"]).mean())
    torch.testing.assert_close(out["loss"], plain["loss"] + 2.0 * out["recon"])
    l2_cfg = {**CFG, "consistency": {"_target_": "losses.consistency.L2"}}
    from_cfg = distill_step(student, student, teacher, batch, l2_cfg, generator=_gen(4))  # one-off build from cfg
    torch.testing.assert_close(from_cfg["recon"], out["recon"])
    torch.testing.assert_close(from_cfg["loss"], plain["loss"] + 0.5 * out["recon"])


def student_x0(spy: Spy, batch, call: int = 0) -> torch.Tensor:
    """x0 recomputed from a recorded call of the student (same inputs, unchanged weights)."""
    from student.denoiser import DenoiserSettings, StudentDenoiser

    args, _ = spy.calls[call]
    x_t, t, cond, w = args[0][:, :4], args[1], args[0][:, 4:], args[3]
    with torch.no_grad():
        return StudentDenoiser(spy.module, DenoiserSettings.from_mapping({}), alphas_cumprod())(
            x_t, t, cond, batch["audio_embeds"], w
        )


def test_auxiliary_losses_are_weighted_and_checked(teacher, student, batch):
    cfg = {"weights": {"sync": 0.5}}

    def sync(x0):
        return torch.tensor([1.0, 3.0])

    plain = distill_step(student, student, teacher, batch, {}, StepLosses(L2()), generator=_gen(4))
    with_aux = distill_step(student, student, teacher, batch, cfg, StepLosses(L2(), {"sync": AuxTerm.of(sync)}),
                            generator=_gen(4))  # fmt: skip
    assert with_aux["sync"].item() == 2.0
    torch.testing.assert_close(with_aux["consistency"], plain["consistency"])
    torch.testing.assert_close(with_aux["loss"], plain["loss"] + 0.5 * 2.0)
    with pytest.raises(KeyError, match="no weight"):
        distill_step(student, student, teacher, batch, {}, StepLosses(L2(), {"sync": AuxTerm.of(sync)}))
    bad = StepLosses(L2(), {"sync": AuxTerm.of(lambda x0: torch.tensor(1.0))})
    with pytest.raises(ValueError, match="one value per sample"):
        distill_step(student, student, teacher, batch, cfg, bad, generator=_gen(4))
    unknown = StepLosses(L2(), {"sync": AuxTerm.of(lambda x0, mel: x0.flatten(1).mean(1))})
    with pytest.raises(KeyError, match="takes \\{'mel': 'mel'\\}"):
        distill_step(student, student, teacher, batch, cfg, unknown, generator=_gen(4))
    # an optional parameter is passed when its tensor exists and skipped when not, unless the config names it:
    # a named input the step does not have fails (the recipe once dropped mel_negatives from the batch and the
    # "candidates" reward trained as the absolute one without a word)
    def extra(x0, mel_negatives=None):
        return x0.flatten(1).mean(1) * (1.0 if mel_negatives is None else 2.0)

    assert AuxTerm.of(extra).required == ("x0",)
    distill_step(student, student, teacher, batch, cfg,
                 StepLosses(L2(), {"sync": AuxTerm.of(extra)}), generator=_gen(4))  # fmt: skip
    named = StepLosses(L2(), {"sync": AuxTerm.of(extra, {"mel_negatives": "mel_negatives"})})
    with pytest.raises(KeyError, match="takes \\{'mel_negatives': 'mel_negatives'\\}"):
        distill_step(student, student, teacher, batch, cfg, named, generator=_gen(4))
    # an input mapped to None is switched off: never passed, even when the step has the tensor
    off = AuxTerm.of(extra, {"mel_negatives": None})
    assert off.required == ("x0",) and dict(off.inputs) == {"x0": "x0"}
    seen = []
    spy = AuxTerm.of(lambda x0, mask=None: seen.append(mask) or x0.flatten(1).mean(1), {"mask": None})
    distill_step(student, student, teacher, batch, cfg, StepLosses(L2(), {"sync": spy}), generator=_gen(4))
    assert "mask" in batch and seen == [None]
    with pytest.raises(TypeError, match="cannot be switched off"):
        AuxTerm.of(extra, {"x0": None})
    with pytest.raises(TypeError, match="name its inputs"):
        AuxTerm.of(lambda *tensors: tensors[0])
    with pytest.raises(TypeError, match="not parameters"):
        AuxTerm.of(sync, {"frames": "x0_frames"})
    with pytest.raises(ValueError, match="step's own"):
        distill_step(student, student, teacher, {**batch, "x0": batch["latents"]}, cfg,
                     StepLosses(L2(), {"sync": AuxTerm.of(sync)}), generator=_gen(4))  # fmt: skip
    with pytest.raises(ValueError, match="loss: <_target_ node>"):
        build_losses({"aux": {"recon": RECON["loss"]}})  # a bare loss node, not {loss, inputs}


class FrameMean(torch.nn.Module):
    """A stand-in pixel loss (a module, as a SyncNet-based loss may be): scale * mean of frames; [B]."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, frames: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * frames.flatten(1).mean(1)


def test_frames_are_decoded_once_for_every_pixel_loss(teacher, student, batch):
    calls = []

    def decode(z):  # [B, 4, F, h, w] -> [B, 3, F, 2h, 2w], differentiable
        calls.append(z.detach().clone())
        return torch.nn.functional.interpolate(z[:, :3], scale_factor=(1, 2, 2))

    aux = {
        "a": AuxTerm.of(FrameMean(1.0), {"frames": "x0_frames"}),
        "b": AuxTerm.of(FrameMean(3.0), {"frames": "x0_frames"}),
        "recon": AuxTerm.of(LatentReconstruction()),
    }
    cfg = {"weights": {"a": 1.0, "b": 0.0, "recon": 0.0}}
    losses = StepLosses(L2(), aux)
    spy = Spy(student)
    out = distill_step(student, student, teacher, batch, cfg, losses, generator=_gen(6), decode=decode)
    spy.remove()
    assert len(calls) == 1  # one decode, two pixel losses
    x0 = student_x0(spy, batch)
    torch.testing.assert_close(calls[0], x0)
    want = decode(x0).flatten(1).mean(1).mean()
    torch.testing.assert_close(out["a"], want)
    torch.testing.assert_close(out["b"], 3.0 * want)
    out["loss"].backward()  # the weighted pixel term carries gradient back through decode into the student
    assert student.guidance_embedding.linear.weight.grad.abs().sum() > 0
    real = {**batch, "frames": torch.full((B, 3, *batch["latents"].shape[2:]), 7.0)}  # real frames in the batch
    by_name = StepLosses(L2(), {"a": AuxTerm.of(FrameMean(1.0)), "b": aux["b"], "recon": aux["recon"]})
    mixed = distill_step(student, student, teacher, real, cfg, by_name, generator=_gen(6), decode=decode)
    assert mixed["a"].item() == 7.0  # un-renamed "frames" are the batch's real frames
    torch.testing.assert_close(mixed["b"].detach(), out["b"].detach())
    with pytest.raises(ValueError, match="take x0_frames"):
        distill_step(student, student, teacher, batch, cfg, losses, generator=_gen(6))
    calls.clear()
    latent_only = StepLosses(L2(), {"recon": aux["recon"]})
    distill_step(student, student, teacher, batch, cfg, latent_only, generator=_gen(6), decode=decode)
    assert calls == []  # no pixel loss: nothing decoded


# ------------------------------------------------------------------ target network
def test_ema_update_closed_form(teacher, student):
    target = make_target(student, {"target": "ema"})
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1)
    name = "guidance_embedding.linear.bias"
    before_t = dict(target.named_parameters())[name].clone()
    s_val = dict(student.named_parameters())[name].clone()
    ema_update(target, student, decay=0.9)
    torch.testing.assert_close(dict(target.named_parameters())[name], 0.9 * before_t + 0.1 * s_val)
    ema_update(target, student, decay=0.0)
    t_state, s_state = target.state_dict(), student.state_dict()
    assert all(torch.equal(t_state[k], s_state[k]) for k in s_state)
    ema_update(student, student, decay=0.5)  # online target: a no-op
    assert all(torch.equal(v, s_state[k]) for k, v in student.state_dict().items())
    with pytest.raises(ValueError):
        make_target(student, {"target": "swa"})


# ------------------------------------------------------------------ a tiny run
def test_tiny_run_reduces_the_consistency_loss(teacher, batch):
    """Eight Adam steps with an EMA target on one fixed draw: the consistency loss falls."""
    student = StudentUNet.from_teacher(teacher)
    target = make_target(student, {})
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=3e-5)
    losses = []
    for _ in range(8):
        out = distill_step(student, target, teacher, batch, {"noise": "mixed"}, generator=_gen(5))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        ema_update(target, student, decay=0.95)
        losses.append(out["consistency"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 0.036 -> 0.009


# ------------------------------------------------------------------ trajectory anchor
def test_teacher_trajectory_is_the_teachers_trailing_ddim(teacher, batch):
    from distill.step import teacher_trajectory
    from teacher.sampler import ddim_timesteps, sample_ddim

    x = torch.randn(B, 4, *batch["latents"].shape[2:], generator=_gen(3))
    cond = torch.cat([batch["mask"], batch["masked_latents"], batch["ref_latents"]], dim=1)
    acp = alphas_cumprod()
    got = teacher_trajectory(teacher, x, cond, batch["audio_embeds"], 999, 4, torch.full((B,), 1.5), acp)
    with torch.no_grad():
        b = batch
        want = sample_ddim(teacher, ddim_timesteps(4, "trailing"), x, b["mask"], b["masked_latents"], b["ref_latents"],
                           b["audio_embeds"], w=1.5, alphas_cumprod=acp)  # fmt: skip
    assert rel_err(got, want) < 1e-5
    with pytest.raises(ValueError, match="starts at 999"):
        teacher_trajectory(teacher, x, cond, batch["audio_embeds"], 979, 4, torch.full((B,), 1.5), acp)


def test_anchor_term_weighted_on_the_anchored_items_only(teacher, student, batch):
    target = make_target(student, {})
    base = {"weights": {"recon": 0.0}}
    off = distill_step(student, target, teacher, batch, base, generator=_gen())
    assert "anchor" not in off
    outs = [distill_step(student, target, teacher, batch, {"weights": {"anchor": a}, "anchor": {"samples": 1}},
                         generator=_gen()) for a in (1.0, 3.0)]  # fmt: skip
    # same draws (the anchored item is forced to t = 999): the loss moves by (3 - 1) * anchor / B
    torch.testing.assert_close(outs[1]["consistency"], outs[0]["consistency"])
    assert outs[0]["anchor"] > 0 and torch.isfinite(outs[0]["anchor"])
    expected = outs[0]["loss"].detach() + 2.0 * outs[0]["anchor"] / B
    torch.testing.assert_close(outs[1]["loss"].detach(), expected, rtol=1e-5, atol=1e-7)
    outs[1]["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in target.parameters())
    # every item anchored: t_mean is exactly 999
    full = distill_step(student, target, teacher, batch, {"weights": {"anchor": 1.0}, "anchor": {"samples": B}},
                        generator=_gen())  # fmt: skip
    assert full["t_mean"].item() == 999.0


# ------------------------------------------------------------------ weight schedules, adversarial terms, 1-step items
def test_step_weights_ramp_linearly_in_one_place():
    cfg = {"weights": {"adv": 0.1, "sync": 0.05, "recon": 1.0}, "schedules": {"adv": {"warmup": 100},
                                                                               "sync": {"start": 50, "warmup": 0}}}
    assert step_weights(cfg, 0) == {"anchor": 0.0, "adv": 0.0, "sync": 0.0, "recon": 1.0}
    assert step_weights(cfg, 25)["adv"] == pytest.approx(0.025) and step_weights(cfg, 49)["sync"] == 0.0
    assert step_weights(cfg, 50)["sync"] == 0.05 and step_weights(cfg, 1000)["adv"] == pytest.approx(0.1)
    assert step_weights(cfg, None)["adv"] == 0.1  # no step: the final weights
    with pytest.raises(KeyError, match="no weight"):
        step_weights({"schedules": {"lpips": {"warmup": 3}}}, 1)


def _upsample(z):  # [B, 4, F, h, w] -> [B, 3, F, 4h, 4w], a differentiable stand-in decoder
    return torch.nn.functional.interpolate(z[:, :3], scale_factor=(1, 4, 4))


def test_adversarial_term_trains_the_generator_and_hands_d_real_and_detached_frames(teacher, student, batch):
    from losses.adversarial import LipAdversarial, MultiScalePatchGAN

    seen = {}

    class Recording(LipAdversarial):
        def discriminator_loss(self, real, fake, **context):
            seen.update(real=real.clone(), fake=fake, context=context)
            return super().discriminator_loss(real, fake, **context)

    torch.manual_seed(0)
    adv = Recording(MultiScalePatchGAN(scales=3, channels=4), r1_gamma=0.1)
    frames = torch.rand(B, 3, *batch["latents"].shape[2:3], 32, 32) * 2 - 1
    cfg = {"weights": {"adv": 0.1}, "schedules": {"adv": {"warmup": 10}}}
    losses = StepLosses(L2(), {"adv": AuxTerm.of(adv, {"frames": "x0_frames"}, real="frames")})
    spy = Spy(student)
    out = distill_step(student, student, teacher, {**batch, "frames": frames}, cfg, losses, generator=_gen(2),
                       decode=_upsample, step=5)  # fmt: skip
    spy.remove()
    assert out["adv_weight"].item() == pytest.approx(0.05)  # half-way through the warm-up
    assert torch.equal(seen["real"], frames) and not seen["fake"].requires_grad
    torch.testing.assert_close(seen["fake"], _upsample(student_x0(spy, batch)))
    assert "mask" in seen["context"] and out["disc_loss"].requires_grad and out["adv_disc"] > 0
    out["loss"].backward()
    d_params = list(adv.discriminator.parameters())
    assert all(p.grad is None for p in d_params)  # the generator loss leaves D alone
    assert student.guidance_embedding.linear.weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)
    out["disc_loss"].backward()
    assert all(p.grad is not None for p in d_params)
    assert all(p.grad is None for p in student.parameters())  # D's loss never reaches the student
    with pytest.raises(ValueError, match="needs `real`"):
        AuxTerm.of(adv, {"frames": "x0_frames"})
    with pytest.raises(KeyError, match="real tensor"):
        distill_step(student, student, teacher, batch, cfg, losses, generator=_gen(2), decode=_upsample)


def test_pixel_terms_on_the_one_step_items_only(teacher, student, batch):
    calls = []

    def decode(z):
        calls.append(z.detach().clone())
        return _upsample(z)

    cfg = {"weights": {"a": 1.0}, "pixel_items": "one_step", "anchor": {"samples": 1}}
    losses = StepLosses(L2(), {"a": AuxTerm.of(FrameMean(1.0), {"frames": "x0_frames", "latents": "latents"})})
    spy = Spy(student)
    out = distill_step(student, student, teacher, batch, cfg, losses, generator=_gen(3), decode=decode)
    spy.remove()
    x0 = student_x0(spy, batch)
    t = spy.calls[0][0][1]
    items = torch.nonzero(t == 999).flatten()
    assert 0 in items.tolist() and len(calls) == 1 and calls[0].shape[0] == len(items)  # only the 1-step items
    torch.testing.assert_close(calls[0], x0[items])
    want = _upsample(x0[items]).flatten(1).mean(1).mean()  # the term's batch mean = its mean over those items
    torch.testing.assert_close(out["a"], want)
    with pytest.raises(ValueError, match="pixel_items"):
        distill_step(student, student, teacher, batch, {**cfg, "pixel_items": "first"}, losses, generator=_gen(3),
                     decode=decode)  # fmt: skip


def test_latent_adversarial_on_frozen_teacher_features(teacher, student, batch):
    node = {"loss": {"_target_": "losses.adversarial.LatentAdversarial", "channels": [32, 32, 32], "hidden": 8},
            "inputs": {"x0": "x0"}, "real": "latents", "features": {"blocks": [0, 1], "mid": True}}  # fmt: skip
    cfg = {"weights": {"ladv": 0.1}, "aux": {"ladv": node}}
    with pytest.raises(ValueError, match="frozen U-Net"):
        build_losses(cfg)
    losses = build_losses(cfg, feature_unet=teacher)
    assert list(losses.discriminators) == ["ladv"]
    out = distill_step(student, student, teacher, batch, cfg, losses, generator=_gen(1))
    assert torch.isfinite(out["ladv"]) and out["disc_loss"].requires_grad
    out["loss"].backward()
    assert student.guidance_embedding.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def _held_tensors(obj, skip=("features",)) -> list[torch.Tensor]:
    """Every parameter and buffer of the modules a loss holds (its attributes, one level; not ``skip``)."""
    mods = [v for k, v in vars(obj).items() if isinstance(v, torch.nn.Module) and k not in skip]
    return [t for m in mods for t in (*m.parameters(), *m.buffers())]


@pytest.mark.parametrize("preset", ["distill/losses_all", "distill/losses_sync_adv"])
def test_step_losses_move_every_loss_network_to_the_device(preset):
    """A GPU run needs the SyncNet, LPIPS, VideoMAE and discriminators beside the step's tensors (a sync run once
    failed on the GPU: its SyncNet stayed on the CPU). "meta" stands in for the accelerator's device."""
    losses = build_losses(configs.load(preset).distill)
    held = {name: _held_tensors(term.loss) for name, term in losses.aux.items() if name != "recon"}
    assert all(held.values()) and {"sync", "adv"} <= held.keys()  # every network-holding term is checked
    assert losses.to("meta") is losses
    for name, term in losses.aux.items():
        devices = {t.device.type for t in _held_tensors(term.loss)}
        assert devices <= {"meta"}, f"{name}: {devices}"


def test_latent_adversarial_moves_its_heads_not_the_shared_teacher(teacher):
    node = {"loss": {"_target_": "losses.adversarial.LatentAdversarial", "channels": [32], "hidden": 8},
            "inputs": {"x0": "x0"}, "real": "latents", "features": {"blocks": [0]}}  # fmt: skip
    losses = build_losses({"weights": {"ladv": 0.1}, "aux": {"ladv": node}}, feature_unet=teacher).to("meta")
    assert {p.device.type for p in losses.discriminators["ladv"].parameters()} == {"meta"}
    assert {p.device.type for p in teacher.parameters()} == {"cpu"}  # the recipe places the teacher itself
