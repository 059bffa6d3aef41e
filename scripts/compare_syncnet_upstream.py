"""Check ``losses.StableSyncNet`` / ``losses.SyncNetV2`` against the upstream code on shared random weights.

Needs local checkouts of the upstream repositories (not shipped here):

    python -m scripts.compare_syncnet_upstream --latentsync PATH/TO/LatentSync [--syncnet-python PATH/TO/syncnet_python]

StableSyncNet: the official module from ``PATH/latentsync/models/stable_syncnet.py`` is built from
``configs/syncnet/syncnet_16_pixel_attn.yaml``, every tensor is perturbed, its state dict is saved
as ``{"state_dict": ...}`` and loaded with ``losses.load_syncnet``; both embed the same random
inputs ``[2, 48, 128, 256]`` / ``[2, 1, 80, 52]``. SyncNetV2: upstream ``S`` saved as a bare state
dict without BatchNorm counters (as ``syncnet_v2.model``), loaded with ``losses.load_syncnet_v2``.
Prints relative errors (the contract: below 1e-4).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

import losses


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _perturb(module: torch.nn.Module, scale: float) -> None:
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                t.add_(scale * torch.randn_like(t))
                if "running_var" in name:
                    t.abs_().add_(0.5)


def compare_stable(root: Path, tmp: Path) -> dict[str, float]:
    sys.path.insert(0, str(root))
    from latentsync.models.stable_syncnet import StableSyncNet as Upstream

    yaml = root / "configs" / "syncnet" / "syncnet_16_pixel_attn.yaml"
    ref = Upstream(OmegaConf.to_container(OmegaConf.load(yaml).model)).eval()
    _perturb(ref, 0.02)
    torch.save({"state_dict": ref.state_dict(), "global_step": 0}, tmp / "stable_syncnet.pt")
    ours = losses.load_syncnet(tmp / "stable_syncnet.pt", yaml)
    images, mel = torch.rand(2, 48, 128, 256) * 2 - 1, torch.rand(2, 1, 80, 52) * 8 - 4
    with torch.no_grad():
        (rv, ra), (v, a) = ref(images, mel), ours(images, mel)
    return {"params": sum(p.numel() for p in ref.parameters()), "vision_rel": _rel(v, rv), "audio_rel": _rel(a, ra)}


def compare_v2(root: Path, tmp: Path) -> dict[str, float]:
    sys.path.insert(0, str(root))
    from SyncNetModel import S

    ref = S(num_layers_in_fc_layers=1024).eval()
    _perturb(ref, 0.05)
    torch.save({k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")},
               tmp / "syncnet_v2.model")
    ours = losses.load_syncnet_v2(tmp / "syncnet_v2.model")
    lips, mfccs = torch.rand(3, 3, 5, 224, 224) * 255, torch.randn(3, 1, 13, 20) * 10
    with torch.no_grad():
        rv, ra = ref.forward_lip(lips), ref.forward_aud(mfccs)
        v, a = ours(lips, mfccs)
    return {"params": sum(p.numel() for p in ref.parameters()), "lip_rel": _rel(v, rv), "audio_rel": _rel(a, ra)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latentsync", type=Path, required=True, help="checkout of bytedance/LatentSync")
    parser.add_argument("--syncnet-python", type=Path, default=None, help="checkout of joonson/syncnet_python")
    parser.add_argument("--seed", type=int, default=0, help="torch seed")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        print("StableSyncNet:", compare_stable(args.latentsync, Path(tmp)))
        if args.syncnet_python is not None:
            print("SyncNetV2:", compare_v2(args.syncnet_python, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
