"""Inputs for the demos: a user's face video and audio, or a synthetic talking-face clip."""

from __future__ import annotations

import numpy as np


def demo_clip(
    video: str | None = None, audio: str | None = None, seconds: float = 2.0, seed: int = 0, resolution: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint8 [T, H, W, 3] at 25 fps, audio float32 16 kHz mono)``.

    Without ``video`` the embedded default is a clip of the synthetic talking-face world.
    """
    if video is None:
        from distill.synthworld import make_clip

        clip = make_clip(seed, resolution=resolution, seconds=seconds)
        frames, sound = clip.frames, clip.audio
    else:
        from teacher.media import read_audio, read_video

        frames, _ = read_video(video, fps=25)
        sound = read_audio(audio or video, sample_rate=16000)
    if audio is not None and video is None:
        from teacher.media import read_audio

        sound = read_audio(audio, sample_rate=16000)
    return frames, sound
