"""LPIPS on the lower half of the face (LatentSync's stage-2 perceptual loss) and its VGG16 backbone loader.

Upstream (bytedance/LatentSync ``scripts/train_unet.py``, stage 2, ``perceptual_loss_weight`` 0.1)::

    lpips_loss_func = lpips.LPIPS(net="vgg")
    pred = pred_pixel_values[:, :, H // 2:, :]          # (b f) c h w, VAE output in [-1, 1], lower half
    gt = gt_pixel_values[:, :, H // 2:, :]
    lpips_loss = lpips_loss_func(pred.float(), gt.float()).mean()

so: LPIPS v0.1 (Zhang et al. 2018, eq. 1; paper eq. 4) per frame on the rows ``H // 2 :`` of the face, no
resize, inputs in [-1, 1] (``normalize=False``), float32. ``LPIPSLoss`` averages over frames -> ``[B]``; the
batch mean is the training step's.

Weights: the ``lpips`` wheel ships the linear heads (``lpips/weights/v0.1/vgg.pth``); its VGG16 trunk is
torchvision's ImageNet file ``vgg16-397923af.pth``, which ``lpips`` downloads at run time. Nothing is
downloaded here: ``build_lpips`` reads that file from a given path or the torch hub cache, or builds an
explicitly random trunk (``backbone="random"``, for tests and the toy).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING
from unittest import mock

import torch
from torch import nn

from losses.frames import frame_images

if TYPE_CHECKING:  # lpips imports torchvision: imported on use
    import lpips

__all__ = ["LPIPSLoss", "build_lpips", "vgg16_path", "load_vgg16_trunk", "VGG16_FILE", "RANDOM"]

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1, the trunk lpips.LPIPS(net="vgg") uses
RANDOM = "random"  # backbone="random": an untrained VGG16 trunk (tests, toy)


def vgg16_path(backbone: str | Path | None = None) -> Path:
    """Where the VGG16 trunk is: ``backbone`` itself, or ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``.

    Raises ``FileNotFoundError`` with one line naming the file and where it was looked for.
    """
    hub = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    path = hub if backbone is None else Path(backbone).expanduser()
    if not path.is_file():
        where = "the torch hub cache" if backbone is None else "the given path"
        raise FileNotFoundError(
            f"LPIPS needs torchvision's VGG16 weights {VGG16_FILE}: not found at {path} ({where}); give its path "
            f"(backbone=...), put it at {hub}, or use backbone='random' (untrained, tests only)"
        )
    return path


def load_vgg16_trunk(net: lpips.pretrained_networks.vgg16, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy torchvision VGG16 ``features.{i}.*`` weights into lpips' ``slice{k}.{i}.*`` trunk, strictly.

    lpips keeps torchvision's layer indices inside its five slices (``features[0:4]`` ... ``features[23:30]``),
    so ``features.i.weight`` is ``slice{k}.i.weight``. Every trunk parameter must be in ``state_dict`` with its
    shape; ``classifier.*`` (in the torchvision file, unused by LPIPS) is ignored; any other key is an error.
    """
    own = net.state_dict()
    wanted = {f"features.{name.split('.', 1)[1]}": name for name in own}  # slice1.0.weight -> features.0.weight
    missing = sorted(set(wanted) - set(state_dict))
    unknown = sorted(k for k in state_dict if k not in wanted and not k.startswith("classifier."))
    if missing or unknown:
        raise ValueError(f"not a torchvision VGG16 state dict: missing {missing[:4]}, unexpected {unknown[:4]}")
    mapped = {}
    for src, dst in wanted.items():
        if state_dict[src].shape != own[dst].shape:
            raise ValueError(f"{src}: shape {tuple(state_dict[src].shape)}, VGG16 has {tuple(own[dst].shape)}")
        mapped[dst] = state_dict[src]
    net.load_state_dict(mapped, strict=True)


def _vgg16_features(pretrained: bool = False, **_) -> SimpleNamespace:
    """torchvision's ``vgg16()`` as far as lpips uses it: ``.features`` with torchvision's initialisation."""
    from torchvision.models.vgg import cfgs, make_layers

    if pretrained:
        raise RuntimeError("build_lpips never asks torchvision for (downloaded) weights")
    features = make_layers(cfgs["D"])
    for m in features.modules():
        if isinstance(m, nn.Conv2d):  # torchvision VGG._initialize_weights
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return SimpleNamespace(features=features)


def build_lpips(backbone: str | Path | None = None, seed: int = 0) -> lpips.LPIPS:
    """``lpips.LPIPS(net="vgg")`` (v0.1, the package's linear heads) with its VGG16 trunk read offline.

    Args:
        backbone: path to torchvision's ``vgg16-397923af.pth``; ``None``: the torch hub cache
            (``vgg16_path``); ``"random"``: an untrained trunk (torchvision's init drawn from ``seed``), for
            tests and the toy only.
        seed: the random trunk's seed (the global RNG is left as it was); unused otherwise.
    Returns the frozen model (eval, no parameter gradients) with ``backbone_source`` = the file or ``"random"``.
    Raises ``FileNotFoundError`` (one line, see ``vgg16_path``) or ``ValueError`` for a file of another layout.
    """
    import lpips

    path = None if backbone == RANDOM else vgg16_path(backbone)
    # pnet_rand: no download; the heads come from the wheel. lpips keeps only torchvision's vgg16().features:
    # while it builds, vgg16 makes just those (its classifier would be 124 M random parameters, thrown away).
    with torch.random.fork_rng(devices=[]), mock.patch.object(lpips.pretrained_networks.tv, "vgg16", _vgg16_features):
        torch.manual_seed(seed)
        model = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        load_vgg16_trunk(model.net, torch.load(path, map_location="cpu", weights_only=True))
    model.backbone_source = RANDOM if path is None else str(path)
    return model.eval().requires_grad_(False)


class LPIPSLoss:
    """LatentSync's stage-2 LPIPS on the lower half of each face: ``(x0_frames, frames) -> [B]``.

    Args:
        net: an ``lpips.LPIPS`` (``build_lpips``); frozen here (eval, no parameter gradients), gradients
            still flow to ``x0_frames``.
        lower_half: compare rows ``H // 2 :`` only (upstream: yes).
        resolution: resize faces (bicubic) to ``resolution x resolution`` first; ``None`` (upstream) keeps them.
        frame_stride: compare frames ``0, s, 2s, ...`` only; 1 (upstream) takes every frame. A cost knob for
            CPU runs (VGG16 on every frame is the dominant cost: ~17 s a call at batch 4 x 8 x 128 px on one
            thread of the dev CPU), not part of LatentSync.

    Call (the distillation step feeds both by name; wiring ``inputs: {x0_frames: x0_frames, frames: frames}``
    is the default, so none is needed):
        x0_frames: ``[B, 3, F, H, W]`` the student's decoded prediction in [-1, 1] (VAE output layout).
        frames: ``[B, 3, F, H, W]`` the real frames in [-1, 1].
    Returns ``[B]`` float32: LPIPS per frame, mean over the F frames (every ``frame_stride``-th).
    """

    def __init__(self, net: lpips.LPIPS, lower_half: bool = True, resolution: int | None = None, frame_stride: int = 1):
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.net = net.eval().requires_grad_(False)
        self.lower_half = lower_half
        self.resolution = resolution
        self.frame_stride = frame_stride

    def crops(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` -> the images LPIPS sees, ``[B * F', 3, H', W']`` float32 (F' = ceil(F / stride))."""
        if frames.dim() != 5 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [B, 3, F, H, W], got {tuple(frames.shape)}")
        return frame_images(frames[:, :, :: self.frame_stride].float(), self.resolution, self.lower_half)

    def __call__(self, x0_frames: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        if x0_frames.shape != frames.shape:
            raise ValueError(f"x0_frames {tuple(x0_frames.shape)} and frames {tuple(frames.shape)} differ")
        d = self.net(self.crops(x0_frames), self.crops(frames).to(x0_frames.device))  # [(b f), 1, 1, 1]
        return d.reshape(frames.shape[0], -1).mean(1)

    def to(self, *args, **kwargs) -> LPIPSLoss:
        """Move the network (``torch.nn.Module.to`` arguments); returns self."""
        self.net.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return (
            f"LPIPSLoss(backbone={getattr(self.net, 'backbone_source', 'unknown')!r}, "
            f"lower_half={self.lower_half}, resolution={self.resolution}, frame_stride={self.frame_stride})"
        )
