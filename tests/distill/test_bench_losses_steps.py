"""scripts.bench_losses_steps: reports at several step counts joined into curves, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench_losses import TEACHER, summarize
from scripts.bench_losses_steps import curves, main, parse_reports

from .test_bench_losses import _draws


def _report(tmp_path, name: str, vals: dict) -> str:
    rows = summarize(_draws(vals), [0, 1])
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**rows, "_ground_truth": {"sync_score": 0.99}, "_setup": {"command": name}}))
    return str(path)


TEACHER_DRAWS = [0.6, 0.7, 0.8]


def test_curves_follow_each_arm_and_seed_across_the_reports(tmp_path):
    a = _report(tmp_path, "a", {TEACHER: TEACHER_DRAWS, "plain_s0": [0.5] * 3, "plain_s1": [0.3] * 3,
                                "sync_s0": [0.6, 0.7, 0.8], "sync_s1": [0.6, 0.7, 0.8]})  # fmt: skip
    b = _report(tmp_path, "b", {TEACHER: TEACHER_DRAWS, "plain_s0": [0.5] * 3, "plain_s1": [0.5] * 3,
                                "sync_s0": [0.8, 0.9, 1.0], "sync_s1": [0.7, 0.8, 0.9],
                                "all_s0": [0.1] * 3, "all_s1": [0.1] * 3})  # fmt: skip
    c = curves(parse_reports([f"240={b}", f"120={a}"]))  # given out of order: sorted by steps
    assert c["steps"] == [120, 240] and set(c["arms"]) == {"plain", "sync"}  # "all" is missing at 120
    plain = c["arms"]["plain"]["sync_score"]
    assert plain["mean"] == pytest.approx([0.4, 0.5]) and plain["per_seed"] == [[0.5, 0.3], [0.5, 0.5]]
    assert plain["seed_spread"] == pytest.approx([0.1, 0.0])
    paired = c["arms"]["sync"]["vs_teacher_paired"]
    assert paired[0]["difference"] == pytest.approx(0.0) and not paired[0]["passes"]
    assert paired[1]["difference"] == pytest.approx(0.15) and paired[1]["passes"] and paired[1]["seeds_above"] == 2
    assert c[TEACHER]["sync_score"]["mean"] == pytest.approx(0.7) and c["_ground_truth"]["sharpness"] == 1.0
    assert c["_sources"] == {120: "a", 240: "b"}
    assert main([f"120={a}", f"240={b}", "--json", str(tmp_path / "c.json"), "--png", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0
    assert json.loads((tmp_path / "c.json").read_text())["steps"] == [120, 240]


def test_reports_that_do_not_form_one_curve_are_refused(tmp_path):
    a = _report(tmp_path, "a", {TEACHER: TEACHER_DRAWS, "plain_s0": [0.5] * 3, "plain_s1": [0.5] * 3})
    other = _report(tmp_path, "o", {TEACHER: [0.1, 0.2, 0.3], "plain_s0": [0.5] * 3, "plain_s1": [0.5] * 3})
    with pytest.raises(SystemExit, match="not the same held-out set"):
        parse_reports([f"120={a}", f"240={other}"])
    more_draws = _report(tmp_path, "m", {TEACHER: TEACHER_DRAWS + [0.9], "plain_s0": [0.5] * 4, "plain_s1": [0.5] * 4})
    with pytest.raises(SystemExit, match="4 noise draws, another 3"):
        parse_reports([f"120={a}", f"240={more_draws}"])
    three = json.loads(Path(a).read_text())
    three["plain"]["sync_score"]["values"].append([0.5] * 3)  # a third seed
    (tmp_path / "three.json").write_text(json.dumps(three))
    with pytest.raises(SystemExit, match="different numbers of training seeds"):
        parse_reports([f"120={a}", f"240={tmp_path / 'three.json'}"])
    with pytest.raises(SystemExit, match="STEPS=REPORT"):
        parse_reports([a])
    with pytest.raises(SystemExit, match="given twice"):
        parse_reports([f"120={a}", f"120={a}"])
    with pytest.raises(SystemExit, match="no such report"):
        parse_reports([f"120={tmp_path / 'missing.json'}"])
    (tmp_path / "notes.md").write_text("# not json")
    with pytest.raises(SystemExit, match="is not JSON"):
        parse_reports([f"120={tmp_path / 'notes.md'}"])
    (tmp_path / "distill.json").write_text(json.dumps({TEACHER: {"sync_score": 0.7}}))  # bench_distill's flat rows
    with pytest.raises(SystemExit, match="not a scripts.bench_losses report"):
        parse_reports([f"120={tmp_path / 'distill.json'}"])
