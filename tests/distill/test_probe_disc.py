"""scripts.probe_disc: the variant grammar and the offline discriminator training on recorded-like batches."""

from __future__ import annotations

import pytest
import torch

from scripts.probe_disc import parse_variant, train_offline


def test_parse_variant():
    assert parse_variant("gn=4:0.5:2e-4") == ("gn", 4, 0.5, 2e-4)
    with pytest.raises(SystemExit, match="NAME=groups:beta1:lr"):
        parse_variant("gn=4:0.5")


def test_train_offline_traces_the_held_out_hinge():
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 1, 4, 8, 8)
    mask[..., 4:8, 2:6] = 0
    batches = []
    for _ in range(4):
        real = torch.rand(2, 3, 4, 64, 64, generator=g) * 0.2
        batches.append((real, real + 0.5 * torch.rand(real.shape, generator=g), mask))
    trace = train_offline(batches, 1, {"scales": 2, "channels": 8}, 4, 0.5, 2e-4, 0, iters=10, every=5)
    assert trace["step"] == [0, 5, 10]
    assert len(trace["held_out"]) == 3 and abs(trace["held_out"][0] - 2.0) < 0.5  # near chance at init
    assert all(0.0 <= v for v in trace["held_out"])
