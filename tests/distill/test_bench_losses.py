"""scripts.bench_losses: the rows' statistics and the issue's comparisons on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    # sharpness (sharpness is relative to the ground truth, 1.0): plain 0.3, teacher 0.6 -> gap 0.3 > spread 0.1
    assert v["sharpness_gap_to_teacher"]["plain"] == pytest.approx(0.3) and v["sharpness_claim_reachable"]
    assert v["sharpness_met"] and v["sharpness_gap_to_ground_truth"]["sync_adv"] == pytest.approx(0.4)
    assert v["plain_blurrier_than_teacher"] and v["detail_error"]["sync_adv"] == pytest.approx(0.6)
    older = [{n: {m: x for m, x in d.items() if m != "detail_error"} for n, d in draw.items()} for draw in _draws(vals)]
    rows_older = summarize(older, [0, 1])
    assert "detail_error" not in rows_older["plain"] and "detail_error" not in verdict(rows_older)["sync_adv_vs_plain"]
    near = {**vals, TEACHER: [0.25, 0.3, 0.35]}  # the teacher as sharp as plain: nothing left to close
    v = verdict(summarize(_draws(near), [0, 1]))["sync_adv_vs_plain"]
    assert not v["sharpness_claim_reachable"] and not v["sharpness_met"]
    s = verdict(rows)["sync_vs_teacher_ddim_20"]
    assert s["difference"] == pytest.approx(0.2) and s["sync_seed_spread"] == pytest.approx(0.1)


def test_arms_parse_as_presets_with_overrides():
    from scripts.bench_losses import parse_arms

    arms = parse_arms(["plain", "sync_w1=sync:distill.weights.sync=1.0,optim.lr=1e-4"])
    assert arms == {"plain": ("plain", []), "sync_w1": ("sync", ["distill.weights.sync=1.0", "optim.lr=1e-4"])}
    with pytest.raises(SystemExit, match="one of"):
        parse_arms(["fast=turbo:x=1"])


def test_seconds_per_step_is_the_slowest_runs_median_after_the_first_steps(tmp_path):
    import json

    from scripts.bench_losses import seconds_per_step

    for name, fps in (("a_s0", [1.0, 1.0, 1.0, 8.0, 16.0, 8.0]), ("b_s0", [1.0, 1.0, 1.0, 4.0, 4.0, 64.0])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "losses.jsonl").write_text("".join(json.dumps({"frames_per_s": f}) + "\n" for f in fps))
    # medians after 3 skipped steps: a 8 fps, b 4 fps -> 32 frames / fps
    assert seconds_per_step(tmp_path, [("a", 0), ("b", 0)]) == {("a", 0): 4.0, ("b", 0): 8.0}


def test_one_step_of_every_run_costs_the_pools_makespan():
    from scripts.bench_losses import makespan, parse_arms, train_order

    assert makespan([10, 10, 7, 7, 6, 6, 5, 5], 8) == 10  # every run side by side (the GPU): the slowest
    assert makespan([10, 10, 7, 7, 6, 6, 5, 5], 2) == 28  # 2 workers: each takes one seed of every arm
    assert makespan([10, 1, 1, 1], 2) == 10 and makespan([3.0], 4) == 3.0
    assert train_order(parse_arms(["plain", "sync", "all"]), [0, 1])[:3] == [("all", 0), ("all", 1), ("sync", 0)]


def test_every_failed_run_is_reported_with_the_end_of_its_log(tmp_path, monkeypatch):
    import scripts.bench_losses as bl

    def fake(name, arm, seed, steps, out, extra):
        if name == "plain":
            return out / name
        log = out / f"{name}.log"
        log.write_text("".join(f"line {i}\n" for i in range(20)) + f"RuntimeError: {name} on the wrong device\n")
        raise RuntimeError(f"{name}: " + log.read_text().splitlines()[-1])

    monkeypatch.setattr(bl, "train_arm", fake)
    with pytest.raises(RuntimeError) as err:
        bl.train_all(bl.parse_arms(["plain", "sync", "all"]), [0, 1], 1, tmp_path, 2, [])
    msg = str(err.value)
    assert all(f"{a} seed {s}" in msg for a in ("sync", "all") for s in (0, 1)) and "plain seed" not in msg
    # _cli itself: a failing command's error carries its log's last lines
    log = tmp_path / "cli.log"
    with pytest.raises(RuntimeError, match=r"(?s)failed \(rc 2\).*unknown-command"):
        bl._cli(["unknown-command"], log)


def test_window_to_moves_the_tensors_and_keeps_the_numpy_fields():
    import numpy as np

    from distill.benchmark import Window

    t = torch.zeros(1, 1, 2, 4, 4)
    w = Window(t, t, t, t, t, torch.zeros(1, 2, 50, 384), t, np.arange(2.0), np.zeros(1280), clip=3, start=8)
    m = w.to("meta")
    assert m is not w and all(v.device.type == "meta" for v in vars(m).values() if isinstance(v, torch.Tensor))
    assert m.mouth_open is w.mouth_open and (m.clip, m.start) == (3, 8) and w.frames.device.type == "cpu"


def test_a_prepared_heldout_set_is_reused_even_when_copied_elsewhere(tmp_path, monkeypatch):
    import json

    import distill.data
    import distill.synthworld
    from scripts.bench_distill import heldout

    def refuse(*a, **k):
        raise AssertionError("a prepared set was rebuilt")

    monkeypatch.setattr(distill.synthworld, "synth_dataset", refuse)
    monkeypatch.setattr(distill.data, "prepare", refuse)
    monkeypatch.setattr(distill.data, "ClipDataset", lambda root, **kw: (root, kw))
    (tmp_path / "report.json").write_text(json.dumps({"prepared": 3}))
    assert heldout(tmp_path, 3, 1.6, 1000, 8) == (tmp_path, {"num_frames": 8, "reference": "same", "stride": 8})
    with pytest.raises(AssertionError, match="rebuilt"):
        heldout(tmp_path, 4, 1.6, 1000, 8)  # another clip count is another set


def test_picture_has_a_labelled_strip_per_row(tmp_path):
    from PIL import Image

    from scripts.bench_losses import picture

    truth = [torch.rand(8, 32, 32, 3) for _ in range(11)]
    outs = {"plain_s0": [t * 0.5 for t in truth], TEACHER: [t.flip(1) for t in truth]}
    picture(outs, truth, tmp_path / "p.png")
    img = Image.open(tmp_path / "p.png")
    assert img.size == (110 + 3 * 4 * 32, 3 * 16)  # 3 windows x 4 frames of 32 px; 3 rows of half faces
    px = np.asarray(img)[16:32, 110:142] / 255.0  # plain_s0, window 0, frame 0: half the truth's lower half
    assert np.abs(px - (truth[0][0, 16:].numpy() * 0.5)).max() < 1 / 255 + 1e-6


def test_the_paired_difference_to_the_teacher_cancels_the_shared_draw_noise():
    from scripts.bench_losses import paired_difference

    teacher = [0.5, 0.8, 0.6]  # draw 0 hard for every model, draw 1 easy
    d = paired_difference([[0.55, 0.85, 0.65], [0.53, 0.83, 0.63]], teacher)
    assert d["per_seed"] == pytest.approx([0.05, 0.03]) and d["difference"] == pytest.approx(0.04)
    assert d["seed_spread"] == pytest.approx(0.01) and d["paired_std"] == pytest.approx(0.01)
    assert d["passes"] and d["seeds_above"] == 2  # +0.04 > 0.01, though the means apart overlap by their stds
    behind = paired_difference([[0.55, 0.85, 0.65], [0.45, 0.75, 0.55]], teacher)  # one seed above, one below
    assert behind["difference"] == pytest.approx(0.0) and behind["seeds_above"] == 1 and not behind["passes"]
    with pytest.raises(ValueError, match="do not pair"):
        paired_difference([[0.5, 0.5]], teacher)
    vals = {TEACHER: teacher, "plain_s0": teacher, "plain_s1": teacher, "sync_s0": [0.55, 0.85, 0.65],
            "sync_s1": [0.53, 0.83, 0.63]}  # fmt: skip
    v = verdict(summarize(_draws(vals), [0, 1]))["vs_teacher_ddim_20_paired"]
    assert set(v) == {"sync"} and v["sync"]["passes"]
