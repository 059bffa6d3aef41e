"""What an exact resume needs: atomic step directories, RNG states, a resumable data order.

A run directory holds ``checkpoints/step_XXXXXXX/``::

    student.safetensors      trainable parameters of the student (all of them, or LoRA + guidance embedding)
    target.safetensors       the EMA target network (absent when the target is the online student)
    optimizer.pt             optimizer state (absent under DeepSpeed: ``engine/`` holds it)
    scheduler.pt             LR scheduler state
    rng_rank{r}.pt           python, numpy, torch (and CUDA) RNG states and the step generator of rank r
    discriminator.safetensors, disc_optimizer.pt   adversarial losses only: the discriminators' weights
                             ({term}.{param}) and their optimizer (training state: ``turbosync export`` drops it)
    state.json               step, data position (epoch, batch index), non-finite counters, world size

A checkpoint is written to ``checkpoints/.tmp_step_XXXXXXX`` and renamed when complete, so a
run killed at any moment leaves either the whole directory or none; ``keep_last`` prunes old ones.
Nothing here imports accelerate: the recipe passes plain modules, optimizers and generators.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

PREFIX = "step_"
STATE_FILE = "state.json"


# --------------------------------------------------------------------------- data order
@dataclass(frozen=True)
class DataOrder:
    """Deterministic, resumable order of ``size`` items for ``world_size`` processes.

    Epoch e is a permutation seeded by (seed, e), cut into global batches of
    ``batch_size * world_size`` items (the incomplete tail is dropped); rank r takes the r-th
    slice of each global batch. A position is (epoch, index of the next global batch).
    """

    size: int
    batch_size: int
    seed: int = 0
    world_size: int = 1
    rank: int = 0

    @property
    def batches_per_epoch(self) -> int:
        n = self.size // (self.batch_size * self.world_size)
        if n == 0:
            raise ValueError(f"{self.size} items cannot fill one global batch of {self.batch_size} x {self.world_size}")
        return n

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def batch(self, epoch: int, index: int) -> list[int]:
        """This rank's item indices of global batch ``index`` of ``epoch``."""
        start = (index * self.world_size + self.rank) * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size].tolist()

    def advance(self, epoch: int, index: int) -> tuple[int, int]:
        """The position after consuming global batch ``index`` of ``epoch``."""
        return (epoch, index + 1) if index + 1 < self.batches_per_epoch else (epoch + 1, 0)

    def batches(self, epoch: int = 0, index: int = 0) -> Iterator[list[int]]:
        """Endless batches of item indices from position (epoch, index); a DataLoader ``batch_sampler``."""
        while True:
            perm = self.permutation(epoch)
            for i in range(index, self.batches_per_epoch):
                start = (i * self.world_size + self.rank) * self.batch_size
                yield perm[start : start + self.batch_size].tolist()
            epoch, index = epoch + 1, 0


class BatchSampler:
    """``DataOrder.batches`` from a fixed position, as an iterable a ``DataLoader`` accepts."""

    def __init__(self, order: DataOrder, epoch: int = 0, index: int = 0):
        self.order, self.epoch, self.index = order, epoch, index

    def __iter__(self) -> Iterator[list[int]]:
        return self.order.batches(self.epoch, self.index)


# --------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """Counters saved in ``state.json``; ``step`` counts finished optimizer steps (skipped ones included)."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next global batch within the epoch
    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0
    world_size: int = 1


# --------------------------------------------------------------------------- RNG
def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every RNG a training step may touch, as tensors and plain values (``torch.load(weights_only=True)`` safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},  # fmt: skip
        "torch": torch.get_rng_state(),
        "generator": None if generator is None else generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
    """Inverse of ``rng_state``."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if generator is not None:
        if state["generator"] is None:
            raise ValueError("the checkpoint holds no step-generator state")
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- module state
def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the parameters that require grad, by name."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().cpu().clone().contiguous() for n, t in module.state_dict().items()}


def load_trainable(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``trainable_state`` back; every trainable parameter must be present, nothing else."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(trainable - set(state)), sorted(set(state) - trainable)
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match the trainable parameters: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")  # fmt: skip
    module.load_state_dict(dict(state), strict=False)


# --------------------------------------------------------------------------- directories
def step_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (a run's ``checkpoints/``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def begin(root: str | os.PathLike, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of ``step`` (main process only)."""
    tmp = Path(root) / f".tmp_{step_name(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: RunState, keep_last: int | None) -> Path:
    """Write ``state.json``, rename ``tmp`` to its final name and prune to the newest ``keep_last``."""
    (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    final = tmp.parent / step_name(state.step)
    if final.exists():  # an older run's checkpoint of the same step (resume=none over an old run)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for old in list_checkpoints(tmp.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: str | os.PathLike) -> RunState:
    return RunState(**json.loads((Path(path) / STATE_FILE).read_text()))


# --------------------------------------------------------------------------- writing / reading pieces
def save_student(directory: Path, student_state: Mapping[str, torch.Tensor]) -> None:
    save_file(dict(student_state), str(directory / "student.safetensors"))


def save_target(directory: Path, target: nn.Module) -> None:
    save_file(full_state(target), str(directory / "target.safetensors"))


def load_student(directory: Path, student: nn.Module) -> None:
    load_trainable(student, load_file(str(directory / "student.safetensors")))


def load_target(directory: Path, target: nn.Module) -> None:
    target.load_state_dict(load_file(str(directory / "target.safetensors")), strict=True)


def save_discriminators(directory: Path, discriminators: Mapping[str, nn.Module], optimizer: Any) -> None:
    """The adversarial terms' discriminators ``{name: module}`` (keys ``name.param``) and their optimizer."""
    state = {f"{name}.{k}": v for name, d in discriminators.items() for k, v in full_state(d).items()}
    save_file(state, str(directory / "discriminator.safetensors"))
    save_torch(optimizer.state_dict(), directory / "disc_optimizer.pt")


def load_discriminators(directory: Path, discriminators: Mapping[str, nn.Module], optimizer: Any) -> None:
    """Inverse of ``save_discriminators`` (strict). Raises FileNotFoundError for a checkpoint without them."""
    path = directory / "discriminator.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no discriminator: it was written by a run without adversarial "
                                f"losses")  # fmt: skip
    state = load_file(str(path))
    for name, d in discriminators.items():
        prefix = f"{name}."
        d.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    optimizer.load_state_dict(load_torch(directory / "disc_optimizer.pt"))


def save_torch(obj: Any, path: Path) -> None:
    torch.save(obj, path)


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_rank_rng(directory: Path, rank: int, generator: torch.Generator | None) -> None:
    save_torch(rng_state(generator), directory / f"rng_rank{rank}.pt")


def load_rank_rng(directory: Path, rank: int, generator: torch.Generator | None) -> None:
    path = directory / f"rng_rank{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no RNG state for rank {rank}: resume with as many processes")
    set_rng_state(load_torch(path), generator)


# --------------------------------------------------------------------------- resume, logs, hashes
def resume_path(resume: Any, root: Path) -> Path | None:
    """The checkpoint ``run.resume`` names: "auto" = the latest under ``root`` (None if there is none),
    None = a fresh run (refused when ``root`` already holds checkpoints), else a checkpoint directory."""
    if resume in (None, False, "none", "never"):
        if latest_checkpoint(root) is not None:
            raise FileExistsError(f"{root} already holds checkpoints: set run.resume=auto to continue that run, "
                                  f"or choose another run.output_dir")  # fmt: skip
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(str(resume))
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"run.resume={resume!r} is not a checkpoint directory (no {STATE_FILE})")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The lines of a JSON-lines file, skipping a last line cut short by a kill."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def weights_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names and float32 values)."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def open_run_logs(out: Path, cfg: Any, state: RunState, resumed_from: Path | None,
                  logs: tuple[str, ...] = ("losses.jsonl",)) -> Any:
    """Main process of a training run: write ``config.yaml`` (resolved), cut each JSON-lines log in ``logs``
    back to ``state.step`` when resuming (emptied on a fresh run), and return a tensorboard ``SummaryWriter``
    on ``out/logs`` that purges the events after that step. Prints one line when resuming."""
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    for name in logs:
        kept = [ln for ln in read_jsonl(out / name) if ln["step"] <= state.step] if resumed_from else []
        (out / name).write_text("".join(json.dumps(ln) + "\n" for ln in kept))
    if resumed_from is not None:
        print(f"resuming from {resumed_from} (step {state.step}, epoch {state.epoch}, batch {state.index})", flush=True)
    return SummaryWriter(str(out / "logs"), purge_step=state.step + 1 if resumed_from else None)
