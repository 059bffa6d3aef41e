"""StudentUNet: equal to the teacher at step 0 for every w, LoRA (trainable set, merge), export round trip."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from student.model import DEFAULT_LORA_TARGETS, StudentUNet, guidance_sinusoid, student_state_for_export
from teacher.unet_blocks import InflatedConv3d
from tests.student import HW, B, F, rel_err, tiny_batch, tiny_teacher

LORA = {"rank": 4, "alpha": 8, "target_modules": list(DEFAULT_LORA_TARGETS)}


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


@pytest.fixture(scope="module")
def inputs():
    batch = tiny_batch()
    g = torch.Generator().manual_seed(1)
    sample = torch.cat([torch.randn(B, 4, F, HW, HW, generator=g), batch["mask"], batch["masked_latents"],
                        batch["ref_latents"]], dim=1)  # fmt: skip
    return sample, torch.tensor([999, 259]), batch["audio_embeds"]


def _randomize_lora(student: StudentUNet, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def test_guidance_sinusoid_closed_form():
    """diffusers' LCM get_guidance_scale_embedding: 1000 w, f_i = exp(-ln(1e4) i / (d/2 - 1)), [sin, cos]."""
    w, dim = torch.tensor([1.0, 1.5, 2.0]), 8
    emb = guidance_sinusoid(w, dim)
    assert emb.shape == (3, dim)
    for b, wb in enumerate(w.tolist()):
        for i in range(dim // 2):
            arg = 1000.0 * wb * math.exp(-math.log(10000.0) * i / (dim // 2 - 1))
            assert emb[b, i].item() == pytest.approx(math.sin(arg), abs=2e-4)
            assert emb[b, dim // 2 + i].item() == pytest.approx(math.cos(arg), abs=2e-4)


@pytest.mark.parametrize("w", [0.0, 1.0, 1.5, 2.0, 7.5, "tensor"])
def test_student_equals_teacher_at_init(teacher, inputs, w):
    student = StudentUNet.from_teacher(teacher)
    sample, t, audio = inputs
    w = torch.tensor([1.2, 1.8]) if w == "tensor" else w
    with torch.no_grad():
        expected = teacher(sample, t, audio)
        got = student(sample, t, audio, w)
    assert expected.std() > 0.1  # a real, non-trivial teacher
    assert rel_err(got, expected) < 1e-5


def test_full_finetune_is_a_deep_copy_and_learns_w(teacher, inputs):
    student = StudentUNet.from_teacher(teacher)
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.data_ptr() in teacher_ptrs for p in student.parameters())
    sample, t, audio = inputs
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    guidance = list(student.guidance_embedding.parameters())
    rest = [p for n, p in student.named_parameters() if not n.startswith("guidance_embedding.")]
    opt = torch.optim.SGD([{"params": rest, "lr": 0.1}, {"params": guidance, "lr": 10.0}])
    student(sample, t, audio, torch.tensor([1.0, 2.0])).square().mean().backward()
    grad = student.guidance_embedding.linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # zero-init does not block learning
    opt.step()
    after = teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # teacher untouched
    with torch.no_grad():
        e1, e2 = student(sample, t, audio, 1.0), student(sample, t, audio, 2.0)
        e_scalar, e_vec = student(sample, t, audio, 1.5), student(sample, t, audio, torch.tensor([1.5, 1.5]))
    assert rel_err(e1, e2) > 1e-4  # the output now depends on w
    assert torch.equal(e_scalar, e_vec)


def test_lora_identity_at_init_and_trainable_set(teacher, inputs):
    from peft.tuners.tuners_utils import BaseTunerLayer

    student = StudentUNet.from_teacher(teacher, lora=LORA)
    assert student.has_lora and student.lora_config["rank"] == 4
    wrapped = {n.rsplit(".", 1)[-1] for n, m in student.unet.named_modules() if isinstance(m, BaseTunerLayer)}
    assert {"to_q", "to_k", "to_v", "proj_in", "conv1", "conv2", "time_emb_proj"} <= wrapped
    conv = student.unet.down_blocks[0].resnets[0].conv1
    assert isinstance(conv, BaseTunerLayer) and isinstance(conv.lora_A["default"], InflatedConv3d)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("guidance_embedding.") for n in trainable)
    assert {"guidance_embedding.linear.weight", "guidance_embedding.linear.bias"} <= trainable
    sample, t, audio = inputs
    with torch.no_grad():
        assert rel_err(student(sample, t, audio, 1.5), teacher(sample, t, audio)) < 1e-5
    student(sample, t, audio, 1.5).square().mean().backward()
    for n, p in student.named_parameters():
        assert (p.grad is not None) == (n in trainable), n


def test_merge_lora_keeps_outputs(teacher, inputs):
    from peft.tuners.tuners_utils import BaseTunerLayer

    student = StudentUNet.from_teacher(teacher, lora=LORA)
    _randomize_lora(student)
    sample, t, audio = inputs
    plain_keys = set(StudentUNet.from_teacher(teacher).state_dict())
    with torch.no_grad():
        before = student(sample, t, audio, 1.5)
        merged = student.merge_lora()
        after = merged(sample, t, audio, 1.5)
        assert rel_err(before, teacher(sample, t, audio)) > 1e-3  # LoRA does change the output
        assert rel_err(after, before) < 1e-5
        assert torch.equal(student(sample, t, audio, 1.5), before)  # the LoRA student is untouched
    assert not merged.has_lora and student.has_lora
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert set(merged.state_dict()) == plain_keys


@pytest.mark.parametrize("lora", [False, True])
def test_export_round_trip(teacher, inputs, monkeypatch, lora):
    student = StudentUNet.from_teacher(teacher, lora=LORA if lora else None)
    if lora:
        _randomize_lora(student, seed=1)
    with torch.no_grad():
        student.guidance_embedding.linear.weight.normal_(0.0, 0.05)
    state, config = student_state_for_export(student)
    config = json.loads(json.dumps(config))  # plain JSON
    assert not any("lora_" in k or "base_layer" in k for k in state)
    monkeypatch.setitem(sys.modules, "peft", None)  # from_export needs no training dependencies
    rebuilt = StudentUNet.from_export(state, config)
    sample, t, audio = inputs
    with torch.no_grad():
        expected = student(sample, t, audio, torch.tensor([1.1, 1.9]))
        got = rebuilt(sample, t, audio, torch.tensor([1.1, 1.9]))
    assert rel_err(got, expected) < 1e-5
    assert not rebuilt.training


def test_from_export_is_strict(teacher):
    state, config = student_state_for_export(StudentUNet.from_teacher(teacher))
    with pytest.raises(RuntimeError, match="Missing key"):
        StudentUNet.from_export({k: v for k, v in state.items() if "guidance" not in k}, config)
    with pytest.raises(ValueError, match="format"):
        StudentUNet.from_export(state, {**config, "format": "other"})
    with pytest.raises(RuntimeError, match="already has LoRA"):
        StudentUNet.from_teacher(teacher, lora=LORA).add_lora(rank=2)
