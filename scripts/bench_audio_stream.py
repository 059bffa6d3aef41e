"""Gap between streaming and offline Whisper features on real speech; prints a table, writes JSON.

    python -m scripts.bench_audio_stream [--out runs/bench_audio_stream.json] [--seconds 38]

Audio: the ``/usr/share/sounds/alsa`` clips (48 kHz, resampled) and espeak-ng sentences (or
synthetic-world speech when espeak-ng is missing), joined with 0.25 s of silence, longer than
30 s so the offline 30 s boundary is crossed. Encoder: a RANDOM Whisper-tiny
(``random_tiny(0)``; real weights cannot be downloaded here), same cost as the real one.
Per config: per-frame cosine similarity of the flattened ``[50 * 384]`` token sets between
``inference.audio_stream`` (pushed in 20 ms chunks) and ``teacher.audio.whisper_features``
(mean, p5, min; mean over the first 4 s and over 26-30 s, where the offline positions are far
from the stream's), ms per frame of the stream, the block seam (mean relative frame-to-frame
change across block boundaries over the mean change inside blocks; 1.0 = no seam) and the 30 s
seam (largest change in frames 740-1000 over the 99th percentile of the change elsewhere; the
offline features score about 1.6). One torch thread.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming lip sync needs audio features before the video frame is drawn.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "A real time engine must never drift out of sync with the voice.",
    "Peter Piper picked a peck of pickled peppers.",
    "Whisper encodes thirty seconds of audio at a time.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Every frame takes eighty milliseconds of past audio and one hundred and twenty of future audio.",
)


def speech_audio(seconds: float) -> tuple[np.ndarray, list[str]]:
    """Real speech at 16 kHz ``[N]`` float32, ``N >= seconds * 16000``, and the list of its sources."""
    import soundfile as sf

    from distill.synthworld import sample_timeline, speak, speaker_for_identity, synthesize
    from teacher.audio import SAMPLE_RATE, to_16k

    gap = np.zeros(SAMPLE_RATE // 4, np.float32)
    parts, sources = [], []
    for path in sorted(glob.glob("/usr/share/sounds/alsa/*.wav")):
        a, sr = sf.read(path, dtype="float32", always_2d=True)
        parts += [to_16k(a.mean(axis=1), sr), gap]
        sources.append(Path(path).name)
    k = 0
    while sum(p.size for p in parts) < seconds * SAMPLE_RATE:
        a = speak(SENTENCES[k % len(SENTENCES)])
        if a is not None:
            sources.append(f"espeak-ng: {SENTENCES[k % len(SENTENCES)]!r}")
        else:
            spk = speaker_for_identity(k)
            rng = np.random.default_rng(k)
            a = synthesize(sample_timeline(rng, 4.0, rate=spk.rate), spk, rng, 4 * SAMPLE_RATE)
            sources.append(f"synthworld identity {k}, 4 s")
        parts += [a, gap]
        k += 1
    return np.concatenate(parts).astype(np.float32), sources


def stream_all(encoder, audio: np.ndarray, cfg, chunk: int) -> tuple[torch.Tensor, float]:
    """Every streamed frame ``[ceil(N / 640), 50, 384]`` and the wall time in seconds."""
    from inference.audio_stream import stream_flush, stream_push, stream_start

    state, out = stream_start(encoder, cfg), []
    t0 = time.perf_counter()
    for i in range(0, audio.size, chunk):
        feats, state = stream_push(state, audio[i:i + chunk])
        out.append(feats)
    feats, state = stream_flush(state)
    return torch.cat([*out, feats]), time.perf_counter() - t0


def relative_change(f: torch.Tensor) -> torch.Tensor:
    """``|f[i+1] - f[i]| / |f[i]|`` for flattened frames: ``[F, ...] -> [F - 1]``."""
    f = f.reshape(f.shape[0], -1)
    return (f[1:] - f[:-1]).norm(dim=1) / f[:-1].norm(dim=1)


def seam_ratio(d: torch.Tensor, lo: int = 740, hi: int = 1000) -> float:
    """Largest frame-to-frame change in frames ``[lo, hi)`` over the 99th percentile elsewhere (10 .. F-5)."""
    if d.shape[0] <= hi + 10:
        return float("nan")
    rest = torch.cat([d[10:lo], d[hi:-5]])
    return (d[lo:hi].max() / torch.quantile(rest, 0.99)).item()


def compare(stream: torch.Tensor, offline: torch.Tensor, block: int | None) -> dict:
    n = offline.shape[0]
    cos = torch.nn.functional.cosine_similarity(stream[:n].reshape(n, -1), offline.reshape(n, -1), dim=1)
    res = {"cos_mean": cos.mean().item(), "cos_p5": torch.quantile(cos, 0.05).item(), "cos_min": cos.min().item(),
           "cos_0_4s": cos[:100].mean().item(), "cos_26_30s": cos[650:750].mean().item() if n >= 750 else float("nan")}
    d = relative_change(stream[:n])                    # d[i]: frame i -> i + 1
    res["seam_30s"] = seam_ratio(d)
    if block and block > 1:
        across = (torch.arange(d.shape[0]) + 1) % block == 0
        res["block_seam"] = (d[across].mean() / d[~across].mean()).item()
    else:
        res["block_seam"] = 1.0
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench_audio_stream.json"))
    p.add_argument("--seconds", type=float, default=38.0, help="minimum audio length (> 30 s)")
    p.add_argument("--chunk-ms", type=int, default=20, help="push size")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from inference.audio_stream import DEFAULT_MAX_LOG, StreamConfig
    from teacher.audio import (
        WhisperAudioEncoder,
        encode_log_mel,
        frame_windows,
        log_mel,
        num_video_frames,
        whisper_features,
    )

    encoder = WhisperAudioEncoder.random_tiny(0)
    audio, sources = speech_audio(args.seconds)
    chunk = args.chunk_ms * 16
    offline = whisper_features(audio, encoder)
    d_off = relative_change(offline)
    rows = []
    # Offline 30 s windows with a fixed max_log: the part of the gap due to the normalisation alone.
    for max_log in (DEFAULT_MAX_LOG,):
        fixed = frame_windows(encode_log_mel(encoder, log_mel(audio, max_log)), num_video_frames(audio.size))
        rows.append({"context_s": 30.0, "block": None, "max_log": max_log, "kind": "offline fixed max",
                     "positions": "offline", "ms_per_frame": float("nan"), **compare(fixed, offline, None)})
    m = DEFAULT_MAX_LOG
    configs = [(2.0, 4, m, False), (4.0, 4, m, False), (8.0, 4, m, False), (4.0, 4, 0.5, False),
               (4.0, 4, 2.0, False), (4.0, 1, m, False), (8.0, 8, m, False), (4.0, 4, m, True), (8.0, 4, m, True)]
    for ctx, block, max_log, absolute in configs:
        cfg = StreamConfig(context_seconds=ctx, block=block, max_log=max_log, absolute_positions=absolute)
        feats, wall = stream_all(encoder, audio, cfg, chunk)
        rows.append({"context_s": ctx, "block": block, "max_log": max_log, "kind": "stream",
                     "positions": "absolute" if absolute else "window",
                     "ms_per_frame": 1000 * wall / feats.shape[0], **compare(feats, offline, block)})
        print(f"  done {cfg}", flush=True)

    print(f"\n{audio.size / 16000:.1f} s of speech ({len(sources)} sources), {offline.shape[0]} frames; "
          f"offline 30 s seam ratio {seam_ratio(d_off):.2f}")
    cols = ("kind", "positions", "context_s", "block", "max_log", "cos_mean", "cos_p5", "cos_min", "cos_0_4s",
            "cos_26_30s", "block_seam", "seam_30s", "ms_per_frame")
    print(" | ".join(f"{c:>9s}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>9.3f}" if isinstance(r[c], float) else f"{str(r[c]):>9s}" for c in cols))
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
        "torch": torch.__version__, "encoder": "RANDOM Whisper-tiny (WhisperAudioEncoder.random_tiny(0))",
        "audio_seconds": audio.size / 16000, "sources": sources, "chunk_ms": args.chunk_ms,
        "offline_seam_ratio": seam_ratio(d_off), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
