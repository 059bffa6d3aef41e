"""Speech-like audio from a phoneme timeline (source-filter synthesis, 16 kHz mono float32).

Voiced phonemes: a Rosenberg glottal pulse train (pitch contour with declination, accents,
jitter) through a cascade of formant resonators (Klatt 1980), cross-faded 10 ms at phoneme
boundaries. Plosives: closure (silent "p", voice bar "b") and a release burst. Fricatives:
band-passed noise. Voiced loudness follows the jaw: the amplitude envelope is
``0.2 + 0.8 * open(t)``, as in real speech where open vowels are the loudest.
``speak()`` optionally renders a real sentence with espeak-ng when it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from .phonemes import PHONES, Segment, articulation


@dataclass(frozen=True)
class Speaker:
    """Voice of one identity."""

    f0: float = 120.0  # mean pitch, Hz
    formant_scale: float = 1.0  # vocal-tract length factor (women/children > 1)
    breath: float = 0.03  # aspiration noise relative to voicing
    open_quotient: float = 0.6  # glottal open phase fraction
    rate: float = 1.0  # speaking-rate factor


def speaker_for_identity(identity: int) -> Speaker:
    """Deterministic voice per identity (pitch 95-230 Hz, formant scale 0.92-1.14)."""
    r = np.random.default_rng([7919, int(identity)])
    female = identity % 2 == 0
    f0 = r.uniform(175.0, 230.0) if female else r.uniform(95.0, 140.0)
    scale = r.uniform(1.04, 1.14) if female else r.uniform(0.92, 1.02)
    return Speaker(f0, scale, r.uniform(0.01, 0.06), r.uniform(0.5, 0.7), r.uniform(0.9, 1.15))


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """Klatt two-pole resonator with unit gain at DC."""
    c = -np.exp(-2.0 * np.pi * bw / sr)
    b = 2.0 * np.exp(-np.pi * bw / sr) * np.cos(2.0 * np.pi * freq / sr)
    a = 1.0 - b - c
    return lfilter([a], [1.0, -b, -c], x)


def _pitch(timeline: list[Segment], spk: Speaker, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """f0 contour [n] in Hz: phrase declination, smooth wander, accents on some vowels."""
    t = np.arange(n) / sr
    phase = rng.uniform(0, 2 * np.pi, 3)
    rates = rng.uniform(0.4, 2.5, 3)
    wander = sum(0.04 * np.sin(2 * np.pi * r * t + p) for r, p in zip(rates, phase))
    log_f0 = np.log(spk.f0) + wander
    phrase_start = 0.0
    for seg in timeline:  # declination: pitch falls ~12% over each phrase, resets after a pause
        if seg.label == "sil" and seg.end - seg.start > 0.12:
            phrase_start = seg.end
        elif seg.phone.kind == "vowel":
            i0, i1 = int(seg.start * sr), min(n, int(seg.end * sr))
            decl = -0.12 * np.clip((t[i0:i1] - phrase_start) / 2.0, 0, 1)
            accent = 0.08 * np.sin(np.pi * np.linspace(0, 1, max(i1 - i0, 1))) if rng.random() < 0.35 else 0
            log_f0[i0:i1] += decl + accent
    jitter = lfilter([0.02], [1, -0.98], rng.standard_normal(n)) * 0.2
    return np.exp(log_f0 + jitter)


def _glottal(f0: np.ndarray, spk: Speaker, sr: int) -> np.ndarray:
    """Differentiated Rosenberg glottal flow for the pitch contour ``f0`` [n]."""
    phase = np.cumsum(f0 / sr) % 1.0
    tp, tn = spk.open_quotient * 0.7, spk.open_quotient * 0.3
    flow = np.where(phase < tp, 0.5 * (1 - np.cos(np.pi * phase / tp)), 0.0)
    fall = (phase >= tp) & (phase < tp + tn)
    flow = np.where(fall, np.cos(0.5 * np.pi * (phase - tp) / tn), flow)
    return np.diff(flow, prepend=0.0) * 8.0


def _crossfade_weights(seg: Segment, n: int, sr: int, ramp: int) -> tuple[int, int, np.ndarray]:
    """Trapezoid weight over ``[i0, i1)`` whose ramps sum to one with the neighbours'."""
    s, e = int(round(seg.start * sr)), int(round(seg.end * sr))
    i0, i1 = max(0, s - ramp), min(n, e + ramp)
    idx = np.arange(i0, i1)
    w = np.clip((idx - (s - ramp)) / (2 * ramp), 0, 1) * np.clip(((e + ramp) - idx) / (2 * ramp), 0, 1)
    return i0, i1, w


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float, sr: int) -> np.ndarray:
    if n <= 0:
        return np.zeros(0)
    sos = butter(2, [lo, min(hi, 0.45 * sr)], btype="band", fs=sr, output="sos")
    return sosfilt(sos, rng.standard_normal(n))


@lru_cache(maxsize=64)
def _voice_gain(spk: Speaker, sr: int) -> float:
    """1 / loudest steady vowel of this speaker (with its jaw envelope): a fixed level per voice."""
    n = int(0.3 * sr)
    peak = 0.0
    for label in ("a", "e", "i", "o", "u"):
        ph = PHONES[label]
        x = _glottal(np.full(n, spk.f0 * 1.15), spk, sr)
        for k, f in enumerate(ph.formants):
            x = _resonator(x, f * spk.formant_scale, (60.0, 90.0, 150.0)[k], sr)
        peak = max(peak, float(np.abs(x[n // 3 :]).max()) * (0.2 + 0.8 * ph.open))
    return 1.0 / (peak + 1e-9)


def synthesize(
    timeline: list[Segment], speaker: Speaker, rng: np.random.Generator, num_samples: int, sr: int = 16000
) -> np.ndarray:
    """Render ``timeline`` to exactly ``num_samples`` float32 samples in [-1, 1]."""
    n = num_samples
    pre = int(0.02 * sr)  # filter warm-up before each segment
    ramp = int(0.005 * sr)
    f0 = _pitch(timeline, speaker, rng, n, sr)
    f0 = np.concatenate([np.full(pre, f0[0]), f0])  # source[j] is at time (j - pre) / sr
    source = _glottal(f0, speaker, sr)
    source = source + speaker.breath * rng.standard_normal(n + pre) * 3.0
    voiced = np.zeros(n)
    noise = np.zeros(n)
    fs = speaker.formant_scale
    for seg in timeline:
        if seg.start * sr >= n:
            break
        ph = seg.phone
        i0, i1, w = _crossfade_weights(seg, n, sr, ramp)
        if i1 <= i0:
            continue
        seg_len = i1 - i0
        if ph.kind in ("vowel", "nasal"):
            x = source[i0 : i1 + pre]
            for k, f in enumerate(ph.formants):
                bw = (60.0, 90.0, 150.0)[k] * (2.0 if ph.kind == "nasal" else 1.0)
                x = _resonator(x, f * fs, bw, sr)
            gain = 1.0 if ph.kind == "vowel" else 0.3
            voiced[i0:i1] += gain * w * x[pre:][:seg_len]
        elif ph.kind == "plosive":
            e = min(n, int(round(seg.end * sr)))
            if ph.voiced:  # voice bar: low-passed voicing through the closure
                x = _resonator(source[i0 : i1 + pre], 220.0, 120.0, sr)
                voiced[i0:i1] += 0.25 * w * x[pre:][:seg_len]
            burst = int(0.012 * sr)
            b0 = max(0, e - burst)
            env = np.exp(-np.linspace(0, 4, e - b0))
            noise[b0:e] += (0.2 if ph.voiced else 0.3) * env * _band_noise(rng, e - b0, 300, 3000, sr)[: e - b0]
            if not ph.voiced:  # aspiration into the next vowel
                a1 = min(n, e + int(0.02 * sr))
                noise[e:a1] += 0.05 * _band_noise(rng, a1 - e, 500, 3500, sr)[: a1 - e]
        elif ph.kind == "fricative":
            lo, hi, g = (1500.0, 7000.0, 0.05) if ph.label == "f" else (3800.0, 7600.0, 0.09)
            noise[i0:i1] += g * w * _band_noise(rng, seg_len, lo, hi, sr)
    times = np.arange(0, n + 160, 160) / sr  # jaw-driven loudness on a 10 ms grid
    jaw = np.interp(np.arange(n) / sr, times, articulation(timeline, times)["open"])
    voiced *= 0.2 + 0.8 * jaw
    out = 0.5 * (voiced * _voice_gain(speaker, sr) + noise)  # noise gains are relative to peak voicing
    out += 3e-4 * rng.standard_normal(n)  # room noise floor (about -70 dBFS)
    return (0.98 * np.tanh(out / 0.98)).astype(np.float32)  # soft limiter: linear below ~0.5


def speak(text: str, sample_rate: int = 16000, voice: str = "en") -> np.ndarray | None:
    """Real speech for ``text`` via espeak-ng, float32 mono at ``sample_rate``; None if unavailable.

    The mouth of such audio has no ground truth; use it for demos, not metrics.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    import soundfile as sf
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        g = np.gcd(int(sr), int(sample_rate))
        audio = resample_poly(audio, sample_rate // g, int(sr) // g).astype(np.float32)
    return audio
