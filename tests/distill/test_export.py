"""``turbosync export``: the EMA target (full) or the merged LoRA student of a run, reloaded by
``student.load`` with accelerate, DeepSpeed and peft blocked, gives the in-memory network's output."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import configs
from distill import recipe
from scripts.cli import main
from student.model import StudentUNet
from tests.distill.test_recipe import ADVERSARIAL, ROOT, _fresh_accelerate_state, _overrides, data_root  # noqa: F401
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


@pytest.mark.parametrize("lora,adversarial", [(False, True), (True, False)],
                         ids=["full-ema-with-discriminator", "lora-merged"])  # fmt: skip
def test_export_matches_the_in_memory_network(data_root, tmp_path, lora, adversarial):  # noqa: F811
    extra = ("student.lora={rank: 4, alpha: 4}", "optim.lr=1e-2") if lora else ()
    extra += ADVERSARIAL if adversarial else ()
    run = _train(tmp_path / "run", data_root, *extra)
    network = run.plain_student if lora else run.target  # the LoRA student itself / the EMA target
    assert network.has_lora == lora and (network is run.plain_student) == lora

    out = tmp_path / "export"
    assert main(["export", str(run.out), str(out)]) == 0
    state = load_file(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    umask = os.umask(0o077)
    os.umask(umask)
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o666 & ~umask}  # like any new file
    assert config["source"]["step"] == 2 and config["source"]["checkpoint"] == "step_0000002"
    assert not any("lora_" in k or "base_layer" in k for k in state)
    if adversarial:  # the discriminator is training state: in the checkpoint, never in the export
        assert (run.out / "checkpoints" / "step_0000002" / "discriminator.safetensors").is_file()
        assert not any("discriminator" in p.name for p in out.rglob("*"))
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


def test_student_init_starts_student_and_target_from_an_export(data_root, tmp_path):  # noqa: F811
    import student

    run = _train(tmp_path / "run", data_root)
    out = tmp_path / "export"
    assert main(["export", str(run.out), str(out)]) == 0
    cfg = configs.load("distill/tiny", _overrides(tmp_path / "cont", data_root, f"+student.init={out}"))
    cont = recipe.setup(cfg)
    cont.writer.close()
    exported = student.load(out).state_dict()
    for net in (cont.plain_student, cont.target):
        assert net is not None and all(torch.equal(v, exported[k]) for k, v in net.state_dict().items())
    fresh = recipe.build_student(cfg, run.teacher)[0].state_dict()  # teacher-initialised, as without student.init
    assert any(not torch.equal(exported[k], v) for k, v in fresh.items())  # so the check has teeth
    with pytest.raises(ValueError, match="LoRA"):
        recipe.init_from_export(recipe.build_student(configs.load("distill/tiny", ["student.lora={rank: 4, alpha: 4}"]),
                                                     run.teacher)[0], None, str(out))  # fmt: skip


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


ALONE = """
import sys, torch
for name in {blocked!r}:
    sys.modules[name] = None
import student
from student.sampler import lcm_timesteps, sample_lcm
from teacher.conditioning import encode_condition, latent_mask
from teacher.sampler import repeated_noise
b = student.load_bundle(sys.argv[1])
r, f = b.resolution, b.num_frames
h = r // b.vae.scale_factor
g = torch.Generator().manual_seed(0)
pixels = torch.rand(1, 3, f, r, r, generator=g) * 2 - 1
mask = b.mask.expand(1, 1, f, r, r)
with torch.no_grad():
    masked, ref = encode_condition(b.vae, pixels, mask, g)
    audio = b.whisper.features(torch.randn(f * 640, generator=g).numpy() * 0.1)[None]
    x0 = sample_lcm(b.denoiser, lcm_timesteps(b.steps), repeated_noise((1, 4, f, h, h), g),
                    latent_mask(mask, h), masked, ref, audio, w=b.w)
    frames = b.vae.decode(x0)
assert torch.isfinite(frames).all() and frames.shape == (1, 3, f, r, r), frames.shape
print(b.steps, b.num_frames, b.resolution, b.denoiser.settings.timestep_scaling)
"""


def test_export_folder_alone_runs_the_student(data_root, tmp_path):  # noqa: F811
    """The export is self-contained: copied alone elsewhere, it rebuilds the student with the denoiser
    settings it was trained with (not the defaults) and runs a sampler step through its own VAE and Whisper."""
    import shutil

    run = _train(tmp_path / "run", data_root, "distill.timestep_scaling=8.0")
    assert main(["export", str(run.out), str(tmp_path / "export"), "--steps", "2"]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["denoiser"]["timestep_scaling"] == 8.0 and config["denoiser"]["sigma_data"] == 0.5
    assert config["inference"] | {"teacher": None} == {"resolution": 64, "num_frames": 4, "steps": 2, "w": 1.5,
                                                        "vae": None, "whisper": None, "mask": None, "teacher": None}
    alone = tmp_path / "elsewhere" / "student"
    shutil.copytree(tmp_path / "export", alone)
    shutil.rmtree(run.out)  # nothing of the run is left
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", ALONE.format(blocked=BLOCKED), str(alone)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["2", "4", "64", "8.0"]


def test_export_copies_the_teachers_files(tmp_path):
    """VAE folder, Whisper file and mask image named by the teacher config are copied into the export,
    and ``load_bundle`` reads them from there; a missing one is a clear error."""
    import cv2
    from omegaconf import OmegaConf

    import student
    from distill.export import ExportError, copy_inference_files
    from tests.student import tiny_teacher

    mask = np.ones((32, 32), np.uint8) * 255
    mask[20:] = 0
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    (tmp_path / "tiny.pt").write_bytes(b"not read by the copy")
    tcfg = OmegaConf.create({"name": "t", "files": {"vae": str(ROOT / "assets/toy_teacher/vae"),
                             "whisper": str(tmp_path / "tiny.pt")},
                             "data": {"resolution": 64, "num_frames": 4, "mask_image_path": str(tmp_path / "mask.png")},
                             "sampler": {"w": 1.5}})  # fmt: skip
    out = tmp_path / "export"
    inference = copy_inference_files(tcfg, out, steps=1)
    assert (inference["vae"], inference["whisper"], inference["mask"]) == ("vae", "whisper/tiny.pt", "mask/mask.png")
    assert (out / "vae" / "config.json").is_file() and (out / "whisper" / "tiny.pt").is_file()
    inference["whisper"] = None  # the bytes above are not a checkpoint
    net = StudentUNet.from_teacher(tiny_teacher())
    student.save(net, out, inference=inference, dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in load_file(str(out / "model.safetensors")).values())
    bundle = student.load_bundle(out)
    assert bundle.denoiser.net.dtype == torch.float32  # half weights are computed in float32 on the CPU
    scale = json.loads((out / "vae/config.json").read_text())["scaling_factor"]
    assert bundle.vae.scaling_factor == pytest.approx(scale)
    assert float(bundle.mask[:20].min()) == 1.0 and float(bundle.mask[-8:].max()) == 0.0
    tcfg.files.vae = str(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="nowhere"):
        copy_inference_files(tcfg, tmp_path / "export2", steps=1)
    (out / "mask" / "mask.png").unlink()
    with pytest.raises(student.io.NotAnExportError, match="incomplete"):
        student.load_bundle(out)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_exported_files_honour_the_umask(tmp_path, umask):
    """model.safetensors came out 0600 (safetensors creates its files so): the export's files get the mode an
    ordinary new file gets, 0o666 less the umask (0644 under 022), so others can read a shared export."""
    import student
    from student.io import new_file_mode
    from tests.student import tiny_teacher

    net = StudentUNet.from_teacher(tiny_teacher())
    old = os.umask(umask)
    try:
        assert new_file_mode() == 0o666 & ~umask and os.umask(umask) == umask  # the umask is left as it was
        student.save(net, tmp_path / "export")
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "export").iterdir()}
    assert modes == {"model.safetensors": 0o666 & ~umask, "config.json": 0o666 & ~umask}
