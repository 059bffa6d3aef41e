"""``turbosync prepare SRC_DIR OUT_DIR``: talking-head videos -> training shards in the teacher's format.

Per source video: decode at 25 fps and 16 kHz mono, optional scene-cut splitting, LatentSync
face alignment (frames without a face split the clip), Whisper features over the whole
file (the official normalisation), and one shard per kept segment::

    OUT_DIR/shards/<stem>_sNNN/faces.mp4         aligned faces, res x res, 25 fps
                               audio.npy         float32 [T * 640] at 16 kHz, aligned to the frames
                               whisper.npy       float16 [S, L+1, 384] stacked Whisper steps (50 Hz)
                               meta.json         source, frame range, step offset, ground truth if any
    OUT_DIR/progress/<key>.json                  one record per source (resume)
    OUT_DIR/report.json                          counts, shards, skipped files with reasons

A bad file is skipped with its reason and counted; the command never dies for one file.
Shards are written to a temporary folder and renamed, so an interrupted run resumes cleanly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from teacher.audio import SAMPLE_RATE, SAMPLES_PER_FRAME, frame_step_indices
from teacher.audio import VIDEO_FPS as FPS

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


@dataclass
class PrepareConfig:
    resolution: int = 256
    min_frames: int = 16  # shorter segments are dropped
    scene_cut_threshold: float | None = 0.3  # mean abs grey difference (0..1) that starts a new scene
    whisper: str | None = None  # tiny.pt / HF folder; None = the random Whisper-tiny of the tiny preset
    crf: int = 12  # H.264 quality of the stored face crops
    workers: int = 1
    # SyncNet-confidence hook: (shard dict with frames/audio/meta) -> (keep, score). Set from Python.
    clip_filter: Callable[[dict], tuple[bool, float]] | None = field(default=None, repr=False)


@dataclass
class SourceRecord:
    source: str
    status: str  # "ok" | "skipped"
    reason: str = ""
    shards: list[str] = field(default_factory=list)
    frames: int = 0
    faceless_frames: int = 0


def find_videos(src_dir: str | os.PathLike) -> list[Path]:
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def source_key(path: Path) -> str:
    """Stable id of a source file (name + size + mtime), so a changed file is prepared again."""
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return f"{path.stem}-{hashlib.sha1(raw.encode()).hexdigest()[:10]}"


def scene_cuts(frames: np.ndarray, threshold: float | None) -> list[int]:
    """Indices ``i`` where frame ``i`` starts a new scene (mean abs difference of 32x32 grey thumbnails)."""
    if threshold is None or len(frames) < 2:
        return []
    import cv2

    thumbs = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
                       for f in frames]).astype(np.float32) / 255.0  # fmt: skip
    diff = np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2))
    return [int(i) + 1 for i in np.flatnonzero(diff > threshold)]


def segments(num_frames: int, cuts: list[int], has_face: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    """``[start, end)`` runs of consecutive face frames within scenes, at least ``min_frames`` long."""
    bounds = [0, *sorted(set(cuts)), num_frames]
    out = []
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        i = s0
        while i < s1:
            if not has_face[i]:
                i += 1
                continue
            j = i
            while j < s1 and has_face[j]:
                j += 1
            if j - i >= min_frames:
                out.append((i, j))
            i = j
    return out


def whisper_step_range(start: int, end: int, total_steps: int) -> tuple[int, int]:
    """Whisper steps ``[lo, hi)`` that frames ``[start, end)`` read (``teacher.audio.frame_step_indices``)."""
    steps = frame_step_indices(end - start, total_steps, start)
    return int(steps.min()), int(steps.max()) + 1


def _ground_truth(source: Path, start: int, end: int) -> dict[str, Any]:
    """Per-frame ground truth of a synthetic clip (its ``.json`` sidecar), sliced to the segment."""
    side = source.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("mouth_open", "mouth_width", "mouth_shape", "phoneme")
    return {k: data[k][start:end] for k in keys if isinstance(data.get(k), list)}


# ----------------------------------------------------------------------------- worker
_WORKER: dict[str, Any] = {}


def _init_worker(cfg: PrepareConfig) -> None:
    from teacher.audio import load_whisper
    from teacher.face import FaceAligner

    _WORKER["cfg"] = cfg
    _WORKER["aligner"] = FaceAligner(resolution=cfg.resolution)
    _WORKER["whisper"] = load_whisper(cfg.whisper)


def _process(job: tuple[str, str, str]) -> SourceRecord:
    source, key, out_dir = job
    try:
        return process_video(Path(source), key, Path(out_dir), _WORKER["cfg"], _WORKER["aligner"], _WORKER["whisper"])
    except Exception as err:  # one bad file never stops the run
        log.debug("prepare failed on %s:\n%s", source, traceback.format_exc())
        msg = str(err).splitlines()[0] if str(err) else ""
        return SourceRecord(source, "skipped", f"{type(err).__name__}: {msg}")


def process_video(source: Path, key: str, out_dir: Path, cfg: PrepareConfig, aligner, whisper) -> SourceRecord:
    """Turn one source video into shards; returns what happened."""
    from teacher.audio import encode_log_mel, log_mel
    from teacher.face import align_video
    from teacher.media import read_audio, read_video, write_video

    frames, _ = read_video(source, fps=FPS)
    audio = read_audio(source, sample_rate=SAMPLE_RATE)
    n = min(len(frames), len(audio) // SAMPLES_PER_FRAME)
    if n < cfg.min_frames:
        return SourceRecord(str(source), "skipped", f"too short: {n} frames with audio (< {cfg.min_frames})", frames=n)
    frames, audio = frames[:n], audio[: n * SAMPLES_PER_FRAME]
    aligned = align_video(frames, aligner)
    has_face = np.array([a is not None for a in aligned])
    faceless = int((~has_face).sum())
    segs = segments(n, scene_cuts(frames, cfg.scene_cut_threshold), has_face, cfg.min_frames)
    if not segs:
        why = "no face found" if faceless == n else f"no run of {cfg.min_frames} face frames"
        return SourceRecord(str(source), "skipped", why, frames=n, faceless_frames=faceless)
    steps = encode_log_mel(whisper, log_mel(audio)).half().numpy()  # [T50, L+1, 384]
    record = SourceRecord(str(source), "ok", frames=n, faceless_frames=faceless)
    for k, (s, e) in enumerate(segs):
        name = f"{key}_s{k:03d}"
        lo, hi = whisper_step_range(s, e, len(steps))
        meta = {
            "source": str(source),
            "start_frame": s,
            "num_frames": e - s,
            "fps": FPS,
            "sample_rate": SAMPLE_RATE,
            "resolution": cfg.resolution,
            "whisper_step_offset": lo,
            "whisper_total_steps": len(steps),
            "whisper_layers": int(steps.shape[1]),
            "matrices": [aligned[i].matrix.round(6).tolist() for i in range(s, e)],
            "ground_truth": _ground_truth(source, s, e),
        }
        crops = np.stack([aligned[i].crop for i in range(s, e)])
        seg_audio = audio[s * SAMPLES_PER_FRAME : e * SAMPLES_PER_FRAME]
        if cfg.clip_filter is not None:
            keep, score = cfg.clip_filter({"frames": crops, "audio": seg_audio, "meta": meta})
            meta["sync_score"] = float(score)
            if not keep:
                log.info("sync filter dropped %s (score %.3f)", name, score)
                continue
        tmp = out_dir / "shards" / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_video(tmp / "faces.mp4", crops, fps=FPS, crf=cfg.crf)
        np.save(tmp / "audio.npy", seg_audio.astype(np.float32))
        np.save(tmp / "whisper.npy", steps[lo:hi])
        (tmp / "meta.json").write_text(json.dumps(meta))
        final = out_dir / "shards" / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        record.shards.append(name)
    if not record.shards:
        record.status, record.reason = "skipped", "every segment rejected by the sync filter"
    return record


# ----------------------------------------------------------------------------- driver
@dataclass
class PrepareReport:
    sources: int = 0
    prepared: int = 0
    skipped: int = 0
    resumed: int = 0
    shards: int = 0
    skipped_files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{self.sources} source videos: {self.prepared} prepared, {self.skipped} skipped, "
            f"{self.resumed} already done; {self.shards} shards"
        ]
        lines += [f"  skipped {src}: {why}" for src, why in self.skipped_files.items()]
        return "\n".join(lines)


def prepare(src_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: PrepareConfig | None = None) -> PrepareReport:
    """Prepare every video under ``src_dir`` (resuming where a previous run stopped).

    The report describes the whole ``out_dir``: sources prepared by an earlier run count too.
    """
    from tqdm import tqdm

    cfg = cfg or PrepareConfig()
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():  # checked before anything is created
        raise FileNotFoundError(f"{src}: source folder not found" if not src.exists() else f"{src}: not a folder")
    videos = find_videos(src)
    if not videos:
        raise FileNotFoundError(f"{src}: no videos ({', '.join(VIDEO_EXTENSIONS)}) in the source folder")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "progress").mkdir(exist_ok=True)
    report = PrepareReport(sources=len(videos))
    jobs = []
    for v in videos:
        key = source_key(v)
        if (out / "progress" / f"{key}.json").is_file():
            report.resumed += 1
            continue
        jobs.append((str(v), key, str(out)))

    def record_done(key: str, rec: SourceRecord) -> None:
        path = out / "progress" / f"{key}.json"
        path.with_suffix(".tmp").write_text(json.dumps(asdict(rec)))
        os.replace(path.with_suffix(".tmp"), path)

    bar = tqdm(total=len(jobs), desc="prepare", unit="video")
    if cfg.workers <= 1:
        _init_worker(cfg)
        results = map(_process, jobs)
    else:
        pool = ProcessPoolExecutor(cfg.workers, initializer=_init_worker, initargs=(cfg,))
        results = pool.map(_process, jobs)
    skipped = 0
    try:
        for job, rec in zip(jobs, results):
            record_done(job[1], rec)
            skipped += rec.status == "skipped"
            bar.update()
            bar.set_postfix(skipped=skipped)
    finally:
        bar.close()
        if cfg.workers > 1:
            pool.shutdown()
    for rec in _records(out):
        if rec.status == "ok":
            report.prepared += 1
            report.shards += len(rec.shards)
        else:
            report.skipped += 1
            report.skipped_files[rec.source] = rec.reason
    (out / "report.json").write_text(json.dumps(asdict(report), indent=1))
    return report


def _records(out: Path) -> list[SourceRecord]:
    return [SourceRecord(**json.loads(p.read_text())) for p in sorted((out / "progress").glob("*.json"))]
