"""scripts.probe_sync_reward end to end on one short held-out clip: traces, the relative form, the pictures."""

from __future__ import annotations

import json

import pytest

from scripts.probe_sync_reward import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_probe_descends_the_reward_and_reports_every_metric(tmp_path):
    out = tmp_path / "probe"
    assert main(["--steps", "2", "--every", "1", "--clips", "1", "--seconds", "0.64", "--threads", "2",
                 "--forms", "absolute", "relative", "contrastive", "candidates",
                 "--out", str(out), "--json", str(tmp_path / "probe.json")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "probe.json").read_text())
    keys = {f"syncnet_toy_supervise/{s}/{f}" for s in ("student", "truth")
            for f in ("absolute", "relative", "contrastive", "candidates")}  # fmt: skip
    assert keys <= report.keys() and report["_setup"]["windows"] == 2
    for key in keys:
        trace = report[key]
        assert [row["step"] for row in trace] == [0, 1, 2]
        assert {"reward", "sync_loss", "sync_loss_offsync", "sync_score", "lse_c", "lse_d", "sharpness",
                "mse_to_ground_truth"} <= trace[0].keys()  # fmt: skip
        assert trace[0]["latent_change"] == 0 and trace[-1]["latent_change"] > 0
        assert (out / f"probe_{key.replace('/', '_')}.png").is_file()
    for form in ("absolute", "contrastive", "candidates"):  # the descent lowers the reward it descends
        trace = report[f"syncnet_toy_supervise/student/{form}"]
        assert trace[-1]["reward"] < trace[0]["reward"]
    absolute = report["syncnet_toy_supervise/student/absolute"][0]
    assert absolute["reward"] == absolute["sync_loss"]  # the absolute form is the plain -log cos
    # relative form: the excess over the real frames' own loss, so below the absolute value and >= 0; from the
    # VAE encoding of the real frames it starts near 0 and the mouth hardly moves
    for start in ("student", "truth"):
        rel, ab = (report[f"syncnet_toy_supervise/{start}/{f}"] for f in ("relative", "absolute"))
        assert 0 <= rel[0]["reward"] < ab[0]["reward"]
    truth = report["syncnet_toy_supervise/truth/absolute"]
    assert truth[0]["sync_score"] > 0.9 and truth[0]["mse_to_ground_truth"] < 0.002
    # --students with --steps 0: measure exported students only; the committed student's row equals its trace's start
    assert main(["--steps", "0", "--clips", "1", "--seconds", "0.64", "--threads", "2", "--starts", "--students",
                 "again=assets/toy_student", "--out", str(out), "--json", str(tmp_path / "students.json")]) == 0
    again = json.loads((tmp_path / "students.json").read_text())["syncnet_toy_supervise/again/absolute"]
    assert len(again) == 1 and again[0] == pytest.approx(report["syncnet_toy_supervise/student/absolute"][0])


def test_probe_refuses_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match=">= 1"):
        main(["--every", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="NAME=DIR"):
        main(["--students", "assets/toy_student", "--out", str(tmp_path)])
