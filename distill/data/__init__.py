"""Training data: ``prepare`` (videos -> shards) and ``ClipDataset`` (shards -> teacher-format clips)."""

from distill.data.dataset import ClipDataset, encode_latents, list_shards, window_steps
from distill.data.prepare import PrepareConfig, PrepareReport, prepare, scene_cuts, segments

__all__ = [
    "ClipDataset",
    "PrepareConfig",
    "PrepareReport",
    "encode_latents",
    "list_shards",
    "prepare",
    "scene_cuts",
    "segments",
    "window_steps",
]
