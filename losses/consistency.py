"""Consistency distances d(a, b) -> [B] between two x0 predictions (the student's and the target's).

LCM (Luo et al. 2023, eq. 9) trains f_student(x_{t+k}) toward f_target(x_t) under a distance d; LCD in
diffusers (``train_lcm_distill_sd_wds.py``) uses L2 or the pseudo-Huber metric of Song & Dhariwal 2023
("Improved Techniques for Training Consistency Models", section 3.3) applied element by element with
c = 0.001. Both are callables of tensors returning one value per sample; ``distill.step.distill_step``
averages them over the batch and weights them.
"""

from __future__ import annotations

import torch


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"consistency distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"consistency distance needs [B, ...] with at least one non-batch dim, got {tuple(a.shape)}")


class PseudoHuber:
    """d(a, b) = mean over non-batch dims of sqrt((a - b)^2 + c^2) - c; [B], float32.

    Song & Dhariwal 2023, section 3.3, element by element as diffusers' LCD script. It behaves as
    (a - b)^2 / (2c) for |a - b| << c and as |a - b| - c for |a - b| >> c. Evaluated as
    d^2 / (sqrt(d^2 + c^2) + c), the same value without float32 cancellation when |d| << c.

    Args (call): a, b: [B, ...] (at least 2 dims), any float dtype (computed in float32).
    Raises: ValueError for c <= 0 or mismatched shapes.
    """

    def __init__(self, c: float = 0.001):
        if not float(c) > 0.0:
            raise ValueError(f"pseudo-Huber c must be > 0, got {c}")
        self.c = float(c)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check(a, b)
        d2 = (a.float() - b.float()) ** 2
        return (d2 / (torch.sqrt(d2 + self.c**2) + self.c)).flatten(1).mean(1)

    def __repr__(self) -> str:
        return f"PseudoHuber(c={self.c})"


class L2:
    """d(a, b) = mean over non-batch dims of (a - b)^2; [B], float32 (LCM's L2 option).

    Args (call): a, b: [B, ...] (at least 2 dims). Raises: ValueError for mismatched shapes.
    """

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check(a, b)
        return ((a.float() - b.float()) ** 2).flatten(1).mean(1)

    def __repr__(self) -> str:
        return "L2()"
