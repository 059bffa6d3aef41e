"""Trained SyncNets on held-out synthetic clips: in-sync / off-sync accuracy and recovery of known audio shifts.

    python -m scripts.bench_syncnet [--nets assets/syncnet_toy_supervise assets/syncnet_toy_measure]
        [--heldout runs/syncnet_world_heldout] [--shift-clips 5] [--shifts -10 .. 10] [--out runs/bench_syncnet]

1. Accuracy: each net (a folder with ``syncnet.pt`` + ``syncnet.yaml``, as ``turbosync train-syncnet`` writes
   them) on fixed balanced pairs of the held-out data (``distill.syncnet_data.heldout_pairs``: every window once
   in sync and once against the faces of another window of the same clip, ``|offset| >= 1``), threshold 0.5 on
   cos(v, a); also split by the negatives' ``|offset|`` and, where the shards carry the synthetic world's ground
   truth (``meta.json`` ``ground_truth``), by how different the true mouth tracks of the two windows are
   (``truth_difference``: max over the F frames of |open_a - open_v| and |width_a - width_v|, 0..1). An off-sync
   pair whose two tracks are (nearly) equal cannot be told from an in-sync one by any network: ``ceiling`` is the
   accuracy left when every negative under ``AMBIGUOUS`` is counted wrong.
2. Shift recovery: for the first ``--shift-clips`` held-out source videos and every shift d, the clip's own audio
   moved d frames later (d < 0: earlier; silence fills) is written to a wav and ``turbosync eval sync VIDEO
   --audio WAV --config NET/syncnet.yaml`` (``inference.eval_sync.eval_sync``: the face path, +-15 frames) must
   report offset -d (video frame t matches audio frame t + d) within +-1 frame.
3. Writes OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SAMPLES_PER_FRAME = 640
AMBIGUOUS = 0.05          # truth_difference under which two 8-frame mouth tracks count as the same
TRUTH_BINS = ((0.0, AMBIGUOUS), (AMBIGUOUS, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.01))


def truth_difference(data, pairs: list[tuple[int, int, int]]) -> np.ndarray | None:
    """``[N]`` max over the window of |open_a - open_v| and |width_a - width_v| (the true mouth tracks of the
    mel window's frames and of the faces' frames; 0 for in-sync pairs), or None without ground truth."""
    f = data.window.num_frames
    tracks = []
    for sh in data.shards:
        gt = sh.meta.get("ground_truth") or {}
        if "mouth_open" not in gt or "mouth_width" not in gt:
            return None
        tracks.append(np.stack([np.asarray(gt["mouth_open"], np.float32), np.asarray(gt["mouth_width"], np.float32)]))
    out = np.empty(len(pairs), np.float32)
    for n, (k, s, v) in enumerate(pairs):
        tr = tracks[k]
        out[n] = np.abs(tr[:, s:s + f] - tr[:, v:v + f]).max()
    return out


def shifted_audio(audio: np.ndarray, d: int) -> np.ndarray:
    """``audio`` moved ``d`` frames later (``d < 0``: earlier), same length, silence where nothing is left."""
    n, k = len(audio), abs(d) * SAMPLES_PER_FRAME
    pad = np.zeros(min(k, n), audio.dtype)
    return np.concatenate([pad, audio[: n - len(pad)]]) if d >= 0 else np.concatenate([audio[len(pad):], pad])


def accuracy(net_dir: Path, heldout: Path, max_windows: int | None) -> dict:
    import configs
    from distill.syncnet_data import SyncPairDataset, SyncWindow, heldout_pairs
    from distill.syncnet_train import pair_metrics, pair_similarities
    from losses.syncnet import load_syncnet

    cfg = configs.load(net_dir / "syncnet.yaml")
    net = load_syncnet(cfg.files.syncnet, cfg.model)
    data = SyncPairDataset(heldout, SyncWindow.from_mapping(cfg.data), seed=0)
    pairs = heldout_pairs(data, max_windows, seed=0)
    t0 = time.perf_counter()
    sims, ys = pair_similarities(net, data, pairs)
    res = pair_metrics(sims, ys)
    res["by_offset"] = {}
    offsets = np.array([abs(p[2] - p[1]) for p in pairs])
    for lo, hi in ((1, 2), (3, 5), (6, 15), (16, 10**6)):  # accuracy on the negatives by |offset|
        sub = torch.from_numpy((offsets >= lo) & (offsets <= hi))
        if sub.any():
            right = (sims[sub] > 0.5) == (ys[sub] > 0.5)
            res["by_offset"][f"{lo}-{hi if hi < 10**6 else 'max'}"] = {"accuracy": float(right.float().mean()),
                                                                      "pairs": int(sub.sum())}
    diff = truth_difference(data, pairs)
    if diff is not None:
        neg = ys.numpy() < 0.5
        wrong = (sims.numpy() > 0.5) != (ys.numpy() > 0.5)
        bins = {}
        for lo, hi in TRUTH_BINS:
            sub = neg & (diff >= lo) & (diff < hi)
            bins[f"{lo}-{min(hi, 1.0)}"] = {"accuracy": float(1 - wrong[sub].mean()) if sub.any() else None,
                                            "pairs": int(sub.sum())}
        ambiguous = int((neg & (diff < AMBIGUOUS)).sum())
        res["by_truth_difference"] = bins
        res["ambiguous_negatives"] = ambiguous
        res["ceiling"] = 1.0 - ambiguous / len(pairs)
    res.update(clips=len(data.shards), windows=len(pairs) // 2, seconds=time.perf_counter() - t0)
    return res


def shift_recovery(net_dir: Path, videos: list[Path], shifts: list[int], work: Path) -> dict:
    import soundfile as sf

    from inference.eval_sync import eval_sync
    from teacher.media import read_audio

    rows = []
    for video in videos:
        audio = read_audio(video, sample_rate=16000)
        for d in shifts:
            wav = work / f"{video.stem}_shift{d:+d}.wav"
            sf.write(wav, shifted_audio(audio, d), 16000)
            rep = eval_sync(video, wav, config=str(net_dir / "syncnet.yaml"))
            s = rep.scores
            rows.append({"clip": video.stem, "shift": d, "expected_offset": -d, "offset": s.offset,
                         "error": s.offset + d, "lse_c": s.lse_c, "lse_d": s.lse_d})
            wav.unlink()
            print(f"{net_dir.name} {video.stem} shift {d:+d}: offset {s.offset:+d} LSE-C {s.lse_c:.3f}", flush=True)
    errors = np.array([abs(r["error"]) for r in rows])
    return {"rows": rows, "within_1": int((errors <= 1).sum()), "exact": int((errors == 0).sum()), "total": len(rows),
            "all_within_1": bool((errors <= 1).all()), "max_abs_error": int(errors.max()),
            "clips": [v.stem for v in videos], "shifts": shifts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="+", type=Path,
                   default=[Path("assets/syncnet_toy_supervise"), Path("assets/syncnet_toy_measure")],
                   help="folders holding syncnet.pt + syncnet.yaml")
    p.add_argument("--heldout", type=Path, default=Path("runs/syncnet_world_heldout"),
                   help="prepared held-out shards (+ synthetic_src/ videos); built like train_toy's held-out set")
    p.add_argument("--max-windows", type=int, default=None, help="cap on held-out windows for the accuracy")
    p.add_argument("--shift-clips", type=int, default=5, help="held-out videos for the shift recovery")
    p.add_argument("--shift-nets", nargs="*", type=Path, default=None, help="nets for the shift recovery "
                   "(default: the last of --nets, the measuring one)")
    p.add_argument("--shifts", nargs="+", type=int, default=list(range(-10, 11)))
    p.add_argument("--out", type=Path, default=Path("runs/bench_syncnet"))
    args = p.parse_args(argv)

    import configs
    from distill.syncnet_data import SyncWindow
    from distill.syncnet_train import ensure_sync_data

    train_cfg = configs.load("syncnet/train_toy")
    ensure_sync_data(args.heldout, train_cfg.data.heldout_synthetic, SyncWindow(8, 64))
    videos = sorted((args.heldout / "synthetic_src").glob("*.mp4"))[: args.shift_clips]
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"nets": {}, "_setup": {
        "heldout": str(args.heldout), "command": "python -m scripts.bench_syncnet " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}}
    for net in args.nets:
        result["nets"][str(net)] = {"heldout_accuracy": accuracy(net, args.heldout, args.max_windows)}
        print(net, json.dumps(result["nets"][str(net)]["heldout_accuracy"]), flush=True)
        (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    for net in args.shift_nets if args.shift_nets is not None else args.nets[-1:]:
        entry = result["nets"].setdefault(str(net), {})
        entry["shift_recovery"] = shift_recovery(net, videos, args.shifts, args.out)
        sr = entry["shift_recovery"]
        print(f"{net}: {sr['within_1']}/{sr['total']} shifts recovered within +-1 frame ({sr['exact']} exactly)")
        (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    print(args.out / "bench.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
