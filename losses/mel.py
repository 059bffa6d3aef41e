"""Audio front ends of the two SyncNets: LatentSync's mel spectrogram and the original SyncNet's MFCCs.

StableSyncNet (LatentSync ``latentsync/utils/audio.py`` with ``configs/audio.yaml``, itself
Wav2Lip's ``audio.py``), for 16 kHz mono audio in [-1, 1]:

    y     = lfilter([1, -0.97], [1], x)                       pre-emphasis
    S     = |STFT(y)|  n_fft 800, hop 200, hann 800, centred, zero padding (librosa 0.10 stft)
    M     = 20 log10(max(1e-5, mel(S))) - 20                   80 Slaney mels, 55-7600 Hz; min_level -100 dB
    mel   = clip(8 (M + 100) / 100 - 4, -4, 4)                 symmetric normalisation to [-4, 4]

80 mel frames a second; video frame ``i`` at 25 fps takes mel frames
``int(80 i / 25) .. + ceil(16 F / 5)`` (52 for F = 16 frames; LatentSync's ``crop_audio_window``).

Original SyncNet (joonson/syncnet_python, ``python_speech_features.mfcc`` defaults) on 16-bit
PCM sample values: pre-emphasis 0.97, 25 ms rectangular frames every 10 ms (zero-padded at
the end), power spectrum ``|rfft_512|^2 / 512``, 26 HTK-mel triangles 0-8 kHz, ``log``,
DCT-II (orthonormal) keeping 13, lifter 22, and c0 replaced by the log frame energy.
100 MFCC frames a second; the 5-frame video window starting at frame ``v`` meets MFCC
frames ``4v .. 4v + 20`` (0.2 s).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.fft import dct
from scipy.signal import lfilter

__all__ = [
    "SYNCNET_SAMPLE_RATE", "syncnet_mel", "syncnet_mel_filters", "mel_window", "mel_window_length",
    "mfcc", "mfcc_filterbank", "mfcc_windows",
]

# LatentSync configs/audio.yaml
SYNCNET_SAMPLE_RATE = 16000
N_FFT = 800
HOP_SIZE = 200
WIN_SIZE = 800
NUM_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_FPS = SYNCNET_SAMPLE_RATE / HOP_SIZE  # 80 mel frames a second

# python_speech_features.mfcc defaults (the original SyncNet's front end)
MFCC_WINLEN, MFCC_WINSTEP = 0.025, 0.01
MFCC_NUMCEP, MFCC_NFILT, MFCC_NFFT, MFCC_LIFTER = 13, 26, 512, 22
MFCC_PER_VIDEO_FRAME = 4   # 100 Hz MFCCs against 25 fps video
MFCC_WINDOW = 20           # 0.2 s = 5 video frames


def _mono(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio [N], got shape {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or inf")
    return x


def syncnet_mel_filters(sample_rate: int = SYNCNET_SAMPLE_RATE) -> np.ndarray:
    """The StableSyncNet mel filter bank ``[80, 401]`` float64: ``librosa.filters.mel(sr, n_fft=800,
    n_mels=80, fmin=55, fmax=7600)`` (Slaney mel scale, Slaney area normalisation), via transformers.
    """
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=NUM_MELS, min_frequency=FMIN,
                         max_frequency=FMAX, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney",
                         dtype=np.float64)
    return np.ascontiguousarray(fb.T)


def syncnet_mel(audio: np.ndarray | torch.Tensor, sample_rate: int = SYNCNET_SAMPLE_RATE) -> torch.Tensor:
    """LatentSync's ``melspectrogram``: 16 kHz mono audio ``[N]`` in [-1, 1] -> ``[80, 1 + N // 200]``
    float32 in [-4, 4] (computed in float64, as the numpy original).

    Raises ValueError for non-16 kHz audio, a non-1-D array, NaN/inf, or fewer than 2 samples.
    """
    if sample_rate != SYNCNET_SAMPLE_RATE:
        raise ValueError(f"SyncNet mels need {SYNCNET_SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample first")
    x = _mono(audio).astype(np.float64)
    if x.size < 2:
        raise ValueError("audio too short for a mel spectrogram")
    y = torch.from_numpy(lfilter([1.0, -PREEMPHASIS], [1.0], x))
    window = torch.hann_window(WIN_SIZE, periodic=True, dtype=torch.float64)
    spec = torch.stft(y, N_FFT, HOP_SIZE, WIN_SIZE, window=window, center=True, pad_mode="constant",
                      return_complex=True).abs()                          # [401, 1 + N // 200]
    mel = torch.from_numpy(syncnet_mel_filters(sample_rate)) @ spec
    min_level = math.exp(MIN_LEVEL_DB / 20 * math.log(10))               # 1e-5
    db = 20 * torch.log10(torch.clamp(mel, min=min_level)) - REF_LEVEL_DB
    norm = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return norm.clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE).float()


def mel_window_length(num_frames: int, fps: float = 25.0) -> int:
    """Mel frames per window of ``num_frames`` video frames: ``ceil(80 F / fps)`` (52 for 16 frames)."""
    return math.ceil(num_frames * MEL_FPS / fps - 1e-9)


def mel_window(mel: torch.Tensor, start_frame: int, num_frames: int, fps: float = 25.0) -> torch.Tensor:
    """The SyncNet audio input for video frames ``start_frame .. start_frame + num_frames``.

    ``mel [80, T]`` -> ``[1, 80, ceil(80 F / fps)]`` starting at mel frame ``int(80 start / fps)``
    (LatentSync's ``crop_audio_window``). Raises ValueError when the window runs past the audio
    (upstream silently skips such samples).
    """
    start = int(MEL_FPS * (start_frame / float(fps)))
    length = mel_window_length(num_frames, fps)
    if start < 0 or start + length > mel.shape[-1]:
        raise ValueError(f"mel window {start}..{start + length} is outside the {mel.shape[-1]} mel frames")
    return mel[:, start:start + length].unsqueeze(0)


def _hz2mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595 * np.log10(1 + np.asarray(hz) / 700.0)


def _mel2hz(mel: np.ndarray) -> np.ndarray:
    return 700 * (10 ** (mel / 2595.0) - 1)


def mfcc_filterbank(nfilt: int = MFCC_NFILT, nfft: int = MFCC_NFFT, sample_rate: int = SYNCNET_SAMPLE_RATE,
                    lowfreq: float = 0.0, highfreq: float | None = None) -> np.ndarray:
    """python_speech_features' triangular HTK-mel filters ``[nfilt, nfft // 2 + 1]``, edges snapped to
    FFT bins ``floor((nfft + 1) f / sr)``; unnormalised (peak 1)."""
    highfreq = highfreq or sample_rate / 2
    points = np.linspace(_hz2mel(lowfreq), _hz2mel(highfreq), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(points) / sample_rate)
    i = np.arange(nfft // 2 + 1)[None, :]
    lo, mid, hi = bins[:-2, None], bins[1:-1, None], bins[2:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where((i >= lo) & (i < mid), (i - lo) / (mid - lo), 0.0)
        fall = np.where((i >= mid) & (i < hi), (hi - i) / (hi - mid), 0.0)
    return rise + fall


def mfcc(audio: np.ndarray | torch.Tensor, sample_rate: int = SYNCNET_SAMPLE_RATE,
         pcm_scale: float = 32768.0) -> torch.Tensor:
    """The original SyncNet's MFCCs: mono audio ``[N]`` -> ``[13, T]`` float32, T = 1 + ceil((N - 400) / 160).

    The original reads a 16-bit wav, so its samples are integer PCM values: an integer array is
    used as it is, a float waveform in [-1, 1] is multiplied by ``pcm_scale`` (only c0, the log
    energy, depends on this scale). Computed in float64 as ``python_speech_features.mfcc``.
    """
    x = _mono(audio)
    x = x.astype(np.float64) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float64) * pcm_scale
    if x.size == 0:
        raise ValueError("empty audio")
    y = np.append(x[0], x[1:] - PREEMPHASIS * x[:-1])
    frame_len = round(MFCC_WINLEN * sample_rate)
    step = round(MFCC_WINSTEP * sample_rate)
    n = 1 if y.size <= frame_len else 1 + math.ceil((y.size - frame_len) / step)
    y = np.concatenate([y, np.zeros((n - 1) * step + frame_len - y.size)])
    frames = y[np.arange(frame_len)[None, :] + step * np.arange(n)[:, None]]          # [T, 400], rectangular
    power = np.abs(np.fft.rfft(frames, MFCC_NFFT)) ** 2 / MFCC_NFFT                   # [T, 257]
    energy = power.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = power @ mfcc_filterbank(sample_rate=sample_rate).T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :MFCC_NUMCEP]
    cep = cep * (1 + (MFCC_LIFTER / 2.0) * np.sin(np.pi * np.arange(MFCC_NUMCEP) / MFCC_LIFTER))
    cep[:, 0] = np.log(energy)
    return torch.from_numpy(cep.T.copy()).float()


def mfcc_windows(mfccs: torch.Tensor, num_windows: int) -> torch.Tensor:
    """Audio inputs of the original SyncNet: ``[13, T]`` -> ``[num_windows, 1, 13, 20]``, window ``v``
    covering MFCC frames ``4v .. 4v + 20`` (the 0.2 s meeting video frames ``v .. v + 4``)."""
    need = MFCC_PER_VIDEO_FRAME * (num_windows - 1) + MFCC_WINDOW
    if num_windows < 1 or mfccs.shape[-1] < need:
        raise ValueError(f"{num_windows} windows need {need} MFCC frames, got {mfccs.shape[-1]}")
    starts = torch.arange(num_windows) * MFCC_PER_VIDEO_FRAME
    idx = starts[:, None] + torch.arange(MFCC_WINDOW)[None, :]                         # [W, 20]
    return mfccs[:, idx].permute(1, 0, 2).unsqueeze(1).contiguous()
