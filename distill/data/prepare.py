"""``turbosync prepare SRC_DIR OUT_DIR``: talking-head videos -> training shards in the teacher's format.

Per source video: decode at 25 fps and 16 kHz mono, optional scene-cut splitting, LatentSync
face alignment (frames without a face split the clip), Whisper features over the whole
file (the official normalisation), and one shard per kept segment. The video is streamed: frames
are aligned and their crops written to the open shard as they are decoded, and Whisper runs one
30 s window at a time, so memory does not grow with the video's length::

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
import itertools
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
    small_faces: bool = False  # find faces under LatentSync's 50 x 80 px minimum (teacher.face.build_aligner)
    choose: Any = "largest"  # which face when there are several: 'largest', an index from the left, a box in px
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
    faceless_frames: int = 0  # no face found (including too_small_frames and turned_frames)
    too_small_frames: int = 0  # only a face under the landmarker's minimum box
    turned_frames: int = 0  # the face turned away or in profile
    shard_frames: int = 0  # frames written to shards
    short_run_frames: int = 0  # frames with a face in runs shorter than min_frames (within a scene)
    filtered_frames: int = 0  # frames of segments dropped by the sync filter


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


def _thumb(frame: np.ndarray) -> np.ndarray:
    """32x32 grey thumbnail (uint8) of an RGB frame, for scene cuts."""
    import cv2

    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)


def _cut_score(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean abs difference (0..1) of two ``_thumb`` thumbnails."""
    return float(np.abs(cur.astype(np.float32) / 255.0 - prev.astype(np.float32) / 255.0).mean())


def scene_cuts(frames: np.ndarray, threshold: float | None) -> list[int]:
    """Indices ``i`` where frame ``i`` starts a new scene (mean abs difference of 32x32 grey thumbnails)."""
    if threshold is None or len(frames) < 2:
        return []
    thumbs = [_thumb(f) for f in frames]
    return [i for i in range(1, len(thumbs)) if _cut_score(thumbs[i - 1], thumbs[i]) > threshold]


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
    from teacher.face import build_aligner

    _WORKER["cfg"] = cfg
    _WORKER["aligner"] = build_aligner(cfg.resolution, small_faces=cfg.small_faces, choose=cfg.choose)
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
    """Turn one source video into shards, streaming its frames; returns what happened.

    Frames are decoded one at a time, aligned (translation EMA carried across frames), checked for
    a scene cut and, while a run of face frames lasts, their crops go straight into that run's
    ``faces.mp4``. A run that ends shorter than ``min_frames`` is discarded. When the stream ends
    (the video's or the audio's end, whichever is first) each kept run gets its Whisper steps,
    audio and meta, and is renamed into place.
    """
    from teacher.audio_windows import WhisperWindows
    from teacher.media import iter_video_frames, read_audio, trim_heap
    from teacher.video_source import VideoSource

    VideoSource(source).close()  # a missing, corrupt or video-less file fails here, before the audio
    audio = read_audio(source, sample_rate=SAMPLE_RATE)
    n_audio = len(audio) // SAMPLES_PER_FRAME
    frames = iter_video_frames(source, FPS)
    stream = _ShardStream(source, key, out_dir, cfg, aligner)
    try:
        head = [f for _, f in zip(range(min(cfg.min_frames, n_audio)), frames)]  # range first: no extra decode
        if len(head) < cfg.min_frames:
            why = f"too short: {len(head)} frames with audio (< {cfg.min_frames})"
            return SourceRecord(str(source), "skipped", why, frames=len(head))
        for frame in itertools.islice(itertools.chain(head, frames), n_audio):
            stream.add(frame)
            if stream.record.frames % 64 == 0:
                trim_heap()  # freed frames back to the OS (see teacher.media.trim_heap)
        stream.close_run()
    except BaseException:
        stream.discard()
        raise
    finally:
        frames.close()
    rec, n = stream.record, stream.record.frames
    if not stream.runs:
        rec.status = "skipped"
        rec.reason = "no face found" if rec.faceless_frames == n else f"no run of {cfg.min_frames} face frames"
        return rec
    audio = audio[: n * SAMPLES_PER_FRAME]
    steps = WhisperWindows(whisper, audio)  # the whole clip's official windows, one at a time
    for run in stream.runs:
        stream.finish(run, audio, steps)
    if not rec.shards:
        rec.status, rec.reason = "skipped", "every segment rejected by the sync filter"
    return rec


class _ShardStream:
    """The online part of ``process_video``: alignment, scene cuts, runs of face frames, open shards."""

    def __init__(self, source: Path, key: str, out_dir: Path, cfg: PrepareConfig, aligner):
        self.source, self.key, self.out_dir, self.cfg, self.aligner = source, key, out_dir, cfg, aligner
        self.record = SourceRecord(str(source), "ok")
        self.runs: list[dict] = []  # kept runs waiting for their Whisper steps
        self.run: dict | None = None  # the open run: start, matrices, writer, tmp folder (+ crops for the filter)
        self.state = None  # translation EMA
        self.prev_thumb = None

    def add(self, frame: np.ndarray) -> None:
        i = self.record.frames
        self.record.frames += 1
        cut = False
        if self.cfg.scene_cut_threshold is not None:
            thumb = _thumb(frame)
            cut = self.prev_thumb is not None and _cut_score(self.prev_thumb, thumb) > self.cfg.scene_cut_threshold
            self.prev_thumb = thumb
        face, self.state = self.aligner.align_step(frame, self.state)
        if face is None:
            self.record.faceless_frames += 1
            small = getattr(self.aligner.landmarker, "too_small", None) is not None
            self.record.too_small_frames += small
            self.record.turned_frames += not small and bool(getattr(self.aligner.landmarker, "turned_away", False))
        if cut or face is None:
            self.close_run()
        if face is None:
            return
        if self.run is None:
            from teacher.media import VideoWriter

            name = f"{self.key}_s{len(self.runs):03d}"
            tmp = self.out_dir / "shards" / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            writer = VideoWriter(tmp / "faces.mp4", FPS, crf=self.cfg.crf)
            self.run = {"name": name, "tmp": tmp, "start": i, "matrices": [], "writer": writer, "crops": []}
        self.run["writer"].write(face.crop)
        self.run["matrices"].append(face.matrix.round(6).tolist())
        if self.cfg.clip_filter is not None:  # the filter sees the crops in memory: one segment's worth
            self.run["crops"].append(face.crop)

    def close_run(self) -> None:
        """End the open run: keep it when long enough, else discard it."""
        run, self.run = self.run, None
        if run is None:
            return
        run["end"] = run["start"] + len(run["matrices"])
        if run["end"] - run["start"] >= self.cfg.min_frames:
            run["writer"].close()
            del run["writer"]
            self.runs.append(run)
        else:
            run["writer"].abort()
            shutil.rmtree(run["tmp"], ignore_errors=True)
            self.record.short_run_frames += run["end"] - run["start"]

    def discard(self) -> None:
        """Remove every shard folder this stream has started (after an error)."""
        if self.run is not None:
            self.run["writer"].abort()
            self.runs.append(self.run)
            self.run = None
        for run in self.runs:
            shutil.rmtree(run["tmp"], ignore_errors=True)
        self.runs = []

    def finish(self, run: dict, audio: np.ndarray, steps) -> None:
        """Whisper steps, audio and meta of a kept run; the sync filter; rename into place."""
        s, e, name, tmp = run["start"], run["end"], run["name"], run["tmp"]
        lo, hi = whisper_step_range(s, e, steps.num_steps)
        meta = {
            "source": str(self.source),
            "start_frame": s,
            "num_frames": e - s,
            "fps": FPS,
            "sample_rate": SAMPLE_RATE,
            "resolution": self.cfg.resolution,
            "whisper_step_offset": lo,
            "whisper_total_steps": steps.num_steps,
            "whisper_layers": steps.encoder.num_layers,
            "matrices": run["matrices"],
            "ground_truth": _ground_truth(self.source, s, e),
        }
        seg_audio = audio[s * SAMPLES_PER_FRAME : e * SAMPLES_PER_FRAME]
        if self.cfg.clip_filter is not None:
            keep, score = self.cfg.clip_filter({"frames": np.stack(run["crops"]), "audio": seg_audio, "meta": meta})
            meta["sync_score"] = float(score)
            if not keep:
                log.info("sync filter dropped %s (score %.3f)", name, score)
                shutil.rmtree(tmp, ignore_errors=True)
                self.record.filtered_frames += e - s
                return
        np.save(tmp / "audio.npy", seg_audio.astype(np.float32))
        np.save(tmp / "whisper.npy", steps.steps(lo, hi).half().numpy())
        (tmp / "meta.json").write_text(json.dumps(meta))
        final = self.out_dir / "shards" / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self.record.shards.append(name)
        self.record.shard_frames += e - s


# ----------------------------------------------------------------------------- driver
@dataclass
class PrepareReport:
    sources: int = 0
    prepared: int = 0
    skipped: int = 0
    resumed: int = 0
    shards: int = 0
    skipped_files: dict[str, str] = field(default_factory=dict)
    frames: int = 0  # 25 fps frames with audio, over every source
    shard_frames: int = 0  # ... of them in shards
    left_out: dict[str, int] = field(default_factory=dict)  # the rest, by reason

    def add(self, rec: SourceRecord, min_frames: int) -> None:
        """Count one source's record."""
        if rec.status == "ok":
            self.prepared += 1
            self.shards += len(rec.shards)
        else:
            self.skipped += 1
            self.skipped_files[rec.source] = rec.reason
        self.frames += rec.frames
        self.shard_frames += rec.shard_frames
        no_face = rec.faceless_frames - rec.too_small_frames - rec.turned_frames
        rest = rec.frames - rec.shard_frames - rec.faceless_frames - rec.short_run_frames - rec.filtered_frames
        for why, k in (("with no face", no_face), ("with a face too small", rec.too_small_frames),
                       ("with the face turned away or in profile", rec.turned_frames),
                       (f"in face runs under {min_frames} frames", rec.short_run_frames),
                       ("dropped by the sync filter", rec.filtered_frames), ("in videos too short", rest)):  # fmt: skip
            if k:
                self.left_out[why] = self.left_out.get(why, 0) + k

    def summary(self) -> str:
        """One line per skipped file, then the one summary line: sources, shards, frames used and left out (why)."""
        lines = [f"  skipped {src}: {why}" for src, why in self.skipped_files.items()]
        left = self.frames - self.shard_frames
        why = f" ({', '.join(f'{k} {w}' for w, k in self.left_out.items())})" if self.left_out else ""
        lines.append(
            f"{self.sources} source videos: {self.prepared} prepared, {self.skipped} skipped, "
            f"{self.resumed} already done; {self.shards} shards; {self.frames} frames: "
            f"{self.shard_frames} in shards, {left} left out{why}"
        )
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
        report.add(rec, cfg.min_frames)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=1))
    return report


def _records(out: Path) -> list[SourceRecord]:
    return [SourceRecord(**json.loads(p.read_text())) for p in sorted((out / "progress").glob("*.json"))]
