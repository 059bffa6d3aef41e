"""``turbosync export``: the EMA target (full) or the merged LoRA student of a run, reloaded by
``student.load`` with accelerate, DeepSpeed and peft blocked, gives the in-memory network's output."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import configs
from distill import recipe
from scripts.cli import main
from tests.distill.test_recipe import ROOT, _fresh_accelerate_state, _overrides, data_root  # noqa: F401
from tests.student import rel_err

BLOCKED = ("accelerate", "deepspeed", "peft")
LOAD_BLOCKED = """
import sys, torch
for name in {blocked!r}:
    sys.modules[name] = None  # any import of them now fails
import student
model = student.load(sys.argv[1])
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(*inputs), sys.argv[3])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
assert not leaked, leaked
print(type(model).__name__, model.training)
"""


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 13, 4, 8, 8, generator=g)
    return sample, torch.tensor([999, 259]), torch.randn(2, 4, 50, 384, generator=g), torch.tensor([1.2, 1.8])


def _train(out: Path, root: Path, *extra: str):
    run = recipe.train(configs.load("distill/tiny", _overrides(out, root, "run.max_steps=2", *extra)))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return run


def _load_blocked(export_dir: Path, tmp: Path) -> torch.Tensor:
    torch.save(_inputs(), tmp / "inputs.pt")
    script = LOAD_BLOCKED.format(blocked=BLOCKED)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", script, str(export_dir), str(tmp / "inputs.pt"), str(tmp / "eps.pt")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["StudentUNet", "False"]
    return torch.load(tmp / "eps.pt")


@pytest.mark.parametrize("lora", [False, True], ids=["full-ema", "lora-merged"])
def test_export_matches_the_in_memory_network(data_root, tmp_path, lora):  # noqa: F811
    extra = ("student.lora={rank: 4, alpha: 4}", "optim.lr=1e-2") if lora else ()
    run = _train(tmp_path / "run", data_root, *extra)
    network = run.plain_student if lora else run.target  # the LoRA student itself / the EMA target
    assert network.has_lora == lora and (network is run.plain_student) == lora

    out = tmp_path / "export"
    assert main(["export", str(run.out), str(out)]) == 0
    state = load_file(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["step"] == 2 and config["source"]["checkpoint"] == "step_0000002"
    assert not any("lora_" in k or "base_layer" in k for k in state)
    assert set(state) == set(recipe.build_student(run.cfg, run.teacher.float())[0].merge_lora().state_dict())

    got = _load_blocked(out, tmp_path)
    sample, t, audio, w = _inputs()
    with torch.no_grad():
        expected = network(sample, t, audio, w)
        start = run.teacher.float()(sample, t, audio)  # the teacher = the student at step 0
    assert rel_err(got, expected) < 1e-5
    assert rel_err(expected, start) > 1e-3  # training moved the network, so the comparison has teeth
    if not lora:
        student_now = run.plain_student(sample, t, audio, w).detach()
        assert rel_err(expected, student_now) > 1e-4  # the export is the EMA target, not the online student


def test_export_errors(tmp_path):
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2  # not a run directory
    (tmp_path / "config.yaml").write_text("run: {}\n")
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2  # no checkpoint yet
    import student

    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        student.load(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("onnx") is not None, reason="onnx is installed")
def test_onnx_without_the_package_is_a_clear_error(tmp_path, capsys):
    from distill.export import ExportError, export_onnx

    with pytest.raises(ExportError, match="needs the onnx package"):
        export_onnx(torch.nn.Identity(), tmp_path / "unused.onnx", 4, 8)
    assert main(["export", str(tmp_path), str(tmp_path / "out"), "--onnx"]) == 2
    assert "pip install onnx" in capsys.readouterr().err and not (tmp_path / "out").exists()  # refused up front


def test_onnx_export(data_root, tmp_path):  # noqa: F811
    pytest.importorskip("onnx", reason="torch.onnx writes through the onnx package, not installed here")
    run = _train(tmp_path / "run", data_root)
    assert main(["export", str(run.out), str(tmp_path / "export"), "--onnx"]) == 0
    import onnx

    model = onnx.load(str(tmp_path / "export" / "student.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input][:4] == ["sample", "t", "audio_embeds", "w"]
