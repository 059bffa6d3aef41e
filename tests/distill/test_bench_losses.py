"""scripts.bench_losses: the rows' statistics and the issue's comparisons on hand-made numbers."""

from __future__ import annotations

import pytest

from scripts.bench_losses import ARMS, METRICS, TEACHER, summarize, verdict


def _draws(values: dict[str, list[float]]) -> list[dict]:
    """Per draw, every method scores ``values[method][draw]`` on every metric."""
    n = len(next(iter(values.values())))
    return [{name: {m: v[k] for m in METRICS} for name, v in values.items()} for k in range(n)]


def test_rows_pool_seeds_and_draws_and_the_verdict_uses_the_seed_spread():
    vals = {TEACHER: [0.5, 0.6, 0.7], "plain_s0": [0.1, 0.2, 0.3], "plain_s1": [0.3, 0.4, 0.5],
            "sync_adv_s0": [0.6, 0.6, 0.6], "sync_adv_s1": [0.6, 0.6, 0.6], "sync_s0": [0.9, 0.9, 0.9],
            "sync_s1": [0.7, 0.7, 0.7]}  # fmt: skip
    rows = summarize(_draws(vals), [0, 1])
    assert set(rows) == {"plain", "sync", "sync_adv", TEACHER} and set(ARMS) - set(rows) == {"all"}
    plain = rows["plain"]["sync_score"]
    assert plain["mean"] == pytest.approx(0.3) and plain["seed_spread"] == pytest.approx(0.1)  # means 0.2, 0.4
    assert plain["draw_std"] == pytest.approx((2 / 3) ** 0.5 * 0.1) and plain["values"][1] == [0.3, 0.4, 0.5]
    assert rows[TEACHER]["sync_score"]["seed_spread"] == 0.0
    v = verdict(rows)["sync_adv_vs_plain"]
    assert v["sync_score_gain"] == pytest.approx(0.3) and v["sync_met"]  # 0.3 > spread 0.1
    assert v["mse_to_ground_truth_change"] == pytest.approx(1.0) and not v["mse_met"]  # +100% on this metric
    s = verdict(rows)["sync_vs_teacher_ddim_20"]
    assert s["difference"] == pytest.approx(0.2) and s["sync_seed_spread"] == pytest.approx(0.1)
