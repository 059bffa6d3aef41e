"""SyncNet audio front ends against closed forms: LatentSync's mel (Slaney filters, a bin-centred sine through
pre-emphasis and a hann STFT, silence, windows) and the original SyncNet's MFCCs (a constant signal, whose
rectangular-window spectrum is a Dirichlet kernel)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from losses import mel as M


def slaney_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))


def slaney_hz(m):
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp(np.log(6.4) * (m - 15) / 27))


def test_mel_filters_are_librosa_slaney_filters():
    # librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600), written out
    edges = slaney_hz(np.linspace(slaney_mel(55.0), slaney_mel(7600.0), 82))
    freqs = np.arange(401) * 16000 / 800
    lo, c, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
    expected = tri * (2.0 / (hi - lo))
    fb = M.syncnet_mel_filters()
    assert fb.shape == (80, 401)
    np.testing.assert_allclose(fb, expected, rtol=1e-9, atol=1e-12)


def test_sine_on_a_bin_closed_form():
    """A sine at bin k (k cycles per 800 samples) of amplitude A: after pre-emphasis it is a sine of amplitude
    A |1 - 0.97 e^{-i w}|; a periodic-hann 800-point DFT of it has |X_k| = 200 A', |X_{k+-1}| = 100 A'."""
    k, amp, n = 31, 0.25, 16000
    w = 2 * np.pi * k / 800
    x = amp * np.sin(w * np.arange(n))
    out = M.syncnet_mel(x).double()
    assert out.shape == (80, 1 + n // 200)
    a_pre = amp * abs(1 - 0.97 * np.exp(-1j * w))
    spec = np.zeros(401)
    spec[k], spec[k - 1], spec[k + 1] = 200 * a_pre, 100 * a_pre, 100 * a_pre
    db = 20 * np.log10(np.maximum(1e-5, M.syncnet_mel_filters() @ spec)) - 20
    expected = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    interior = out[:, 3:-3].numpy()  # frames whose 800 samples lie inside the signal after its first sample
    np.testing.assert_allclose(interior, np.repeat(expected[:, None], interior.shape[1], 1), atol=2e-5)
    assert expected.max() > 0 and expected.min() == -4  # some bands lit, the rest at the floor


def test_silence_is_the_floor_and_bad_input_fails():
    torch.testing.assert_close(M.syncnet_mel(np.zeros(3200)), torch.full((80, 17), -4.0))
    with pytest.raises(ValueError, match="16000 Hz"):
        M.syncnet_mel(np.zeros(3200), sample_rate=48000)
    with pytest.raises(ValueError, match="NaN"):
        M.syncnet_mel(np.full(3200, np.nan))
    with pytest.raises(ValueError, match="mono"):
        M.syncnet_mel(np.zeros((2, 3200)))


def test_mel_windows_follow_latentsync():
    assert M.mel_window_length(16) == 52 and M.mel_window_length(8) == 26 and M.mel_window_length(5) == 16
    mel = torch.arange(80 * 200, dtype=torch.float32).reshape(80, 200)
    win = M.mel_window(mel, start_frame=7, num_frames=16)
    assert win.shape == (1, 80, 52)
    assert torch.equal(win[0], mel[:, 22:74])  # int(80 * 7 / 25) = 22
    with pytest.raises(ValueError, match="outside"):
        M.mel_window(mel, start_frame=50, num_frames=16)


def htk_filterbank(nfilt=26, nfft=512, sr=16000):
    """python_speech_features.get_filterbanks, loops as published."""
    mel = np.linspace(2595 * np.log10(1 + 0 / 700), 2595 * np.log10(1 + 8000 / 700), nfilt + 2)
    bins = np.floor((nfft + 1) * (700 * (10 ** (mel / 2595) - 1)) / sr)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fb


def test_mfcc_filterbank():
    np.testing.assert_array_equal(M.mfcc_filterbank(), htk_filterbank())


def test_mfcc_of_a_constant_closed_form():
    """x = c: pre-emphasis leaves 0.03 c after the first sample, so every frame after the first is constant and
    its 512-point power spectrum is (0.03 c)^2 |D(f)|^2 / 512 with the Dirichlet kernel
    |D(f)| = |sin(pi f 400 / 512) / sin(pi f / 512)|, D(0) = 400. Then log filterbank energies, an orthonormal
    DCT-II written as a cosine sum, lifter 1 + 11 sin(pi n / 22), and c0 = log of the frame energy."""
    c, frames = 1000.0, 12
    n = 400 + 160 * (frames - 1)  # frames fit exactly: no end padding
    out = M.mfcc(np.full(n, c), pcm_scale=1.0).double().numpy()
    assert out.shape == (13, frames)
    f = np.arange(257)
    with np.errstate(invalid="ignore", divide="ignore"):
        dirichlet = np.where(f == 0, 400.0, np.abs(np.sin(np.pi * f * 400 / 512) / np.sin(np.pi * f / 512)))
    power = (0.03 * c) ** 2 * dirichlet**2 / 512
    logfb = np.log(np.maximum(htk_filterbank() @ power, np.finfo(float).eps))
    k, i = np.arange(13)[:, None], np.arange(26)[None, :]
    dct = np.sqrt(2 / 26) * np.cos(np.pi * k * (2 * i + 1) / 52)
    dct[0] /= np.sqrt(2)
    cep = (dct @ logfb) * (1 + 11 * np.sin(np.pi * np.arange(13) / 22))
    cep[0] = np.log(power.sum())
    np.testing.assert_allclose(out[:, 1:], np.repeat(cep[:, None], frames - 1, 1), rtol=1e-5, atol=1e-4)


def test_mfcc_scale_and_windows():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, 16000)
    pcm = np.round(x * 32768).astype(np.int16)
    a, b = M.mfcc(x), M.mfcc(pcm)
    assert a.shape == (13, 1 + math.ceil((16000 - 400) / 160))
    torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-2)  # int16 rounding only
    torch.testing.assert_close(M.mfcc(x, pcm_scale=2.0)[1:], M.mfcc(x)[1:], rtol=1e-5, atol=1e-4)  # scale -> c0 only
    assert not torch.allclose(M.mfcc(x, pcm_scale=2.0)[0], M.mfcc(x)[0])
    w = M.mfcc_windows(a, 3)
    assert w.shape == (3, 1, 13, 20)
    assert torch.equal(w[2, 0], a[:, 8:28])
    with pytest.raises(ValueError, match="MFCC frames"):
        M.mfcc_windows(a[:, :30], 4)
