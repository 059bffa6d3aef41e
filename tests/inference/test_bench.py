"""``turbosync bench stream`` on a tiny random student: every number of the report is there and sane,
and the analytic FLOPs of the full-size model agree with DESIGN section 5."""

from __future__ import annotations

import json

import pytest

from scripts.cli import main
from tests.inference.test_engine import tiny_export


def test_bench_stream_report(tmp_path, capsys):
    student = tiny_export(tmp_path / "student")
    out = tmp_path / "bench.json"
    assert main(["bench", "stream", "--student", str(student), "--out", str(out), "--seconds", "1.0", "--no-flops",
                 "chunk=4", "context=2"]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    thr = report["throughput"]
    assert thr["frames"] == 25 and thr["fps"] > 0 and thr["real_time_factor"] > 0
    assert set(report["isolated_ms_per_frame"]) == {"audio", "unet", "decode", "paste", "io"}
    assert all(v > 0 for v in report["isolated_ms_per_frame"].values())
    assert -0.9 < report["pipeline_overhead"] < 5
    pace = report["pacing"]
    assert pace["frames"] == 25 and pace["first_frame_ms"] >= pace["algorithmic_latency_ms"] - 1
    assert sum(pace["levels"].values()) == 25
    assert report["peak_rss_mib"] > 0 and "real-time factor" in capsys.readouterr().out


def test_flops_of_the_full_size_model():
    """torch's FLOP counter on the meta device: U-Net ~1 TFLOP a frame per step, SD VAE decoder ~2.5,
    encoder ~1.1, TAESD decoder ~0.14 (DESIGN section 5 counted 0.98 / 2.48 / 1.08 / 0.14)."""
    from inference.bench import flops_report

    f = flops_report()
    assert f["unet_per_step"] == pytest.approx(1.0, rel=0.15)
    assert f["sd_vae_decoder"] == pytest.approx(2.48, rel=0.05)
    assert f["sd_vae_encoder"] == pytest.approx(1.08, rel=0.05)
    assert f["taesd_decoder"] == pytest.approx(0.14, rel=0.05)


def test_gpu_bench_script_runs_small_on_the_cpu(tmp_path):
    """scripts/gpu_bench.py's code path (student chunk, both decoders, torch paste) with a tiny model."""
    from scripts.gpu_bench import main as gpu_main

    assert gpu_main(["--small", "--out", str(tmp_path / "g.json"), "--seconds", "1"]) == 0
    report = json.loads((tmp_path / "g.json").read_text())
    assert set(report["runs"]) == {"1step_taesd", "1step_vae", "2step_taesd", "2step_vae"}
    assert all(r["fps"] > 0 for r in report["runs"].values())
