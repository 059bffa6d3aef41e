"""File in, file out: the engine driven as fast as it can, writing the mp4 as frames come (``turbosync lipsync``).

    report = lipsync_file("assets/toy_student", "out.mp4", audio_path="speech.wav", video="face.mp4")

Audio is read once (16 kHz mono), fed to the engine in pieces of ``piece_seconds`` and muxed unchanged;
frames are written as they leave the engine, so memory is bounded by the avatar and one chunk. The
output has ceil(audio_seconds * 25) frames at the avatar's frame size.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.engine import EngineConfig, flush, start, step

SAMPLE_RATE = 16000


class InputError(ValueError):
    """An unusable input; the message names the file and the reason (the CLI exits with code 2)."""


def load_engine_config(preset: str = "engine/toy", overrides: list[str] | None = None, **options: Any) -> EngineConfig:
    """An ``EngineConfig`` from a ``configs/engine`` preset, ``key=value`` overrides and non-None options."""
    import configs
    from inference.engine import with_overrides

    cfg = configs.instantiate(configs.load(preset, overrides or []))
    return with_overrides(cfg, **options)


def load_student(path: str | os.PathLike, device: str = "cpu"):
    """``student.load_bundle`` with an ``InputError`` naming the folder when it is not an export."""
    import student
    from student.io import NotAnExportError

    try:
        return student.load_bundle(path, device=device)
    except NotAnExportError as err:
        raise InputError(str(err)) from None


def read_audio_16k(path: str | os.PathLike, to_video_end: bool = False) -> np.ndarray:
    """Mono float32 at 16 kHz; InputError for a missing file, no samples or non-finite samples (the last two
    checked by ``teacher.media.read_audio``, whose MediaError is passed on with its message).
    ``to_video_end``: a video's own track, silence appended when the video outlasts it (the output then
    lasts as long as the later of the two streams, ``teacher.media.read_audio_to_video_end``)."""
    from teacher.media import MediaError, read_audio, read_audio_to_video_end

    if Path(path).is_dir():
        raise InputError(f"{path}: is a folder, not a media file")
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    try:
        audio = (read_audio_to_video_end if to_video_end else read_audio)(path, sample_rate=SAMPLE_RATE)
    except MediaError as err:
        raise InputError(str(err)) from None
    if audio.size == 0:
        raise InputError(f"{path}: the audio has no samples")
    return audio


@dataclass
class LipsyncReport:
    frames: int
    audio_seconds: float
    wall_seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
    out_path: Path | None = None

    @property
    def fps(self) -> float:
        return self.frames / max(self.wall_seconds, 1e-9)

    @property
    def real_time_factor(self) -> float:
        """Wall time over audio time (<= 1: faster than real time)."""
        return self.wall_seconds / max(self.audio_seconds, 1e-9)

    def summary(self) -> str:
        s = self.stats
        faceless = s.get("passed_through_faceless", 0)
        return (f"{self.frames} frames ({self.audio_seconds:.2f} s of audio) in {self.wall_seconds:.2f} s: "
                f"{self.fps:.1f} fps, real-time factor {self.real_time_factor:.2f}; decoder {s.get('decoder')}; "
                f"{faceless} faceless frames passed through -> {self.out_path}")  # fmt: skip


def lipsync_file(
    student_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    audio_path: str | os.PathLike | None = None,
    video: str | os.PathLike | None = None,
    avatar: str | os.PathLike | None = None,
    cfg: EngineConfig | None = None,
    tiny_decoder: str | os.PathLike | None = None,
    audio: np.ndarray | None = None,
    frames: np.ndarray | None = None,
    piece_seconds: float = 1.0,
    progress: bool = True,
    face: dict | None = None,
) -> LipsyncReport:
    """Lip-sync ``video`` (prepared on the fly; or the uint8 ``frames`` [T, H, W, 3] at 25 fps) or a prepared
    ``avatar`` to the audio of ``audio_path`` (or the 16 kHz ``audio`` array; neither: ``video``'s own track,
    padded with silence to the video's end) with the exported student;
    writes ``out_path`` (H.264 + AAC). ``face``: the aligner options of an avatar prepared on the fly
    (``prepare_avatar``). InputError for unusable inputs (nothing is written then)."""
    from inference.avatar import AvatarError, load_avatar, prepare_avatar

    if sum(x is not None for x in (video, avatar, frames)) != 1:
        raise InputError("give exactly one of a video (--video) or a prepared avatar (--avatar)")
    if audio is None and audio_path is None and video is not None:  # the video's own track drives it
        audio = read_audio_16k(video, to_video_end=True)
    elif audio is None and audio_path is None:
        raise InputError("give the audio (--audio), or a video with its own audio track")
    audio = read_audio_16k(audio_path) if audio is None else np.asarray(audio, np.float32)
    if audio.size == 0:
        raise InputError("the audio has no samples")
    bundle = load_student(student_dir)
    decoder = _tiny_decoder(tiny_decoder, bundle)
    cfg = decoder_fallback(cfg or EngineConfig(), decoder)
    try:
        if avatar is not None:
            av = load_avatar(avatar, bundle)
            return _run(bundle, av, audio, out_path, cfg, decoder, piece_seconds, progress)
        with tempfile.TemporaryDirectory(prefix="turbosync-avatar-") as tmp:
            av = prepare_avatar(video if frames is None else frames, tmp, bundle, progress=progress, face=face)
            return _run(bundle, av, audio, out_path, cfg, decoder, piece_seconds, progress)
    except AvatarError as err:
        raise InputError(str(err)) from None


def decoder_fallback(cfg: EngineConfig, tiny_decoder) -> EngineConfig:
    """``cfg`` with decoder "vae" (and a note on stderr) when it asks for a tiny decoder the export does not have."""
    import sys
    from dataclasses import replace

    if cfg.decoder == "tiny" and tiny_decoder is None:
        print("note: the student has no tiny_decoder/ and no --tiny-decoder was given: decoding with its VAE",
              file=sys.stderr)  # fmt: skip
        return replace(cfg, decoder="vae")
    return cfg


def _tiny_decoder(path, bundle):
    """The tiny decoder at ``path``, else the export's own ``tiny_decoder/`` when it has one, else None."""
    if path is None:
        path = bundle.path / "tiny_decoder"
        if not path.is_dir():
            return None
    from teacher.tiny_decoder import load_tiny_decoder

    if not (Path(path) / "config.json").is_file():
        raise InputError(f"{path}: not a tiny decoder folder (no config.json)")
    return load_tiny_decoder(path).to(bundle.vae.device)


def _run(bundle, av, audio, out_path, cfg, decoder, piece_seconds, progress) -> LipsyncReport:
    from tqdm import tqdm

    from teacher.media import VideoWriter

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_total = -(-len(audio) // 640)
    t0 = time.perf_counter()
    state = start(av, bundle, cfg, tiny_decoder=decoder)
    piece = max(1, int(piece_seconds * SAMPLE_RATE))
    written = 0
    with VideoWriter(out_path, 25, sample_rate=SAMPLE_RATE) as writer, \
            tqdm(total=n_total, desc="lipsync", unit="frame", disable=not progress) as bar:  # fmt: skip
        writer.write_audio(audio)
        for s in range(0, len(audio), piece):
            frames, state = step(state, audio[s : s + piece])
            for f in frames:
                writer.write(f)
            written += len(frames)
            bar.update(len(frames))
        frames, state = flush(state)
        for f in frames:
            writer.write(f)
        written += len(frames)
        bar.update(len(frames))
    stats = {**state.stats, "decoder": cfg.decoder}
    return LipsyncReport(written, len(audio) / SAMPLE_RATE, time.perf_counter() - t0, stats, out_path)
