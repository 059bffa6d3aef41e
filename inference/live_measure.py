"""A/V sync measured on the receiving side, with a synthetic-world clip whose mouth events are known.

The live page records, for every frame it draws, when it was shown and when the audio it was scheduled
with was heard (``performance.now`` ms, the audio side through ``AudioContext.getOutputTimestamp``), and,
while recording, the audio it actually played (an output tap, block by block, with its heard time). Two
measurements follow:

* ``timing_offset``: shown - heard per frame, from the page's own clocks (ms).
* ``content_offset``: from content alone. The played audio is located against the reference clip by
  cross-correlation (``locate``: the heard time of the clip's first sample; ``locate_pieces``: the same
  per 2 s piece, as a page restart moves the clip), the mouth opening of each
  shown frame is read from its pixels (``distill.synthworld.measure.measure_mouth``), and the offset is
  the shift of the clip's true mouth track (``frame_truth``, the world where the sound fixes the mouth)
  that best matches them: delta with shown(frame) = heard(its audio) + delta. Positive: lips late.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16000


@dataclass
class Speech:
    """A synthetic-world utterance: audio float32 [N] at 16 kHz and its true mouth opening per 40 ms frame [T]."""

    audio: np.ndarray
    mouth_open: np.ndarray


def speech(seed: int, seconds: float, identity: int = 1, pauses: tuple[tuple[float, float], ...] = ()) -> Speech:
    """Speech of the synthetic world (no pixels rendered), with silent ``pauses`` ((start s, length s), ...)
    inserted: their mouth truth is 0."""
    from distill.synthworld.audio import speaker_for_identity, synthesize
    from distill.synthworld.phonemes import frame_truth, sample_timeline

    t = int(round(seconds * 25))
    rng_t, rng_a = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    spk = speaker_for_identity(identity)
    timeline = sample_timeline(rng_t, t / 25, rate=spk.rate)
    audio = synthesize(timeline, spk, rng_a, t * 640, RATE)
    mouth = frame_truth(timeline, t, 25)["mouth_open"]
    for start, length in sorted(pauses, reverse=True):
        f0, n = int(round(start * 25)), int(round(length * 25))
        audio = np.concatenate([audio[: f0 * 640], np.zeros(n * 640, np.float32), audio[f0 * 640 :]])
        mouth = np.concatenate([mouth[:f0], np.zeros(n, np.float32), mouth[f0:]])
    return Speech(audio.astype(np.float32), mouth.astype(np.float32))


def idle_avatar_frames(seed: int = 0, seconds: float = 4.0, identity: int = 1, resolution: int = 256) -> np.ndarray:
    """uint8 [T, R, R, 3]: a synthetic-world face with its mouth closed (head motion and blinks kept), the kind
    of idle video an avatar is recorded from; frames that fall back to the avatar show a closed mouth."""
    from distill.synthworld.faces import face_model
    from distill.synthworld.render import blink_track, head_motion, render_frames

    t = int(round(seconds * 25))
    face = face_model(identity, resolution)
    rng = np.random.default_rng(seed)
    motion = head_motion(rng, t, 25, face.R, face.margin)
    return render_frames(face, np.zeros(t), np.full(t, 0.45), motion, blink_track(rng, t, 25))


def timing_offset(log: list[dict]) -> dict[str, float]:
    """shown - heard (ms) over the page's log entries {"shown", "heard", ...}: mean, median, std, min, max,
    95th percentile of |x| (a page starved of CPU draws late: that shows in the tail)."""
    x = np.array([e["shown"] - e["heard"] for e in log], np.float64)
    return {"frames": int(len(x)), "mean_ms": float(x.mean()), "median_ms": float(np.median(x)),
            "std_ms": float(x.std()), "min_ms": float(x.min()), "max_ms": float(x.max()),
            "p95_abs_ms": float(np.percentile(np.abs(x), 95))}  # fmt: skip


def heard_signal(blocks: list[dict]) -> tuple[float, np.ndarray]:
    """(perf ms of sample 0, float32 [n]) from the page's recorded output blocks {"perf", "samples"}."""
    p0 = blocks[0]["perf"]
    ends = [int(round((b["perf"] - p0) * RATE / 1000)) + len(b["samples"]) for b in blocks]
    out = np.zeros(max(ends), np.float32)
    for b in blocks:
        s = int(round((b["perf"] - p0) * RATE / 1000))
        out[s : s + len(b["samples"])] = b["samples"]
    return p0, out


def locate(blocks: list[dict], reference: np.ndarray) -> tuple[float, float]:
    """Heard time (perf ms) of the reference's sample 0, and the peak normalised correlation (0..1), by FFT
    cross-correlation of the played audio with the reference (which may loop: the nearest copy counts)."""
    p0, heard = heard_signal(blocks)
    lag, peak = _lag(heard, reference)
    return p0 - lag * 1000 / RATE, peak


def _lag(heard: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(lag, peak normalised correlation) with heard[j] ~ reference[j + lag], by FFT cross-correlation."""
    from scipy.signal import fftconvolve

    corr = fftconvolve(reference, heard[::-1], mode="full")  # corr[k] = sum ref[k - (n - 1) + j] heard[j]
    k = int(np.argmax(corr))
    lag = k - (len(heard) - 1)
    seg = reference[max(0, lag) : lag + len(heard)]
    h = heard[max(0, -lag) : max(0, -lag) + len(seg)]
    return lag, float(corr[k] / (np.linalg.norm(seg) * np.linalg.norm(h) + 1e-9))


Piece = tuple[float, float, float, float]  # perf ms of a piece's first and last sample, clip start heard, corr


def locate_pieces(blocks: list[dict], reference: np.ndarray, seconds: float = 2.0, min_rms: float = 0.01,
                  near_ms: float | None = None, span_s: float = 10.0) -> list[Piece]:  # fmt: skip
    """``locate`` per ``seconds``-long piece of the played audio with speech in it (RMS >= ``min_rms``):
    [(perf ms of the piece's first and last sample, heard time of the reference's sample 0, correlation)].
    A page that restarts its timeline, or an input clock that pads or trims, moves the clip between pieces.
    ``near_ms``: a first estimate of the clip's start (``locate``); each piece is then searched within
    ``span_s`` seconds of it (a long reference is slow to search whole)."""
    p0, heard = heard_signal(blocks)
    n = int(seconds * RATE)
    out = []
    for s0 in range(0, len(heard) - n // 2, n):
        piece = heard[s0 : s0 + n]
        if np.sqrt(np.mean(piece**2)) < min_rms:
            continue
        lo = 0
        ref = reference
        if near_ms is not None:  # reference sample heard at perf p: (p - near_ms) * RATE / 1000
            at = int((p0 + s0 * 1000 / RATE - near_ms) * RATE / 1000)
            lo = min(max(0, at - int(span_s * RATE)), max(0, len(reference) - len(piece)))
            ref = reference[lo : max(lo + len(piece), at + len(piece) + int(span_s * RATE))]
        lag, peak = _lag(piece, ref)
        start = p0 + (s0 - lag - lo) * 1000 / RATE
        out.append((p0 + s0 * 1000 / RATE, p0 + (s0 + len(piece)) * 1000 / RATE, start, peak))
    return out


def content_offset(shown_ms: np.ndarray, mouth: np.ndarray, ref_start_ms: float, truth: np.ndarray,
                   search_ms: float = 200.0) -> tuple[float, float]:  # fmt: skip
    """(delta ms, correlation at delta): the shift that best lines the measured mouth of frames shown at
    ``shown_ms`` up with the true mouth of the reference heard from ``ref_start_ms`` on. Frame k is shown
    at heard(k) + delta; its content is the truth at frame k's centre, so with delta the shown frame reads
    truth at (shown - delta - ref_start) / 40 ms - 0.5 + 0.5 (linear between frame centres)."""
    centres = np.arange(len(truth)) + 0.5
    best = (0.0, -2.0)
    for delta in np.arange(-search_ms, search_ms + 0.5, 1.0):
        x = (shown_ms - delta - ref_start_ms) / 40.0 + 0.5
        ok = (x >= 0.5) & (x <= len(truth) - 0.5)
        if ok.sum() < 20:
            continue
        t = np.interp(x[ok], centres, truth)
        c = float(np.corrcoef(mouth[ok], t)[0, 1]) if t.std() > 0 and mouth[ok].std() > 0 else -2.0
        if c > best[1]:
            best = (float(delta), c)
    return best


def mouth_of_jpegs(jpegs: list[bytes]) -> np.ndarray:
    """Mouth opening [n] of JPEG frames of the synthetic world (default search box)."""
    import cv2

    from distill.synthworld.measure import measure_mouth

    frames = np.stack([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for j in jpegs])
    return measure_mouth(frames)
