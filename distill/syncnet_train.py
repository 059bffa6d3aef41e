"""``turbosync train-syncnet``: train or adapt a StableSyncNet on in-sync / off-sync pairs.

    train_syncnet(configs.load("syncnet/train_toy", ["run.max_steps=8"]))

LatentSync's ``scripts/train_syncnet.py`` recipe (BCE of cos(v, a) against y, AdamW, gradient clipping)
on the project's machinery: accelerate (mixed precision, gradient accumulation, data parallel),
``distill.checkpoint`` step folders with an exact resume, tqdm, tensorboard, a held-out accuracy.
The paper's lessons (section 4) are the config's knobs: batch size (``data.batch_size`` x
``run.grad_accum`` x processes), frames per sample (the preset's window), offset correction of the
data before training (``data.offset_correction``), negatives at a random offset (``data.dataset``).

RUN_DIR (``run.output_dir``) holds ``config.yaml``, ``losses.jsonl`` (one line per step),
``heldout.jsonl`` (one line per evaluation), ``logs/`` (tensorboard), ``checkpoints/step_XXXXXXX``
(``syncnet.safetensors``, ``optimizer.pt``, ``scheduler.pt``, ``rng_rank{r}.pt``, ``state.json``) and, at
the end, ``syncnet.pt`` (LatentSync's format, ``{"state_dict": ..., "global_step": n}``), ``syncnet.yaml``
(the preset with ``files.syncnet`` pointing at it: ``turbosync eval sync --config RUN/syncnet.yaml``) and
``heldout.json`` (the final held-out accuracy).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

import configs
from distill import checkpoint as ckpt
from distill.syncnet_data import SyncPairDataset, SyncWindow, estimate_offsets, heldout_pairs
from losses.sync import sync_bce
from losses.syncnet import StableSyncNet, load_syncnet

__all__ = ["syncnet_step", "syncnet_config", "build_syncnet", "ensure_sync_data", "evaluate_pairs",
           "export_syncnet", "pair_metrics", "pair_similarities", "train_syncnet", "SyncRun"]

BATCH_KEYS = ("images", "mel", "y")


# =========================================================================== the step
def syncnet_step(net: nn.Module, batch: dict[str, torch.Tensor], threshold: float = 0.5,
                 hard_negatives: int | None = None) -> dict[str, torch.Tensor]:
    """One SyncNet training step's numbers.

    Pairs (``images [B, 3F, h, w]``, ``mel [B, 1, 80, L]``, ``y [B]``): ``loss`` = mean over the batch of
    ``losses.sync.sync_bce(v, a, y)`` (LatentSync's ``cosine_loss``); ``accuracy`` = fraction of pairs with
    ``(cos(v, a) > threshold) == y``.

    Groups (``SyncPairDataset(group_size=G)``: ``images [B, G, 3F, h, w]``, ``mel [B, G, 1, 80, L]``,
    ``y [B, G, G]``, ``mask [B, G, G]``): each of the ``B G`` windows is encoded once and every pair (mel a,
    faces v) of a group that ``mask`` keeps is scored with ``sync_bce``; the in-sync and the off-sync pairs
    weigh 1/2 each (``loss = (mean BCE of in-sync + mean BCE of off-sync) / 2``, the balance of the pair
    recipe and of the held-out measure), and ``accuracy`` is the mean of the two classes' accuracies.
    ``hard_negatives = k`` (groups only; online hard-negative mining) keeps in the loss only the ``k`` off-sync
    pairs of highest cos(v, a) of each mel window (all when it has fewer); the numbers still count every pair.

    Both: ``cos_pos`` / ``cos_neg`` = mean similarity of in-sync / off-sync pairs (NaN when the batch has none).
    """
    images, mel = batch["images"], batch["mel"]
    grouped = batch["y"].dim() == 3
    if grouped:
        b, g = images.shape[:2]
        v, a = net(images.flatten(0, 1), mel.flatten(0, 1))
        ib, ia, iv = torch.nonzero(batch["mask"], as_tuple=True)          # kept pairs: group, mel, faces
        y = batch["y"][ib, ia, iv].float()
        v, a = v[ib * g + iv], a[ib * g + ia]
    else:
        v, a = net(images, mel)
        y = batch["y"].float()
    bce = sync_bce(v, a, y)
    pos, neg = y > 0.5, y <= 0.5
    with torch.no_grad():
        s = torch.nn.functional.cosine_similarity(v.float(), a.float(), dim=1)
        right = ((s > threshold) == pos).float()
        nan = s.new_tensor(float("nan"))
        out = {"cos_pos": s[pos].mean() if pos.any() else nan, "cos_neg": s[neg].mean() if neg.any() else nan}
    if not grouped:
        return {"loss": bce.mean(), "accuracy": right.mean(), **out}
    zero = bce.new_zeros(())
    hard = neg
    if hard_negatives is not None:  # the k most similar off-sync pairs of each (group, mel) row
        rows = ib * g + ia
        score = torch.full((b * g, g), -torch.inf, device=s.device)
        score[rows[neg], iv[neg]] = s[neg]
        kth = score.topk(min(int(hard_negatives), g), dim=1).values[:, -1]      # [B G] the k-th largest
        hard = neg & (s >= kth[rows])
    loss = 0.5 * ((bce[pos].mean() if pos.any() else zero) + (bce[hard].mean() if hard.any() else zero))
    acc = 0.5 * ((right[pos].mean() if pos.any() else nan) + (right[neg].mean() if neg.any() else nan))
    return {"loss": loss, "accuracy": acc, **out}


@torch.no_grad()
def evaluate_pairs(net: nn.Module, dataset: SyncPairDataset, pairs: list[tuple[int, int, int]],
                   batch_size: int = 64, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, BCE and mean similarities over fixed ``(k, start, video_start)`` pairs (``heldout_pairs``).

    Also ``accuracy_pos`` / ``accuracy_neg`` (per class) and ``pairs`` (how many).
    """
    return pair_metrics(*pair_similarities(net, dataset, pairs, batch_size), threshold)


def pair_metrics(s: torch.Tensor, y: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """``evaluate_pairs``' numbers from similarities ``s [N]`` and labels ``y [N]``."""
    pos = y > 0.5
    right = (s > threshold) == pos
    bce = torch.nn.functional.binary_cross_entropy(s.clamp(0, 1), y)
    return {"accuracy": float(right.float().mean()), "accuracy_pos": float(right[pos].float().mean()),
            "accuracy_neg": float(right[~pos].float().mean()), "bce": float(bce),
            "cos_pos": float(s[pos].mean()), "cos_neg": float(s[~pos].mean()), "pairs": len(s)}


@torch.no_grad()
def pair_similarities(net: nn.Module, dataset: SyncPairDataset, pairs: list[tuple[int, int, int]],
                      batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(v, a) ``[N]`` and labels ``[N]`` of fixed pairs, the network in eval mode."""
    param = next(net.parameters())
    was_training = net.training
    net.eval()
    sims, ys = [], []
    for i in range(0, len(pairs), batch_size):
        items = [dataset.pair(*p) for p in pairs[i:i + batch_size]]
        v, a = net(torch.stack([it["images"] for it in items]).to(param.device, param.dtype),
                   torch.stack([it["mel"] for it in items]).to(param.device, param.dtype))
        sims.append(torch.nn.functional.cosine_similarity(v.float(), a.float(), dim=1).cpu())
        ys.append(torch.stack([it["y"] for it in items]))
    net.train(was_training)
    return torch.cat(sims), torch.cat(ys)


# =========================================================================== building from the config
def syncnet_config(cfg: DictConfig) -> DictConfig:
    """The network's preset (``syncnet.preset``: ``model:``, ``data:`` window) merged with ``syncnet.overrides``."""
    merged = OmegaConf.merge(configs.load(cfg.syncnet.preset), cfg.syncnet.get("overrides") or {})
    assert isinstance(merged, DictConfig)
    return merged


def build_syncnet(scfg: DictConfig, init: str | None, seed: int) -> StableSyncNet:
    """A fresh network drawn from ``seed`` or, with ``init`` (a ``{"state_dict"}`` checkpoint), one to adapt."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = load_syncnet(init, OmegaConf.to_container(scfg.model, resolve=True))
    return net.train().requires_grad_(True)


def ensure_sync_data(root: str | Path, synthetic: Any, window: SyncWindow) -> Path:
    """``root`` with prepared shards; a synthetic-world set is written and prepared when it has none."""
    from distill.data import PrepareConfig, list_shards, prepare

    root = Path(root)
    if (root / "shards").is_dir() and list_shards(root):
        return root
    if synthetic is None:
        raise FileNotFoundError(f"{root} has no shards and its synthetic setting is null: run `turbosync prepare` "
                                "on your videos first")
    from distill.synthworld import synth_dataset

    synth_dataset(root / "synthetic_src", clips=int(synthetic.clips), resolution=int(synthetic.resolution),
                  seconds=float(synthetic.seconds), seed=int(synthetic.seed))
    prepare(root / "synthetic_src", root, PrepareConfig(resolution=int(synthetic.get("face_resolution", 128)),
                                                        min_frames=window.num_frames))
    return root


def _dataset(cfg: DictConfig, root: Path, window: SyncWindow, seed: int) -> SyncPairDataset:
    oc = cfg.data.get("offset_correction") or {}
    offsets = None
    if oc.get("syncnet"):  # estimated once per data root with the given network, then read from the file
        path = root / f"sync_offsets_{hashlib.sha1(str(oc.syncnet).encode()).hexdigest()[:8]}.json"
        if not path.is_file():
            ocfg = configs.load(oc.config)
            net = load_syncnet(oc.syncnet, OmegaConf.to_container(ocfg.model, resolve=True))
            estimate_offsets(root, net, SyncWindow.from_mapping(ocfg.data), out=path)
        offsets = path
    factory = configs.instantiate(cfg.data.dataset)  # _partial_: the pair rule (offset range, stride)
    return factory(root=root, window=window, seed=seed, offsets=offsets, min_confidence=oc.get("min_confidence"))


# =========================================================================== the run
@dataclass
class SyncRun:
    cfg: DictConfig
    acc: Accelerator
    net: nn.Module            # accelerate-wrapped
    optimizer: Any
    scheduler: Any
    dataset: SyncPairDataset
    out: Path
    state: ckpt.RunState
    scfg: DictConfig
    window: SyncWindow
    heldout: tuple[SyncPairDataset, list] | None = None   # built at the first evaluation
    batches: Any = None
    writer: Any = None
    resumed_from: Path | None = None

    @property
    def plain(self) -> StableSyncNet:
        return self.acc.unwrap_model(self.net)


def setup(cfg: DictConfig) -> SyncRun:
    from distill.recipe import build_optimizer, make_accelerator

    acc = make_accelerator(cfg)
    out, seed = Path(cfg.run.output_dir), int(cfg.run.seed)
    set_seed(seed)
    scfg = syncnet_config(cfg)
    window = SyncWindow.from_mapping(scfg.data)
    net = build_syncnet(scfg, cfg.syncnet.get("init"), seed)
    with acc.main_process_first():
        if acc.is_main_process:
            ensure_sync_data(cfg.data.root, cfg.data.get("synthetic"), window)
            if cfg.data.get("heldout_root"):
                ensure_sync_data(cfg.data.heldout_root, cfg.data.get("heldout_synthetic"), window)
        dataset = _dataset(cfg, Path(cfg.data.root), window, seed)
    optimizer, scheduler = build_optimizer(list(net.parameters()), cfg.optim, int(cfg.run.max_steps))
    wrapped, optimizer = acc.prepare(net, optimizer)
    run = SyncRun(cfg, acc, wrapped, optimizer, scheduler, dataset, out, ckpt.RunState(world_size=acc.num_processes),
                  scfg, window)
    run.resumed_from = ckpt.resume_path(cfg.run.get("resume"), out / "checkpoints")
    if run.resumed_from is not None:
        load_checkpoint(run, run.resumed_from)
    run.batches = _batches(run)
    _open_logs(run)
    return run


def _batches(run: SyncRun):
    """Endless device batches from the saved data position; items keyed by (epoch, index)."""
    order = ckpt.DataOrder(len(run.dataset), int(run.cfg.data.batch_size), int(run.cfg.run.seed),
                           run.acc.num_processes, run.acc.process_index)
    workers = int(run.cfg.data.num_workers)
    epoch, index = run.state.epoch, run.state.index

    def keyed():
        e, i = epoch, index
        while True:
            yield [(e, j) for j in order.batch(e, i)]
            e, i = order.advance(e, i)

    loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=keyed(), num_workers=workers,
                                         persistent_workers=workers > 0)
    for batch in loader:
        run.state.epoch, run.state.index = order.advance(run.state.epoch, run.state.index)
        yield {k: batch[k].to(run.acc.device) for k in (*BATCH_KEYS, "mask") if k in batch}


def train_step(run: SyncRun) -> tuple[dict[str, float], str]:
    """``run.grad_accum`` micro-batches and one optimizer step; status "ok" or "nonfinite" (no update)."""
    acc, accum = run.acc, int(run.cfg.run.grad_accum)
    sums: dict[str, float] = {}
    finite, lr, status = True, run.scheduler.get_last_lr()[0], "ok"
    for _ in range(accum):
        batch = next(run.batches)
        with acc.accumulate(run.net):
            with acc.autocast():
                out = syncnet_step(run.net, batch, hard_negatives=(run.cfg.get("loss") or {}).get("hard_negatives"))
            finite = finite and bool(torch.isfinite(out["loss"]))
            acc.backward(out["loss"])
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            if acc.sync_gradients:
                nonfinite = acc.reduce(torch.tensor(float(not finite), device=acc.device), "sum").item() > 0
                max_norm = run.cfg.optim.get("max_grad_norm")
                if not nonfinite and max_norm:
                    sums["grad_norm"] = float(acc.clip_grad_norm_(run.net.parameters(), float(max_norm)))
                if nonfinite:
                    status = "nonfinite"
                else:
                    run.optimizer.step()
                    run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
    means = acc.reduce(torch.tensor(list(sums.values()), device=acc.device), "mean")
    return {**{k: float(v) for k, v in zip(sums, means)}, "lr": lr}, status


def train_syncnet(cfg: DictConfig) -> SyncRun:
    """Run to ``run.max_steps`` (resuming as ``run.resume`` says), evaluate on the held-out pairs every
    ``run.eval_every`` steps and at the end, and write the final network. Returns the finished run."""
    from tqdm import tqdm

    from distill.recipe import _count_nonfinite

    run = setup(cfg)
    r = cfg.run
    bar = tqdm(total=int(r.max_steps), initial=run.state.step, desc="train-syncnet", unit="step",
               disable=not run.acc.is_main_process)
    try:
        while run.state.step < int(r.max_steps):
            t0 = time.perf_counter()
            logs, status = train_step(run)
            run.state.step += 1
            _count_nonfinite(run, status)  # raises NonFiniteLossError after run.max_consecutive_nonfinite in a row
            logs["pairs_per_s"] = int(cfg.data.batch_size) * int(r.grad_accum) * run.acc.num_processes * int(
                run.dataset.group_size) / (time.perf_counter() - t0)   # windows encoded a second
            _record(run, "losses.jsonl", {**logs, "status": status}, "train")
            step = run.state.step
            if r.get("eval_every") and step % int(r.eval_every) == 0 and step != int(r.max_steps):
                _evaluate(run)
            if step % int(r.checkpoint_every) == 0 or step == int(r.max_steps):
                save_checkpoint(run)
            bar.update()
            bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['accuracy']:.2f}")
    finally:
        bar.close()
    final = _evaluate(run)
    _finish(run, final)
    return run


def _evaluate(run: SyncRun) -> dict[str, float] | None:
    d = run.cfg.data
    if not d.get("heldout_root") or not run.acc.is_main_process:
        return None
    if run.heldout is None:  # the data set and its fixed pairs: evaluation only, seed 0
        heldout = configs.instantiate(d.dataset)(root=Path(d.heldout_root), window=run.window, seed=0)
        run.heldout = (heldout, heldout_pairs(heldout, d.get("heldout_windows"), seed=0))
    res = evaluate_pairs(run.plain, *run.heldout, int(d.batch_size))
    _record(run, "heldout.jsonl", res, "heldout")
    return res


def _open_logs(run: SyncRun) -> None:
    if run.acc.is_main_process:
        logs = ("losses.jsonl", "heldout.jsonl")
        run.writer = ckpt.open_run_logs(run.out, run.cfg, run.state, run.resumed_from, logs)


def _record(run: SyncRun, name: str, logs: dict, tag: str) -> None:
    if not run.acc.is_main_process:
        return
    with open(run.out / name, "a") as f:
        f.write(json.dumps({"step": run.state.step, **logs}) + "\n")
    if tag == "heldout" or run.state.step % int(run.cfg.run.log_every) == 0:
        for k, v in logs.items():
            if isinstance(v, int | float):
                run.writer.add_scalar(f"{tag}/{k}", v, run.state.step)


def _finish(run: SyncRun, heldout: dict | None) -> None:
    """``syncnet.pt`` (official format), ``syncnet.yaml`` (its preset) and ``heldout.json`` on the main process."""
    acc = run.acc
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = ckpt.full_state(run.plain)
        torch.save({"state_dict": state, "global_step": run.state.step}, run.out / "syncnet.pt")
        scfg = OmegaConf.merge(run.scfg, {"name": f"{run.scfg.get('name', 'syncnet')}_trained",
                                          "files": {"syncnet": str((run.out / "syncnet.pt").resolve())}})
        OmegaConf.save(scfg, run.out / "syncnet.yaml")  # interpolations kept: move the file by editing files.syncnet
        summary = {"step": run.state.step, "syncnet_sha256": ckpt.weights_hash(run.plain),
                   "nonfinite_total": run.state.nonfinite_total, "heldout": heldout}
        (run.out / "heldout.json").write_text(json.dumps(summary, indent=1))
        run.writer.close()
    acc.wait_for_everyone()
    acc.end_training()


def export_syncnet(run_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a finished run's network into ``out_dir``: ``syncnet.pt`` (``{"state_dict"}`` in ``dtype``;
    ``load_syncnet`` computes in float32), ``syncnet.yaml`` (its preset, ``files.syncnet`` = ``${repo:...}`` inside
    the repository, else the absolute path) and ``train.json`` (the run's ``heldout.json`` and config)."""
    run_dir, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = torch.load(run_dir / "syncnet.pt", map_location="cpu", weights_only=True)
    torch.save({"state_dict": {k: v.to(dtype) if v.is_floating_point() else v for k, v in state["state_dict"].items()},
                "global_step": state.get("global_step")}, out / "syncnet.pt")
    path = (out / "syncnet.pt").resolve()
    try:
        ref = "${repo:" + str(path.relative_to(configs.REPO_DIR)) + "}"
    except ValueError:
        ref = str(path)
    scfg = OmegaConf.load(run_dir / "syncnet.yaml")
    scfg.files.syncnet = ref
    OmegaConf.save(scfg, out / "syncnet.yaml")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    summary = {**json.loads((run_dir / "heldout.json").read_text()), "dtype": str(dtype).removeprefix("torch."),
               "config": OmegaConf.to_container(cfg)}
    (out / "train.json").write_text(json.dumps(summary, indent=1))
    return out


# =========================================================================== checkpoints
def save_checkpoint(run: SyncRun) -> None:
    """Atomic ``checkpoints/step_XXXXXXX``: the network, optimizer, scheduler, every rank's RNG, the counters."""
    acc, root = run.acc, run.out / "checkpoints"
    tmp = root / f".tmp_{ckpt.step_name(run.state.step)}"
    if acc.is_main_process:
        ckpt.begin(root, run.state.step)
    acc.wait_for_everyone()
    ckpt.save_rank_rng(tmp, acc.process_index, None)
    if acc.is_main_process:
        save_file(ckpt.full_state(run.plain), str(tmp / "syncnet.safetensors"))
        ckpt.save_torch(run.optimizer.state_dict(), tmp / "optimizer.pt")
        ckpt.save_torch(run.scheduler.state_dict(), tmp / "scheduler.pt")
        if acc.scaler is not None:
            ckpt.save_torch(acc.scaler.state_dict(), tmp / "scaler.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        ckpt.commit(tmp, run.state, int(run.cfg.run.keep_last) or None)
    acc.wait_for_everyone()


def load_checkpoint(run: SyncRun, path: Path) -> None:
    state = ckpt.read_state(path)
    if state.world_size != run.acc.num_processes:
        raise ValueError(f"{path} was written by {state.world_size} processes, this run has {run.acc.num_processes}")
    run.plain.load_state_dict(load_file(str(path / "syncnet.safetensors")), strict=True)
    run.optimizer.load_state_dict(ckpt.load_torch(path / "optimizer.pt"))
    run.scheduler.load_state_dict(ckpt.load_torch(path / "scheduler.pt"))
    if run.acc.scaler is not None and (path / "scaler.pt").is_file():
        run.acc.scaler.load_state_dict(ckpt.load_torch(path / "scaler.pt"))
    run.state = state
    ckpt.load_rank_rng(path, run.acc.process_index, None)
