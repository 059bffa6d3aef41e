"""The committed toy student is a complete export, and ``turbosync demo`` runs it by default."""

from __future__ import annotations

from pathlib import Path

import torch

import student
from scripts.cli import TOY_STUDENT, main
from tests.inference.test_cli import probe


def test_the_committed_toy_student_is_self_contained():
    assert TOY_STUDENT == Path(__file__).resolve().parents[2] / "assets" / "toy_student"
    bundle = student.load_bundle(TOY_STUDENT)
    assert (bundle.resolution, bundle.num_frames, bundle.steps, bundle.w) == (128, 8, 1, 1.5)
    assert bundle.denoiser.net.dtype == torch.float32 and bundle.path == TOY_STUDENT
    from teacher.tiny_decoder import load_tiny_decoder

    tiny = load_tiny_decoder(TOY_STUDENT / "tiny_decoder")
    z = torch.randn(1, 4, 2, 16, 16)
    assert tiny.decode(z).shape == bundle.vae.decode(z).shape == (1, 3, 2, 128, 128)


def test_demo_defaults_to_the_toy_student(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--out", str(out), "--seconds", "0.5", "--no-degrade"]) == 0
    from distill.synthworld import make_clip

    audio_s = len(make_clip(0, resolution=256, seconds=0.5).audio) / 16000  # the demo's default clip
    n, size, seconds = probe(out)
    assert n == int(-(-audio_s * 25 // 1)) and size == (256, 256) and abs(seconds - audio_s) <= 1024 / 48000 + 1e-3
    assert "real-time factor" in capsys.readouterr().out


def test_a_good_run_prints_no_third_party_log_lines(tmp_path):
    """mediapipe / TensorFlow Lite write start-up lines from C++ to fd 2; a good run shows none of them."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-m", "scripts.cli", "demo", "--seconds", "0.5", "--out",
                          str(tmp_path / "d.mp4")], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    for marker in ("W0000", "I0000", "TensorFlow Lite", "absl::InitializeLog", "feedback"):
        assert marker not in res.stderr, res.stderr[-2000:]
