"""``turbosync distill``: the latent consistency distillation recipe on accelerate (and DeepSpeed).

    train(configs.load("distill/tiny", ["run.max_steps=8"]))

The step itself is ``distill.step.distill_step``; this file adds what a run needs around it:
building the teacher, student and data from the config, accelerate (mixed precision, gradient
accumulation, data parallel, DeepSpeed ZeRO through ``DeepSpeedPlugin``), non-finite loss
skipping, checkpoints with an exact resume (``distill.checkpoint``), tensorboard and tqdm.
This is the only module of the project that imports accelerate.

Adversarial aux terms (``losses.adversarial``) bring their discriminators: one AdamW over all of them
(``disc_optim``: lr, betas, weight_decay), stepped after each student step on the step's ``disc_loss``
(gradients averaged over processes; not under DeepSpeed), saved with every checkpoint and restored on resume,
never exported. ``student.init``: an export folder (``turbosync export``) whose weights start the student and
its EMA target (continuing a distilled student instead of starting from the teacher).

RUN_DIR (``run.output_dir``) holds ``config.yaml`` (the resolved config), ``losses.jsonl`` (one
line per step), ``logs/`` (tensorboard), ``checkpoints/step_XXXXXXX`` and, at the end,
``rank{r}.json`` (final step and a hash of the weights each process holds).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedType, set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn

import configs
from distill import checkpoint as ckpt
from distill.data import PrepareConfig, encode_latents, list_shards, prepare
from distill.step import StepLosses, build_losses, distill_step, ema_update, make_target
from losses.adversarial import DISC_BETAS, DISC_LR
from student.denoiser import DenoiserSettings, StudentDenoiser
from student.model import StudentUNet
from student.sampler import lcm_timesteps, sample_lcm
from teacher.conditioning import latent_mask
from teacher.loading import freeze
from teacher.sampler import OFFICIAL_W, alphas_cumprod, repeated_noise

BATCH_KEYS = ("latents", "masked_latents", "ref_latents", "audio_embeds")
# real frames (the discriminator's real input), SyncNet mel windows and off-sync ones (the sync loss's inputs)
OPTIONAL_KEYS = ("frames", "mel", "mel_negatives")
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss or gradient norm."""


# =========================================================================== building from the config
def teacher_config(cfg: DictConfig) -> DictConfig:
    """The teacher's config: ``teacher.preset`` (a configs/teacher preset) merged with ``teacher.overrides``,
    or, with ``preset: null``, the inline ``teacher`` node itself (``unet`` and ``vae`` nodes)."""
    node = cfg.teacher
    if node.get("preset"):
        merged = OmegaConf.merge(configs.load(node.preset), node.get("overrides") or {})
        assert isinstance(merged, DictConfig)
        return merged
    return node


def build_teacher_unet(tcfg: DictConfig, seed: int, fill_zero_init_std: float | None = None) -> nn.Module:
    """The frozen teacher U-Net. Random weights (``files.unet: null``) are drawn from ``seed``, so
    ``turbosync export`` rebuilds the same teacher; ``fill_zero_init_std`` refills the tensors
    LatentSync zero-initialises (conv_in, conv_out, motion-module outputs), which would make a
    random teacher predict eps = 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = configs.instantiate(tcfg.unet)
        if fill_zero_init_std:
            with torch.no_grad():
                for p in unet.parameters():
                    if (p == 0).all():
                        p.normal_(0.0, float(fill_zero_init_std))
    return freeze(unet)


def build_student(cfg: DictConfig, teacher: nn.Module) -> tuple[StudentUNet, nn.Module]:
    """(student, target): the teacher-initialised student (full or LoRA) and its target network."""
    lora = cfg.student.get("lora")
    lora = None if lora is None else OmegaConf.to_container(lora, resolve=True)
    settings = DenoiserSettings.from_mapping(OmegaConf.to_container(cfg.distill, resolve=True))
    student = StudentUNet.from_teacher(teacher, lora=lora, w_embed_dim=int(cfg.student.get("w_embed_dim", 256)),
                                       denoiser_settings=settings)  # fmt: skip
    student.enable_gradient_checkpointing(bool(cfg.student.get("gradient_checkpointing", False)))
    return student, make_target(student, cfg.distill)


def build_optimizer(params: list[nn.Parameter], o: DictConfig, max_steps: int):
    """AdamW and a LambdaLR: linear warm-up over ``warmup_steps``, then ``schedule`` (constant/linear/cosine)."""
    opt = torch.optim.AdamW(params, lr=float(o.lr), betas=tuple(o.betas), weight_decay=float(o.weight_decay),
                            eps=float(o.get("eps", 1e-8)))  # fmt: skip
    factor = functools.partial(lr_factor, warmup=int(o.warmup_steps), total=max_steps, schedule=str(o.schedule))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule must be constant, linear or cosine, got {schedule!r}")


def ensure_data(cfg: DictConfig, tcfg: DictConfig, vae: nn.Module) -> Path:
    """``data.root`` with shards and latent caches: a synthetic set is built when it has no shards.

    Runs that share a data root (``scripts/bench_losses --jobs 2`` on a fresh machine) take turns: an
    inter-process lock (``filelock``, ``DATA_ROOT/.ensure_data.lock``) is held while the set is built and its
    latents cached, so the second run finds them made instead of racing the first over the same files.
    """
    from filelock import FileLock

    root, syn = Path(cfg.data.root), cfg.data.synthetic
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".ensure_data.lock"):
        has_shards = (root / "shards").is_dir() and bool(list_shards(root))
        if not has_shards:
            if syn is None:
                raise FileNotFoundError(f"{root} has no shards and data.synthetic is null: "
                                        "run `turbosync prepare` first")
            from distill.synthworld import synth_dataset

            synth_dataset(root / "synthetic_src", clips=int(syn.clips), resolution=int(syn.resolution),
                          seconds=float(syn.seconds), seed=int(syn.seed))  # fmt: skip
            whisper = tcfg.get("files", {}).get("whisper")
            prep = PrepareConfig(resolution=int(cfg.data.resolution), min_frames=int(cfg.data.num_frames),
                                 whisper=whisper)  # fmt: skip
            prepare(root / "synthetic_src", root, prep)
        encode_latents(root, vae)
    return root


def deepspeed_plugin(path: str, grad_accum: int, max_grad_norm: float | None, micro_batch: int) -> DeepSpeedPlugin:
    """accelerate's DeepSpeed plugin for a JSON path or a name under configs/ (``deepspeed/zero2_8gpu``).
    "auto" entries are filled here (accumulation, clipping, micro batch) or by accelerate (bf16/fp16)."""
    named = configs.CONFIG_DIR / f"{str(path).removesuffix('.json')}.json"
    path = path if Path(path).is_file() or not named.is_file() else named
    plugin = DeepSpeedPlugin(hf_ds_config=str(path), gradient_accumulation_steps=int(grad_accum),
                             gradient_clipping=float(max_grad_norm or 0.0), zero3_init_flag=False)  # fmt: skip
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(micro_batch)
    return plugin


def make_accelerator(cfg: DictConfig) -> Accelerator:
    r, ds = cfg.run, cfg.get("deepspeed") or {}
    plugin = None
    if ds.get("config"):
        plugin = deepspeed_plugin(ds.config, r.grad_accum, cfg.optim.max_grad_norm, cfg.data.batch_size)
    return Accelerator(mixed_precision=str(r.mixed_precision), gradient_accumulation_steps=int(r.grad_accum),
                       cpu=bool(r.get("cpu", False)), deepspeed_plugin=plugin)  # fmt: skip


# =========================================================================== the run
@dataclass
class Run:
    """Everything the loop touches. ``student`` is the accelerate-wrapped student (DDP / DeepSpeed)."""

    cfg: DictConfig
    acc: Accelerator
    teacher: nn.Module
    vae: nn.Module
    student: nn.Module
    target: nn.Module
    optimizer: Any
    scheduler: Any
    dataset: Any
    out: Path
    generator: torch.Generator
    state: ckpt.RunState
    acp: torch.Tensor
    val_batch: dict[str, torch.Tensor]
    losses: StepLosses | None = None  # built once from cfg.distill (distill.step.build_losses)
    disc_optimizer: Any = None  # AdamW over the adversarial terms' discriminators (None without one)
    batches: Any = None
    writer: Any = None
    resumed_from: Path | None = None

    @property
    def plain_student(self) -> StudentUNet:
        return self.acc.unwrap_model(self.student)

    @property
    def online_target(self) -> bool:
        return self.target is self.plain_student

    @property
    def deepspeed(self) -> bool:
        return self.acc.distributed_type == DistributedType.DEEPSPEED

    @property
    def zero3(self) -> bool:
        return self.deepspeed and self.acc.state.deepspeed_plugin.zero_stage == 3


def _to_device_batch(batch: dict, latent_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: batch[k].to(device) for k in (*BATCH_KEYS, *OPTIONAL_KEYS) if k in batch}
    out["mask"] = latent_mask(batch["mask"], latent_size).to(device)  # pixel mask -> [B, 1, F, h, h]
    return out


def _step_seed(seed: int, rank: int) -> int:
    return int(hashlib.sha256(f"{seed}/{rank}".encode()).hexdigest()[:15], 16)


def setup(cfg: DictConfig) -> Run:
    """Build everything, resume when asked, and open the logs."""
    acc = make_accelerator(cfg)
    out = Path(cfg.run.output_dir)
    set_seed(int(cfg.run.seed))
    tcfg = teacher_config(cfg)
    teacher = build_teacher_unet(tcfg, int(cfg.run.seed), cfg.teacher.get("fill_zero_init_std"))
    student, target = build_student(cfg, teacher)
    if cfg.student.get("init"):
        init_from_export(student, target, cfg.student.init)
    vae = freeze(configs.instantiate(tcfg.vae)).to(acc.device)
    with acc.main_process_first():
        if acc.is_main_process:
            ensure_data(cfg, tcfg, vae)
        dataset = configs.instantiate(cfg.data.dataset)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer, scheduler = build_optimizer(params, cfg.optim, int(cfg.run.max_steps))
    wrapped, optimizer = acc.prepare(student, optimizer)
    target = student if target is student else target.to(acc.device)
    teacher.to(acc.device, DTYPES[str(cfg.run.mixed_precision)])
    h = int(cfg.data.resolution) // vae.scale_factor
    val = _to_device_batch(torch.utils.data.default_collate([dataset[0]]), h, acc.device)
    run = Run(cfg, acc, teacher, vae, wrapped, target, optimizer, scheduler, dataset, out,
              torch.Generator().manual_seed(_step_seed(int(cfg.run.seed), acc.process_index)),
              ckpt.RunState(world_size=acc.num_processes), alphas_cumprod().to(acc.device), val)  # fmt: skip
    run.losses = build_losses(cfg.distill, feature_unet=teacher).to(acc.device)  # the loss networks beside the step
    run.disc_optimizer = build_disc_optimizer(run)
    run.resumed_from = ckpt.resume_path(cfg.run.get("resume"), out / "checkpoints")
    if run.resumed_from is not None:
        load_checkpoint(run, run.resumed_from)
    run.batches = _batches(run, h)
    _open_logs(run)
    return run


def init_from_export(student: StudentUNet, target: nn.Module, path: str) -> None:
    """Load an export's weights (``student.io`` format, the EMA target of its run) into the student and its
    target. Raises ValueError for a LoRA student or an export of another architecture (strict load)."""
    from student import io

    if getattr(student, "has_lora", False):
        raise ValueError("student.init loads a full student; it cannot start a LoRA run")
    state = {k: v.float() for k, v in io.load(path).state_dict().items()}
    student.load_state_dict(state, strict=True)
    if target is not student:
        target.load_state_dict(state, strict=True)


def build_disc_optimizer(run: Run):
    """AdamW over every adversarial term's discriminator (moved to the device), from ``cfg.disc_optim``
    (defaults ``losses.adversarial.DISC_LR`` / ``DISC_BETAS``, no weight decay); None without a discriminator."""
    discs = run.losses.discriminators
    if not discs:
        return None
    if run.deepspeed:
        raise NotImplementedError("adversarial losses are not supported under DeepSpeed (the discriminator's step)")
    o = run.cfg.get("disc_optim") or {}
    params = [p for d in discs.values() for p in d.to(run.acc.device).parameters()]
    return torch.optim.AdamW(params, lr=float(o.get("lr", DISC_LR)), betas=tuple(o.get("betas", DISC_BETAS)),
                             weight_decay=float(o.get("weight_decay", 0.0)))  # fmt: skip


def _disc_update(run: Run, finite: bool) -> None:
    """One discriminator step on the accumulated ``disc_loss`` gradients (averaged over processes)."""
    opt = run.disc_optimizer
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    if run.acc.num_processes > 1:
        for p in params:
            p.grad = run.acc.reduce(p.grad, "mean")
    if finite and all(torch.isfinite(p.grad).all() for p in params):
        opt.step()
    opt.zero_grad(set_to_none=True)


def _batches(run: Run, latent_size: int):
    """Endless device batches from the saved data position; the position advances as batches are consumed."""
    order = ckpt.DataOrder(len(run.dataset), int(run.cfg.data.batch_size), int(run.cfg.run.seed),
                           run.acc.num_processes, run.acc.process_index)  # fmt: skip
    sampler = ckpt.BatchSampler(order, run.state.epoch, run.state.index)
    workers = int(run.cfg.data.num_workers)
    loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))  # not the global RNG
    for batch in loader:
        run.state.epoch, run.state.index = order.advance(run.state.epoch, run.state.index)
        yield _to_device_batch(batch, latent_size, run.acc.device)


# =========================================================================== one optimizer step
def train_step(run: Run) -> tuple[dict[str, float], str]:
    """``run.grad_accum`` micro-batches, then one optimizer step. Returns (mean scalars, status) with
    status "ok", "nonfinite" (NaN/inf loss or gradient norm: no update, no EMA) or "overflow" (fp16
    loss scaler skipped the step)."""
    acc, accum = run.acc, int(run.cfg.run.grad_accum)
    sums: dict[str, float] = {}
    finite, status, lr = True, "ok", run.scheduler.get_last_lr()[0]  # the LR this step uses
    d_finite = True
    distill_cfg = OmegaConf.to_container(run.cfg.distill, resolve=True)
    for _ in range(accum):
        batch = next(run.batches)
        with acc.accumulate(run.student):
            with acc.autocast():
                out = distill_step(run.student, run.target, run.teacher, batch, distill_cfg, run.losses,
                                   generator=run.generator, alphas_cumprod=run.acp, decode=run.vae.decode,
                                   step=run.state.step)  # fmt: skip
            finite = finite and bool(torch.isfinite(out["loss"]))
            acc.backward(out["loss"])
            if "disc_loss" in out:  # the discriminators' own loss (real frames vs the detached x0)
                d_finite = d_finite and bool(torch.isfinite(out["disc_loss"]))
                (out["disc_loss"] / accum).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            if acc.sync_gradients:
                status = _apply_update(run, finite, sums)
                if run.disc_optimizer is not None:
                    _disc_update(run, d_finite)
    means = acc.reduce(torch.tensor(list(sums.values()), device=acc.device), "mean")  # over processes
    logs = {k: float(v) for k, v in zip(sums, means)}
    return {**logs, "lr": lr}, status


def _apply_update(run: Run, finite: bool, logs: dict[str, float]) -> str:
    acc, opt = run.acc, run.optimizer
    nonfinite = acc.reduce(torch.tensor(float(not finite), device=acc.device), "sum").item() > 0
    if nonfinite and not run.deepspeed:  # DeepSpeed skips non-finite steps itself (bf16/fp16 overflow check)
        opt.zero_grad(set_to_none=True)
        return "nonfinite"
    max_norm = run.cfg.optim.get("max_grad_norm")
    norm = acc.clip_grad_norm_(run.student.parameters(), float(max_norm)) if max_norm else None
    if norm is not None:
        logs["grad_norm"] = float(norm)
        if not math.isfinite(float(norm)) and str(run.cfg.run.mixed_precision) != "fp16" and not run.deepspeed:
            opt.zero_grad(set_to_none=True)
            return "nonfinite"
    opt.step()
    opt.zero_grad(set_to_none=True)
    if nonfinite:
        return "nonfinite"
    if opt.step_was_skipped:
        return "overflow"
    run.scheduler.step()
    _ema(run)
    return "ok"


def _ema(run: Run) -> None:
    if run.online_target:
        return
    gathered = contextlib.nullcontext()
    if run.zero3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(run.plain_student.parameters()))
    with gathered:
        ema_update(run.target, run.plain_student, float(run.cfg.distill.ema_decay))


def _count_nonfinite(run: Run, status: str) -> None:
    s, limit = run.state, int(run.cfg.run.max_consecutive_nonfinite)
    if status != "nonfinite":
        s.nonfinite_consecutive = 0
        return
    s.nonfinite_total += 1
    s.nonfinite_consecutive += 1
    if s.nonfinite_consecutive >= limit:
        raise NonFiniteLossError(
            f"stopping at step {s.step}: the loss or gradient norm was NaN/inf {s.nonfinite_consecutive} steps "
            f"in a row (run.max_consecutive_nonfinite={limit}; {s.nonfinite_total} non-finite steps in all). "
            f"Lower optim.lr, set optim.max_grad_norm, or use run.mixed_precision=bf16 instead of fp16."
        )


# =========================================================================== the loop
def train(cfg: DictConfig) -> Run:
    """Run the recipe to ``run.max_steps`` (resuming as ``run.resume`` says); returns the finished run."""
    from tqdm import tqdm

    run = setup(cfg)
    r = cfg.run
    frames = int(cfg.data.batch_size) * int(cfg.data.num_frames) * int(r.grad_accum) * run.acc.num_processes
    bar = tqdm(total=int(r.max_steps), initial=run.state.step, desc="distill", unit="step",
               disable=not run.acc.is_main_process)  # fmt: skip
    try:
        while run.state.step < int(r.max_steps):
            t0 = time.perf_counter()
            logs, status = train_step(run)
            run.state.step += 1
            logs["frames_per_s"] = frames / (time.perf_counter() - t0)
            _record(run, logs, status)
            _count_nonfinite(run, status)
            step = run.state.step
            if step % int(r.checkpoint_every) == 0 or step == int(r.max_steps):
                save_checkpoint(run)
            if r.sample_every and step % int(r.sample_every) == 0:
                log_samples(run)
            bar.update()
            bar.set_postfix(loss=f"{logs['loss']:.4g}", status=status)
    finally:
        bar.close()
        if run.writer is not None:
            run.writer.close()
    _finish(run)
    return run


def _open_logs(run: Run) -> None:
    """Main process: config.yaml, losses.jsonl (cut back to the resumed step) and the tensorboard writer."""
    if run.acc.is_main_process:
        run.writer = ckpt.open_run_logs(run.out, run.cfg, run.state, run.resumed_from)


def _record(run: Run, logs: dict[str, float], status: str) -> None:
    if not run.acc.is_main_process:
        return
    s = run.state
    line = {"step": s.step, **logs, "status": status}
    with open(run.out / "losses.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    if s.step % int(run.cfg.run.log_every) == 0 or status != "ok":
        for k, v in logs.items():
            run.writer.add_scalar(f"train/{k}", v, s.step)
        run.writer.add_scalar("train/nonfinite_total", s.nonfinite_total, s.step)


def _finish(run: Run) -> None:
    """Each process writes ``rank{r}.json``: the final step and hashes of the weights it holds."""
    acc = run.acc
    acc.wait_for_everyone()
    summary = {"step": run.state.step, "nonfinite_total": run.state.nonfinite_total,
               "student_sha256": ckpt.weights_hash(run.plain_student),
               "target_sha256": ckpt.weights_hash(run.target)}  # fmt: skip
    for name, disc in (run.losses.discriminators if run.losses is not None else {}).items():
        summary[f"{name}_discriminator_sha256"] = ckpt.weights_hash(disc)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / f"rank{acc.process_index}.json").write_text(json.dumps(summary, indent=1))
    acc.wait_for_everyone()
    acc.end_training()


# =========================================================================== checkpoints
def save_checkpoint(run: Run) -> None:
    """Atomic ``checkpoints/step_XXXXXXX``: main writes the models and optimizer, each rank its RNG."""
    acc, root = run.acc, run.out / "checkpoints"
    tmp = root / f".tmp_{ckpt.step_name(run.state.step)}"
    if acc.is_main_process:
        ckpt.begin(root, run.state.step)
    acc.wait_for_everyone()
    ckpt.save_rank_rng(tmp, acc.process_index, run.generator)
    student_state = _student_state(run)  # collective under ZeRO-3
    if run.deepspeed:
        acc.save_state(str(tmp / "engine"))  # the engine's model + partitioned optimizer
    if acc.is_main_process:
        ckpt.save_student(tmp, student_state)
        if not run.online_target:
            ckpt.save_target(tmp, run.target)
        if not run.deepspeed:
            ckpt.save_torch(run.optimizer.state_dict(), tmp / "optimizer.pt")
        ckpt.save_torch(run.scheduler.state_dict(), tmp / "scheduler.pt")
        if run.disc_optimizer is not None:
            ckpt.save_discriminators(tmp, run.losses.discriminators, run.disc_optimizer)
        if acc.scaler is not None:
            ckpt.save_torch(acc.scaler.state_dict(), tmp / "scaler.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        ckpt.commit(tmp, run.state, int(run.cfg.run.keep_last) or None)
    acc.wait_for_everyone()


def _student_state(run: Run) -> dict[str, torch.Tensor]:
    names = [n for n, p in run.plain_student.named_parameters() if p.requires_grad]
    if run.zero3:
        full = run.acc.get_state_dict(run.student)  # gathered on the main process
        return {n: full[n].detach().cpu().contiguous() for n in names if n in full}
    return ckpt.trainable_state(run.plain_student)


def load_checkpoint(run: Run, path: Path) -> None:
    """Restore models, optimizer, scheduler, counters, data position and this rank's RNG states."""
    state = ckpt.read_state(path)
    if state.world_size != run.acc.num_processes:
        raise ValueError(f"{path} was written by {state.world_size} processes, this run has {run.acc.num_processes}")
    if run.deepspeed:
        run.acc.load_state(str(path / "engine"))
    else:
        ckpt.load_student(path, run.plain_student)
        run.optimizer.load_state_dict(ckpt.load_torch(path / "optimizer.pt"))
    if not run.online_target:
        ckpt.load_target(path, run.target)
    run.scheduler.load_state_dict(ckpt.load_torch(path / "scheduler.pt"))
    if run.disc_optimizer is not None:
        ckpt.load_discriminators(path, run.losses.discriminators, run.disc_optimizer)
    if run.acc.scaler is not None and (path / "scaler.pt").is_file():
        run.acc.scaler.load_state_dict(ckpt.load_torch(path / "scaler.pt"))
    run.state = state
    ckpt.load_rank_rng(path, run.acc.process_index, run.generator)


# =========================================================================== sample strip
@torch.no_grad()
def sample_strip(model: nn.Module, vae: nn.Module, batch: dict[str, torch.Tensor], steps: list[int],
                 acp: torch.Tensor, w: float = OFFICIAL_W, seed: int = 0) -> torch.Tensor:  # fmt: skip
    """Rows: the real clip, then a ``sample_lcm`` result per step count; columns: frames. [3, R*H, F*W] in [0, 1].

    Uses the first clip of ``batch``, one repeated noise frame ("shared", LatentSync inference noise).
    """
    b = {k: v[:1] for k, v in batch.items()}
    dev = b["latents"].device
    noise = repeated_noise(b["latents"].shape, torch.Generator(dev).manual_seed(seed), device=dev)
    denoiser = StudentDenoiser(model, model.denoiser_settings, acp)
    rows = [vae.decode(b["latents"])]
    for n in steps:
        x0 = sample_lcm(denoiser, lcm_timesteps(n), noise, b["mask"], b["masked_latents"], b["ref_latents"],
                        b["audio_embeds"], w=w, generator=torch.Generator(dev).manual_seed(seed + 1))  # fmt: skip
        rows.append(vae.decode(x0.float()))
    video = torch.cat(rows).float().clamp(-1, 1).add(1).div(2)  # [R, 3, F, H, W]
    r, c, f, h, wd = video.shape
    return video.permute(1, 0, 3, 2, 4).reshape(c, r * h, f * wd).cpu()


def log_samples(run: Run) -> None:
    """Every process samples (a ZeRO-3 forward is collective); the main process writes the image."""
    model = run.plain_student if run.online_target else run.target
    was_training = model.training
    model.eval()
    with run.acc.autocast():
        strip = sample_strip(model, run.vae, run.val_batch, list(run.cfg.run.sample_steps), run.acp,
                             seed=int(run.cfg.run.seed))  # fmt: skip
    model.train(was_training)
    if run.acc.is_main_process:
        run.writer.add_image("samples/real_then_" + "_".join(map(str, run.cfg.run.sample_steps)) + "_steps",
                             strip, run.state.step)  # fmt: skip
