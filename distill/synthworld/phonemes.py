"""Phoneme inventory, random utterances and the articulation (mouth) trajectory.

The synthetic world is built so that the *sound* determines the mouth: one phoneme
timeline drives both the audio synthesiser (:mod:`.audio`) and the mouth ground truth.
The mouth trajectory is a smooth (C1, then lightly low-passed) curve through per-phoneme
key poses, so it moves continuously (coarticulation) yet is fixed by the phonemes heard
within LatentSync's audio window of a frame (80 ms past, 120 ms future).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d

# Mouth shape classes (per-frame ``mouth_shape`` values).
SHAPE_SILENCE, SHAPE_OPEN, SHAPE_ROUND, SHAPE_SPREAD, SHAPE_BILABIAL, SHAPE_FRICATIVE = range(6)
SHAPE_NAMES = ("silence", "open", "round", "spread", "bilabial", "fricative")


@dataclass(frozen=True)
class Phone:
    """One entry of the inventory: articulation target and acoustic recipe."""

    label: str
    kind: str  # "silence" | "vowel" | "nasal" | "plosive" | "fricative"
    shape: int  # one of SHAPE_*
    open: float  # target inner-lip opening, 0 (closed) .. 1 (wide open "a")
    width: float  # target lip width, 0 (rounded, narrow) .. 1 (spread)
    formants: tuple[float, ...] = ()  # F1, F2, F3 in Hz (vowels, nasals)
    voiced: bool = False
    dur_ms: tuple[float, float] = (60.0, 250.0)


PHONES: dict[str, Phone] = {
    "sil": Phone("sil", "silence", SHAPE_SILENCE, 0.0, 0.45, dur_ms=(80.0, 250.0)),
    "a": Phone("a", "vowel", SHAPE_OPEN, 1.0, 0.62, (780.0, 1250.0, 2550.0), True, (100.0, 250.0)),
    "e": Phone("e", "vowel", SHAPE_SPREAD, 0.55, 0.82, (500.0, 1850.0, 2600.0), True, (90.0, 220.0)),
    "i": Phone("i", "vowel", SHAPE_SPREAD, 0.28, 0.95, (300.0, 2300.0, 3000.0), True, (90.0, 200.0)),
    "o": Phone("o", "vowel", SHAPE_ROUND, 0.68, 0.28, (520.0, 900.0, 2450.0), True, (100.0, 240.0)),
    "u": Phone("u", "vowel", SHAPE_ROUND, 0.32, 0.12, (320.0, 800.0, 2300.0), True, (90.0, 220.0)),
    "m": Phone("m", "nasal", SHAPE_BILABIAL, 0.0, 0.5, (260.0, 1100.0, 2300.0), True, (70.0, 150.0)),
    "b": Phone("b", "plosive", SHAPE_BILABIAL, 0.0, 0.5, (220.0,), True, (70.0, 130.0)),
    "p": Phone("p", "plosive", SHAPE_BILABIAL, 0.0, 0.5, (), False, (80.0, 140.0)),
    "f": Phone("f", "fricative", SHAPE_FRICATIVE, 0.12, 0.6, (), False, (70.0, 160.0)),
    "s": Phone("s", "fricative", SHAPE_FRICATIVE, 0.1, 0.8, (), False, (70.0, 170.0)),
}
VOWELS = ("a", "e", "i", "o", "u")
ONSETS = ("p", "b", "m", "f", "s")
CODAS = ("m", "s", "f")


@dataclass(frozen=True)
class Segment:
    """A phoneme occupying ``[start, end)`` seconds."""

    label: str
    start: float
    end: float

    @property
    def phone(self) -> Phone:
        return PHONES[self.label]


def sample_timeline(rng: np.random.Generator, seconds: float, rate: float = 1.0) -> list[Segment]:
    """Random utterance covering at least ``seconds``: words of CV(C) syllables and pauses.

    ``rate`` > 1 speaks faster (durations divided by it, kept within 60-250 ms).
    """
    labels: list[str] = []
    durs: list[float] = []

    def add(label: str, scale: float = 1.0) -> None:
        lo, hi = PHONES[label].dur_ms
        d = rng.uniform(lo, hi) * scale / rate
        if label != "sil":
            d = float(np.clip(d, 60.0, 250.0))
        labels.append(label)
        durs.append(d / 1000.0)

    add("sil", rng.uniform(0.5, 1.5))
    total = sum(durs)
    while total < seconds + 0.3:
        for _ in range(int(rng.integers(1, 4))):  # syllables per word
            if rng.random() < 0.75:
                add(str(rng.choice(ONSETS)))
            add(str(rng.choice(VOWELS)))
            if rng.random() < 0.2:
                add(str(rng.choice(CODAS)))
        pause = rng.random()
        if pause < 0.55:
            add("sil", rng.uniform(0.7, 1.0))
        elif pause < 0.8:
            add("sil", rng.uniform(1.5, 2.5))
        total = sum(durs)
    ends = np.cumsum(durs)
    starts = np.concatenate([[0.0], ends[:-1]])
    return [Segment(lab, float(s), float(e)) for lab, s, e in zip(labels, starts, ends)]


MAX_TRANSITION_S = 0.06


def _knots(timeline: list[Segment], attr: str) -> tuple[np.ndarray, np.ndarray]:
    """Key poses: each phoneme holds its target over the middle half of its duration
    (transitions take at most ``MAX_TRANSITION_S`` on each side of a boundary)."""
    ts, vs = [], []
    for seg in timeline:
        ramp = min(0.25 * (seg.end - seg.start), MAX_TRANSITION_S)
        v = getattr(seg.phone, attr)
        ts += [seg.start + ramp, seg.end - ramp]
        vs += [v, v]
    return np.asarray(ts), np.asarray(vs)


# Extra low-pass of the articulators (lips/jaw cannot move instantaneously).
ARTICULATOR_SIGMA_S = 0.02


def articulation(timeline: list[Segment], times: np.ndarray) -> dict[str, np.ndarray]:
    """Mouth ``open`` and ``width`` (both in [0, 1]) at ``times`` (seconds), shape ``[len(times)]``.

    Piecewise-cubic monotone (PCHIP) interpolation through the key poses, then a Gaussian
    low-pass of ``ARTICULATOR_SIGMA_S``, evaluated on a 1 ms grid and linearly resampled.
    """
    dt = 1e-3
    t_end = max(float(times.max()) if len(times) else 0.0, timeline[-1].end) + 0.1
    grid = np.arange(0.0, t_end + dt, dt)
    out = {}
    for attr in ("open", "width"):
        kt, kv = _knots(timeline, attr)
        kt = np.concatenate([[-1.0], kt, [t_end + 1.0]])
        kv = np.concatenate([[kv[0]], kv, [kv[-1]]])
        curve = PchipInterpolator(kt, kv)(grid)
        curve = gaussian_filter1d(curve, ARTICULATOR_SIGMA_S / dt, mode="nearest")
        out[attr] = np.clip(np.interp(times, grid, curve), 0.0, 1.0)
    return out


def labels_at(timeline: list[Segment], times: np.ndarray) -> list[str]:
    """Phoneme label active at each time (the last segment extends to infinity)."""
    starts = np.asarray([s.start for s in timeline])
    idx = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(timeline) - 1)
    return [timeline[i].label for i in idx]


def frame_truth(timeline: list[Segment], num_frames: int, fps: float) -> dict[str, np.ndarray]:
    """Per-frame ground truth at frame centres ``(i + 0.5) / fps``.

    Returns ``mouth_open`` [T] float32, ``mouth_width`` [T] float32, ``mouth_shape`` [T] int64
    (SHAPE_* of the phoneme at the frame centre) and ``phoneme`` [T] str.
    """
    times = (np.arange(num_frames) + 0.5) / fps
    art = articulation(timeline, times)
    labels = labels_at(timeline, times)
    return {
        "mouth_open": art["open"].astype(np.float32),
        "mouth_width": art["width"].astype(np.float32),
        "mouth_shape": np.asarray([PHONES[lab].shape for lab in labels], dtype=np.int64),
        "phoneme": np.asarray(labels),
    }
