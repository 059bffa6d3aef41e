"""The latent reconstruction term against its closed form: mouth-weighted mean of |x0 - latents|^p, [B]."""

from __future__ import annotations

import pytest
import torch

import configs
from losses.reconstruction import LatentReconstruction


def _mouth_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    latents = torch.zeros(1, 4, 1, 2, 2)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 2, 2)  # lower row = mouth
    x0 = torch.zeros(1, 4, 1, 2, 2)
    x0[..., 1, :] = 2.0  # error 2 only inside the mouth
    return x0, latents, mask


def test_mouth_weight_closed_form():
    x0, latents, mask = _mouth_case()
    # 4 channels x (2 kept pixels with error 0, 2 mouth pixels with error 2)
    assert LatentReconstruction()(x0, latents, mask).item() == pytest.approx(4.0 * 2 / 4)  # uniform mean of 2^2
    assert LatentReconstruction(2, mouth_weight=3.0)(x0, latents, mask).item() == pytest.approx(
        3 * 4.0 * 2 / (2 + 3 * 2)
    )
    assert LatentReconstruction(1, mouth_weight=3.0)(x0, latents, mask).item() == pytest.approx(
        3 * 2.0 * 2 / (2 + 3 * 2)
    )
    assert LatentReconstruction(2, mouth_weight=0.0)(x0, latents, mask).item() == 0.0  # the kept region only


@pytest.mark.parametrize("power, mouth_weight", [(2, 1.0), (2, 4.0), (1, 2.5), (1.5, 4.0)])
def test_matches_float64_formula_per_sample(power, mouth_weight):
    g = torch.Generator().manual_seed(0)
    x0, latents = torch.randn(3, 4, 2, 6, 6, generator=g), torch.randn(3, 4, 2, 6, 6, generator=g)
    mask = (torch.rand(3, 1, 2, 6, 6, generator=g) > 0.3).float()
    got = LatentReconstruction(power, mouth_weight)(x0, latents, mask)
    assert got.shape == (3,) and got.dtype == torch.float32
    m = (1.0 + (mouth_weight - 1.0) * (1.0 - mask.double())).expand(3, 4, 2, 6, 6)
    err = (x0.double() - latents.double()).abs() ** power
    want = torch.stack([(m[i] * err[i]).sum() / m[i].sum() for i in range(3)])
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_gradient_reaches_x0_only():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 1, 3, 3, generator=g, requires_grad=True)
    latents, mask = torch.randn(2, 4, 1, 3, 3, generator=g), torch.ones(2, 1, 1, 3, 3)
    (grad,) = torch.autograd.grad(LatentReconstruction()(x0, latents, mask).sum(), x0)
    torch.testing.assert_close(grad, 2 * (x0 - latents).detach() / 36)  # d/dx0 mean((x0 - z)^2) over 36 values


def test_bad_arguments():
    with pytest.raises(ValueError, match="power"):
        LatentReconstruction(power=0)
    with pytest.raises(ValueError, match="mouth_weight"):
        LatentReconstruction(mouth_weight=-1.0)
    x0, latents, mask = _mouth_case()
    with pytest.raises(ValueError, match="x0 and latents"):
        LatentReconstruction()(x0, latents[:, :3], mask)
    with pytest.raises(ValueError, match="mask"):
        LatentReconstruction()(x0, latents, mask.expand(1, 4, 1, 2, 2))


def test_built_from_a_config_node():
    loss = configs.instantiate({"_target_": "losses.reconstruction.LatentReconstruction", "power": 1,
                                "mouth_weight": 4.0})  # fmt: skip
    assert isinstance(loss, LatentReconstruction) and loss.power == 1 and loss.mouth_weight == 4.0
