"""Consistency distances against their closed forms: pseudo-Huber sqrt(d^2 + c^2) - c and L2 d^2, one value
per sample [B], float32 without cancellation for |d| << c."""

from __future__ import annotations

import math

import pytest
import torch

import configs
from losses.consistency import L2, PseudoHuber


def _pair(seed: int = 0, shape=(3, 4, 2, 5, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_pseudo_huber_closed_form():
    a = torch.zeros(2, 1, 1, 2, 2)
    b = torch.zeros(2, 1, 1, 2, 2)
    b[0] = 3.0  # d = 3 everywhere in sample 0, 0 in sample 1
    out = PseudoHuber(c=4.0)(a, b)
    assert out.shape == (2,) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([math.sqrt(9 + 16) - 4.0, 0.0]))  # = [1, 0]


@pytest.mark.parametrize("c", [0.001, 0.1, 2.0])
def test_pseudo_huber_matches_float64_formula_per_sample(c):
    a, b = _pair(1)
    d = a.double() - b.double()
    want = (torch.sqrt(d**2 + c**2) - c).flatten(1).mean(1)  # Song & Dhariwal 2023, element by element
    got = PseudoHuber(c)(a, b)
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_pseudo_huber_limits_and_small_differences():
    a = torch.zeros(1, 8)
    # |d| >> c: ~|d| - c; |d| << c: ~d^2 / (2c), which float32 sqrt(d^2 + c^2) - c would round to 0
    assert PseudoHuber(0.001)(a, torch.full((1, 8), 3.0)).item() == pytest.approx(3.0 - 0.001, rel=1e-6)
    small = PseudoHuber(1.0)(a, torch.full((1, 8), 3e-4)).item()
    assert small == pytest.approx(math.sqrt(9e-8 + 1.0) - 1.0, rel=1e-5) and small > 0
    assert (torch.sqrt(torch.tensor(9e-8) + 1.0) - 1.0).item() == 0.0  # the cancellation it avoids


def test_l2_closed_form():
    a, b = _pair(2)
    got = L2()(a, b)
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ((a.double() - b.double()) ** 2).flatten(1).mean(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(L2()(torch.zeros(2, 1, 3), torch.full((2, 1, 3), 2.0)), torch.tensor([4.0, 4.0]))


def test_half_inputs_give_float32_and_gradients():
    a, b = _pair(3, (2, 3, 4))
    a = a.bfloat16().requires_grad_(True)
    for d in (PseudoHuber(0.1), L2()):
        out = d(a, b.bfloat16())
        assert out.dtype == torch.float32 and out.shape == (2,)
        (grad,) = torch.autograd.grad(out.sum(), a)
        assert torch.isfinite(grad.float()).all() and grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="c must be > 0"):
        PseudoHuber(0.0)
    a, b = _pair(4, (2, 3))
    for d in (PseudoHuber(), L2()):
        with pytest.raises(ValueError, match="equal shapes"):
            d(a, b[:, :2])
        with pytest.raises(ValueError, match="non-batch"):
            d(a[:, 0], b[:, 0])


def test_built_from_a_config_node():
    d = configs.instantiate({"_target_": "losses.consistency.PseudoHuber", "c": 0.25})
    assert isinstance(d, PseudoHuber) and d.c == 0.25
    assert isinstance(configs.instantiate({"_target_": "losses.consistency.L2"}), L2)
