"""The distillation recipe: DeepSpeed configs, data order, RNG and atomic checkpoints; an exact resume
after SIGKILL; a 2-process run whose ranks hold identical weights; non-finite steps; the switches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import configs
from distill import checkpoint as ckpt
from distill import recipe

ROOT = Path(__file__).resolve().parents[2]
DS_CONFIGS = sorted((ROOT / "configs" / "deepspeed").glob("*.json"))
# 22 clips of 4 frames (2 synthetic shards of 25 frames), batch 2 -> 11 batches an epoch
SMALL = ["run.sample_every=0", "run.log_every=1", "data.batch_size=2", "data.num_frames=4"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny preset's synthetic data set, built once (synth + prepare + teacher-VAE latents)."""
    root = tmp_path_factory.mktemp("distill_data")
    cfg = configs.load("distill/tiny", [f"data.root={root}"])
    tcfg = recipe.teacher_config(cfg)
    recipe.ensure_data(cfg, tcfg, configs.instantiate(tcfg.vae))
    assert len(configs.instantiate(cfg.data.dataset)) == 22
    return root


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _overrides(out: Path, data_root: Path, *extra: str) -> list[str]:
    return [f"run.output_dir={out}", f"data.root={data_root}", *SMALL, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli(overrides: list[str], launcher: tuple[str, ...] = (sys.executable,)) -> list[str]:
    return [*launcher, "-m", "scripts.cli", "distill", "--config", "distill/tiny", *overrides]


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]


def test_runs_sharing_a_data_root_take_turns_building_it(tmp_path):
    """Two runs started at once on a fresh data root (bench_losses --jobs 2) raced over the same cache files and one
    failed; ensure_data now holds DATA_ROOT/.ensure_data.lock while it builds: a second caller waits for it."""
    import threading

    from filelock import FileLock

    from distill.data.dataset import list_shards

    root = tmp_path / "data"
    cfg = configs.load("distill/tiny", [f"data.root={root}"])
    tcfg = recipe.teacher_config(cfg)
    vae = configs.instantiate(tcfg.vae)
    root.mkdir()
    held = FileLock(root / ".ensure_data.lock")
    held.acquire()  # another run building the set
    errors: list[BaseException] = []

    def run():
        try:
            recipe.ensure_data(cfg, tcfg, vae)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive() and [p.name for p in root.iterdir()] == [".ensure_data.lock"]  # waiting, nothing written
    held.release()
    worker.join(timeout=600)
    assert not worker.is_alive() and not errors
    shards = list_shards(root)
    assert len(shards) == 2 and all((s.path / "latents.npz").is_file() for s in shards)
    assert not list(root.glob("shards/*/.latents.*"))  # the per-process temporaries were renamed into place


# ------------------------------------------------------------------ units
@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.stem)
def test_deepspeed_configs_build_the_plugin(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    plugin = recipe.deepspeed_plugin(str(path), grad_accum=4, max_grad_norm=1.0, micro_batch=2)
    plugin.set_mixed_precision("bf16")
    cfg = plugin.deepspeed_config
    assert plugin.zero_stage == (3 if "zero3" in path.stem else 2)
    assert plugin.hf_ds_config.is_zero3() == (plugin.zero_stage == 3)
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["gradient_clipping"] == 1.0
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert not [k for k, v in cfg["zero_optimization"].items() if v == "auto"]  # nothing left for accelerate to guess
    parsed = DeepSpeedConfig(dict(cfg))  # DeepSpeed's own schema accepts it (world size 1)
    assert parsed.zero_optimization_stage == plugin.zero_stage and parsed.train_batch_size == 8
    assert parsed.bfloat16_config.check_grad_overflow  # bf16 steps with NaN/inf gradients are skipped


def test_data_order_is_deterministic_disjoint_and_resumable():
    ranks = [ckpt.DataOrder(23, batch_size=2, seed=5, world_size=2, rank=r) for r in range(2)]
    assert ranks[0].batches_per_epoch == 5  # 23 // 4, the tail is dropped
    for epoch in range(2):
        seen = [i for j in range(5) for r in ranks for i in r.batch(epoch, j)]
        assert len(seen) == len(set(seen)) == 20  # ranks never share an item within an epoch
    assert not np.array_equal(ranks[0].permutation(0), ranks[0].permutation(1))  # reshuffled per epoch
    stream = ranks[1].batches(0, 0)
    first = [next(stream) for _ in range(8)]  # crosses into epoch 1
    resumed = ranks[1].batches(1, 1)  # position after 6 batches: (epoch 1, batch 1)
    assert [next(resumed) for _ in range(2)] == first[6:]
    pos = (0, 0)
    for _ in range(6):
        pos = ranks[1].advance(*pos)
    assert pos == (1, 1)
    again = ckpt.DataOrder(23, 2, seed=5, world_size=2, rank=1)
    assert np.array_equal(again.permutation(3), ranks[1].permutation(3))  # a pure function of (seed, epoch)


def test_rng_state_round_trip(tmp_path):
    import random

    g = torch.Generator().manual_seed(3)
    ckpt.save_rank_rng(tmp_path, 0, g)

    def draws():
        return random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=g).tolist()

    first = draws()
    g2 = torch.Generator().manual_seed(99)
    ckpt.load_rank_rng(tmp_path, 0, g2)
    g = g2
    assert draws() == first
    with pytest.raises(FileNotFoundError, match="rank 1"):
        ckpt.load_rank_rng(tmp_path, 1, g)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        tmp = ckpt.begin(root, step)
        (tmp / "student.safetensors").write_bytes(b"x")
        ckpt.commit(tmp, ckpt.RunState(step=step, epoch=1, index=step), keep_last=2)
    ckpt.begin(root, 8)  # a checkpoint cut short by a kill: never listed
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_0000004", "step_0000006"]
    assert ckpt.latest_checkpoint(root).name == "step_0000006"
    assert ckpt.read_state(root / "step_0000006") == ckpt.RunState(step=6, epoch=1, index=6)
    assert recipe.lr_factor(0, 2, 10, "cosine") == 0.5 and recipe.lr_factor(10, 2, 10, "cosine") == 0.0
    assert recipe.lr_factor(6, 2, 10, "linear") == 0.5 and recipe.lr_factor(50, 2, 10, "constant") == 1.0


# ------------------------------------------------------------------ end to end (subprocesses)
def _wait_then_kill(proc: subprocess.Popen, run_dir: Path, checkpoint: str, logged_step: int) -> None:
    """SIGKILL ``proc`` once ``checkpoint`` exists and ``logged_step`` is in losses.jsonl (between checkpoints)."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = (run_dir / "checkpoints" / checkpoint / ckpt.STATE_FILE).is_file()
        if done and (run_dir / "losses.jsonl").is_file() and len(_losses(run_dir)) >= logged_step:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)


# the lip PatchGAN (small, R1 on) behind a warm-up: its own optimizer, its state in every checkpoint
ADVERSARIAL = ("+distill.aux.adv={loss: {_target_: losses.adversarial.LipAdversarial, r1_gamma: 0.1, "
               "discriminator: {_target_: losses.adversarial.MultiScalePatchGAN, channels: 8}}, "
               "inputs: {frames: x0_frames, mask: mask}, real: frames}",
               "+distill.weights.adv=0.1", "+distill.schedules={adv: {warmup: 6}}", "+disc_optim={lr: 1e-3}",
               "data.dataset.pixels=true")  # fmt: skip


def test_sigkill_resume_matches_uninterrupted_run(data_root, tmp_path, variant="adversarial"):
    """Killed with SIGKILL after the step-3 checkpoint, resumed with resume=auto: the same losses, step for
    step, and the same final weights as a run never interrupted (data crosses an epoch; samples at 4, 8, 12).
    The run trains a discriminator beside the student (its weights and optimizer resumed too): a superset of the
    plain run's state (``variant="plain"`` checks the plain recipe alone; CI runs the superset only, for time)."""
    extra = ("run.max_steps=12", "run.checkpoint_every=3", "run.keep_last=2", "run.sample_every=4")
    extra += ADVERSARIAL if variant == "adversarial" else ()
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cli(_overrides(full, data_root, *extra)), cwd=ROOT, env=_env(), check=True, capture_output=True)

    proc = subprocess.Popen(_cli(_overrides(cut, data_root, *extra)), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_then_kill(proc, cut, "step_0000003", logged_step=4)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 4 <= len(_losses(cut)) < 12 and not (cut / "rank0.json").exists()
    resumed = subprocess.run(_cli(_overrides(cut, data_root, *extra)), cwd=ROOT, env=_env(), check=True,
                             capture_output=True, text=True)  # fmt: skip
    assert "resuming from" in resumed.stdout and "(step 3," in resumed.stdout

    a, b = _losses(full), _losses(cut)
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(1, 13))
    for x, y in zip(a, b):
        keys = ("loss", "consistency", "recon", "t_mean", "w_mean", "grad_norm", "lr")
        for key in keys + (("adv", "adv_disc", "adv_weight", "disc_loss") if variant == "adversarial" else ()):
            assert abs(x[key] - y[key]) <= 1e-6 * max(1.0, abs(x[key])), (x["step"], key, x[key], y[key])
    assert len({x["loss"] for x in a}) > 6  # real, varying losses
    ra, rb = (json.loads((d / "rank0.json").read_text()) for d in (full, cut))
    assert ra == rb  # student, target (and discriminator) weights bit-identical
    if variant == "adversarial":
        last = full / "checkpoints" / "step_0000012"
        assert "adv_discriminator_sha256" in ra and (last / "disc_optimizer.pt").is_file()
        assert [x["adv_weight"] for x in a[:7]] == pytest.approx([0.1 * k / 6 for k in range(7)])  # the warm-up
        assert len({x["adv_disc"] for x in a}) > 6
    assert [p.name for p in ckpt.list_checkpoints(full / "checkpoints")] == ["step_0000009", "step_0000012"]
    final = ckpt.read_state(full / "checkpoints" / "step_0000012")
    assert (final.epoch, final.index) == (1, 1)  # 12 batches: one epoch of 11, then one more
    _check_tensorboard(full / "logs")


def _check_tensorboard(logs: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/consistency", "train/lr", "train/frames_per_s", "train/grad_norm"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in events.Scalars(tag)] == list(range(1, 13))
    assert min(e.value for e in events.Scalars("train/frames_per_s")) > 0
    [image_tag] = tags["images"]
    images = events.Images(image_tag)
    assert [e.step for e in images] == [4, 8, 12]
    # rows: real clip + 1, 2, 4 steps, 64 px each; columns: 4 frames of 64 px
    assert (images[0].height, images[0].width) == (4 * 64, 4 * 64)


def test_two_processes_hold_identical_weights(data_root, tmp_path):
    out = tmp_path / "ddp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    cmd = _cli(_overrides(out, data_root, "run.max_steps=3", "run.checkpoint_every=3"), launcher)
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["step"] == r1["step"] == 3
    assert r0["student_sha256"] == r1["student_sha256"] and r0["target_sha256"] == r1["target_sha256"]
    state = ckpt.read_state(out / "checkpoints" / "step_0000003")
    assert state.world_size == 2 and (state.epoch, state.index) == (0, 3)  # 3 global batches of 2 x 2 clips
    assert {p.name for p in (out / "checkpoints" / "step_0000003").iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt"}
    lines = _losses(out)
    assert len(lines) == 3 and all(19 <= x["t_mean"] <= 999 for x in lines)  # means over ranks, not sums


# ------------------------------------------------------------------ in process
def _train(out: Path, data_root: Path, *extra: str):
    return recipe.train(configs.load("distill/tiny", _overrides(out, data_root, *extra)))


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(data_root, tmp_path, monkeypatch):
    calls, emas = {"n": 0}, {"n": 0}
    real_step, real_ema = recipe.distill_step, recipe.ema_update

    def flaky(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (2, 3):
            out["loss"] = out["loss"] * float("nan")
        return out

    def counted_ema(*args, **kwargs):
        emas["n"] += 1
        return real_ema(*args, **kwargs)

    monkeypatch.setattr(recipe, "distill_step", flaky)
    monkeypatch.setattr(recipe, "ema_update", counted_ema)
    run = _train(tmp_path / "flaky", data_root, "run.max_steps=5", "run.max_consecutive_nonfinite=3")
    assert [x["status"] for x in _losses(run.out)] == ["ok", "nonfinite", "nonfinite", "ok", "ok"]
    assert run.state.nonfinite_total == 2 and run.state.nonfinite_consecutive == 0
    assert emas["n"] == 3  # no EMA update on a skipped step
    adam_steps = {int(s["step"]) for s in run.optimizer.state_dict()["state"].values()}
    assert adam_steps == {3} and run.scheduler.last_epoch == 3  # no optimizer or LR step either
    assert all(torch.isfinite(p).all() for p in run.plain_student.parameters())

    monkeypatch.setattr(recipe, "distill_step", lambda *a, **k: {**real_step(*a, **k), "loss": torch.tensor(
        float("inf"), requires_grad=True)})  # fmt: skip
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(recipe.NonFiniteLossError, match="NaN/inf 2 steps in a row"):
        _train(tmp_path / "broken", data_root, "run.max_steps=5", "run.max_consecutive_nonfinite=2")
    assert len(_losses(tmp_path / "broken")) == 2


def test_gradient_checkpointing_accumulation_and_bf16(data_root, tmp_path):
    plain = _train(tmp_path / "plain", data_root, "run.max_steps=3", "run.resume=null")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    ckpted = _train(tmp_path / "ckpt", data_root, "run.max_steps=3", "student.gradient_checkpointing=true")
    assert ckpted.plain_student.unet.down_blocks[0].gradient_checkpointing
    for x, y in zip(_losses(plain.out), _losses(ckpted.out)):
        assert abs(x["loss"] - y["loss"]) <= 1e-6 * max(1.0, x["loss"])  # recomputation changes nothing
    AcceleratorState._reset_state(reset_partial_state=True)
    mixed = _train(tmp_path / "bf16", data_root, "run.max_steps=2", "run.grad_accum=2", "run.mixed_precision=bf16",
                   "run.sample_every=2")  # fmt: skip
    assert mixed.teacher.dtype == torch.bfloat16 and mixed.target.dtype == torch.float32
    assert all(np.isfinite(x["loss"]) and x["status"] == "ok" for x in _losses(mixed.out))
    assert (mixed.state.epoch, mixed.state.index) == (0, 4)  # 2 steps x 2 micro-batches


def test_fresh_run_refuses_to_overwrite_checkpoints(data_root, tmp_path):
    _train(tmp_path / "r", data_root, "run.max_steps=1")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(FileExistsError, match="resume=auto"):
        _train(tmp_path / "r", data_root, "run.max_steps=2", "run.resume=null")


def test_setup_puts_the_loss_networks_on_the_accelerators_device(data_root, tmp_path, monkeypatch):
    from distill.step import StepLosses

    moved, real_to = [], StepLosses.to
    monkeypatch.setattr(StepLosses, "to", lambda self, device: moved.append(device) or real_to(self, device))
    run = recipe.setup(configs.load("distill/tiny", _overrides(tmp_path / "r", data_root, "run.max_steps=1")))
    assert moved == [run.acc.device]


def test_device_batch_keeps_the_sync_losss_inputs():
    """The batch filter passes every key a loss may take: mel and mel_negatives (SyncLoss), frames (real)."""
    from distill.recipe import _to_device_batch

    batch = {"latents": torch.zeros(2, 4, 8, 4, 4), "masked_latents": torch.zeros(2, 4, 8, 4, 4),
             "ref_latents": torch.zeros(2, 4, 8, 4, 4), "audio_embeds": torch.zeros(2, 8, 50, 8),
             "mask": torch.ones(2, 1, 8, 32, 32), "frames": torch.zeros(2, 3, 8, 32, 32),
             "mel": torch.zeros(2, 1, 80, 26), "mel_negatives": torch.zeros(2, 4, 1, 80, 26),
             "shard": torch.zeros(2), "start": torch.zeros(2)}  # fmt: skip
    out = _to_device_batch(batch, 4, torch.device("cpu"))
    assert {"frames", "mel", "mel_negatives"} <= out.keys() and "shard" not in out
    assert out["mask"].shape == (2, 1, 8, 4, 4)
