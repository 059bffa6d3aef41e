"""The original SyncNet (Chung & Zisserman 2016, "Out of time"), as published with its evaluation
code (joonson/syncnet_python ``SyncNetModel.py``, class ``S``; weights ``syncnet_v2.model``).

This is the network behind the LSE-D / LSE-C numbers of the lip-sync literature. Inputs:

    lip:   [N, 3, 5, 224, 224]  five consecutive face crops, BGR, raw 0..255 values (cv2.imread)
    audio: [N, 1, 13, 20]       13 MFCCs x 20 frames (100 Hz, 0.2 s; ``losses.mel.mfcc``)
    both -> [N, 1024] embeddings (not normalised), compared by Euclidean distance

Parameter names are the original ones (``netcnnaud.0.weight``, ``netfclip.3.bias``, ...), so a
real ``syncnet_v2.model`` (a torch pickle of the state dict) loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from losses.mel import mfcc_windows
from losses.syncnet import SyncNetCheckpointError, state_dict_problems

__all__ = ["SyncNetV2", "load_syncnet_v2", "window_embeddings", "num_windows", "LIP_FRAMES", "LIP_SIZE"]

LIP_FRAMES = 5
LIP_SIZE = 224
SAMPLES_PER_VIDEO_FRAME = 640  # 16 kHz / 25 fps


def _bn_relu(conv: nn.Module, channels: int, bn: type[nn.Module], inplace: bool = True) -> list[nn.Module]:
    return [conv, bn(channels), nn.ReLU(inplace=inplace)]


class SyncNetV2(nn.Module):
    """The original two-stream SyncNet (``S``). ``forward(images, mfccs) -> (lip_embeds, audio_embeds)``.

    ``images [N, 3, 5, 224, 224]`` (BGR 0..255), ``mfccs [N, 1, 13, 20]`` -> two ``[N, embed_dim]``.
    ``embed_dim`` is ``num_layers_in_fc_layers`` upstream (1024 in ``syncnet_v2.model``).
    """

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.embed_dim = embed_dim
        self.netcnnaud = nn.Sequential(
            *_bn_relu(nn.Conv2d(1, 64, (3, 3), stride=(1, 1), padding=(1, 1)), 64, nn.BatchNorm2d),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            *_bn_relu(nn.Conv2d(64, 192, (3, 3), stride=(1, 1), padding=(1, 1)), 192, nn.BatchNorm2d),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            *_bn_relu(nn.Conv2d(192, 384, (3, 3), padding=(1, 1)), 384, nn.BatchNorm2d),
            *_bn_relu(nn.Conv2d(384, 256, (3, 3), padding=(1, 1)), 256, nn.BatchNorm2d),
            *_bn_relu(nn.Conv2d(256, 256, (3, 3), padding=(1, 1)), 256, nn.BatchNorm2d),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_bn_relu(nn.Conv2d(256, 512, (5, 4), padding=(0, 0)), 512, nn.BatchNorm2d, inplace=False),
        )
        self.netfcaud = self._head(embed_dim)
        self.netfclip = self._head(embed_dim)
        self.netcnnlip = nn.Sequential(
            *_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2), padding=0), 96, nn.BatchNorm3d),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, nn.BatchNorm3d),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, nn.BatchNorm3d),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, nn.BatchNorm3d),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, nn.BatchNorm3d),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_bn_relu(nn.Conv3d(256, 512, (1, 6, 6), padding=0), 512, nn.BatchNorm3d),
        )
        self.eval()

    @staticmethod
    def _head(embed_dim: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 13, 20]`` MFCC windows -> ``[N, embed_dim]``."""
        mid = self.netcnnaud(x)  # [N, 512, 1, 1]
        return self.netfcaud(mid.reshape(mid.shape[0], -1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 5, 224, 224]`` BGR 0..255 face crops -> ``[N, embed_dim]``."""
        mid = self.netcnnlip(x)  # [N, 512, 1, 1, 1]
        return self.netfclip(mid.reshape(mid.shape[0], -1))

    def forward(self, images: torch.Tensor, mfccs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_lip(images), self.forward_aud(mfccs)


def load_syncnet_v2(ckpt_path: str | os.PathLike, device: str | torch.device = "cpu") -> SyncNetV2:
    """Load ``syncnet_v2.model`` (a torch pickle of ``S``'s state dict) into ``SyncNetV2`` (eval mode).

    The embedding width is read from ``netfclip.3.weight``. BatchNorm ``num_batches_tracked``
    buffers may be absent (the file predates them; upstream copies only the keys it finds);
    every other key must be present with its shape.

    Raises FileNotFoundError, or SyncNetCheckpointError listing every missing, unexpected or
    mis-shaped key, or naming what the file holds when it is not a state dict.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet v2 checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or "netfclip.3.weight" not in state:
        what = sorted(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise SyncNetCheckpointError(f"{path} is not a syncnet_v2.model state dict (no 'netfclip.3.weight'; "
                                     f"found {what})")
    net = SyncNetV2(embed_dim=int(state["netfclip.3.weight"].shape[0]))
    own = net.state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    problems = state_dict_problems(net, state)
    if problems:
        raise SyncNetCheckpointError(f"SyncNet v2 checkpoint {path} does not fit the original SyncNet: "
                                     + "; ".join(problems))
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def num_windows(num_frames: int, num_samples: int) -> int:
    """Windows the original evaluation scores: ``min(frames, samples // 640) - 5`` (its ``lastframe``)."""
    return min(num_frames, num_samples // SAMPLES_PER_VIDEO_FRAME) - LIP_FRAMES


@torch.no_grad()
def window_embeddings(net: SyncNetV2, frames: torch.Tensor, mfccs: torch.Tensor, count: int,
                      batch_size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame embeddings as ``SyncNetInstance.evaluate``: window ``t`` = frames ``t .. t+4`` and
    MFCC frames ``4t .. 4t + 20``.

    Args:
        frames: ``[T, 3, 224, 224]`` BGR 0..255 float face crops. mfccs: ``[13, M]``.
        count: number of windows (``num_windows``); batch_size: windows per forward pass.
    Returns ``(video [count, D], audio [count, D])`` on the CPU, float32.
    """
    if count < 1 or frames.shape[0] < count + LIP_FRAMES - 1:
        raise ValueError(f"{count} windows need {count + LIP_FRAMES - 1} frames, got {frames.shape[0]}")
    device = next(net.parameters()).device
    clips = frames.float().transpose(0, 1)                                   # [3, T, 224, 224]
    auds = mfcc_windows(mfccs.float(), count)                                # [count, 1, 13, 20]
    vids, aus = [], []
    for i in range(0, count, batch_size):
        n = min(count, i + batch_size) - i
        lip = torch.stack([clips[:, t:t + LIP_FRAMES] for t in range(i, i + n)])  # [n, 3, 5, 224, 224]
        vids.append(net.forward_lip(lip.to(device)).float().cpu())
        aus.append(net.forward_aud(auds[i:i + n].to(device)).float().cpu())
    return torch.cat(vids), torch.cat(aus)
