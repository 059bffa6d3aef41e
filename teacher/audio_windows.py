"""The teacher's Whisper features of a long clip, one official 30 s window at a time.

``teacher.audio.whisper_features`` computes LatentSync's conditioning for the whole clip at once:
the log-mel of the whole clip, every 30 s window encoded, then ``[T, 50, 384]`` token sets, which
is 77 kB per video frame (1.2 GB for 10 minutes). The official windows are independent apart from
one number, the log-mel maximum over the whole clip (the dynamic-range floor hangs from it), so
``WhisperWindows`` finds that maximum in a first pass over the windows, then encodes a window only
when a frame asks for it and keeps the last two. The result is bit-identical to
``whisper_features`` (``tests/teacher/test_streaming_memory.py``): each window's STFT frames are
computed from exactly the samples (reflect-padded at the clip's ends) the whole-clip STFT uses.

Memory: the 16 kHz audio (64 kB a second) plus at most two encoded windows (1500 x 5 x 384 float32,
11.5 MB each for Whisper tiny), whatever the clip's length.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from teacher.audio import (
    HOP_LENGTH,
    N_FFT,
    STEPS_PER_TOKEN_SET,
    WINDOW_MEL_FRAMES,
    WINDOW_STEPS,
    WhisperAudioEncoder,
    frame_step_indices,
    log10_mel,
    normalise_log_mel,
    num_video_frames,
    pad_mel_window,
    to_16k,
)

__all__ = ["WhisperWindows", "log10_mel_frames"]


def log10_mel_frames(x: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """``log10_mel`` of STFT frames ``[start, stop)`` of the whole clip ``x`` (16 kHz float32 ``[N]``):
    ``[80, stop - start]``, equal to ``log_mel``'s columns before the floor.

    Frame j is centred on sample ``160 j`` of the clip reflect-padded by 200 samples at both ends
    (``torch.stft(center=True, pad_mode="reflect")``); only the samples these frames see are read.
    """
    pad = N_FFT // 2
    idx = np.arange(start * HOP_LENGTH, (stop - 1) * HOP_LENGTH + N_FFT) - pad  # clip sample of each input
    idx = np.abs(idx)  # reflect at the start: x[-i] -> x[i]
    idx = np.where(idx >= len(x), 2 * (len(x) - 1) - idx, idx)  # ... and at the end
    seg = torch.from_numpy(np.ascontiguousarray(x[idx]))
    stft = torch.stft(seg, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), center=False, return_complex=True)
    return log10_mel(stft.abs() ** 2)


class WhisperWindows:
    """Per-frame token sets ``[F, 50, 384]`` of a clip, encoded one official 30 s window at a time.

    encoder: a loaded ``WhisperAudioEncoder``; audio: float mono ``[N]`` at ``sample_rate`` (checked
    and resampled as ``whisper_features`` does; ValueError when unusable). ``num_frames`` =
    ``floor(N_16k / 640)``; ``frames(idx)`` gives the token sets of 25 fps frames ``idx``, equal to
    ``whisper_features(audio, encoder)[idx]``; ``steps(lo, hi)`` the stacked 50 Hz states
    ``[hi - lo, L + 1, D]``, equal to ``encode_log_mel(encoder, log_mel(audio))[lo:hi]``.
    ``seconds`` counts the time spent computing.
    """

    def __init__(self, encoder: WhisperAudioEncoder, audio: np.ndarray | torch.Tensor, sample_rate: int = 16000,
                 keep: int = 2):  # fmt: skip
        import time

        t0 = time.perf_counter()
        self.encoder, self.keep = encoder, keep
        self.audio = to_16k(audio, sample_rate)
        self.num_frames = num_video_frames(len(self.audio))
        n_mel = len(self.audio) // HOP_LENGTH
        # (first mel frame, mel frames, steps kept) per window, as encode_log_mel cuts them
        cuts = [(s, min(s + WINDOW_MEL_FRAMES, n_mel) - s) for s in range(0, n_mel, WINDOW_MEL_FRAMES)]
        self.windows = [(s, n, int(n / 2)) for s, n in cuts if int(n / 2) > 0]
        self.num_steps = sum(k for _, _, k in self.windows)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.max_log = None
        if self.num_frames > 0:  # the whole-clip maximum of the log-mel, window by window
            self.max_log = torch.stack([log10_mel_frames(self.audio, s, s + n).max() for s, n in cuts]).max()
        self.seconds = time.perf_counter() - t0

    def window(self, w: int) -> torch.Tensor:
        """Stacked states of window ``w``: ``[steps kept, L + 1, D]`` (CPU float32)."""
        if w in self._cache:
            self._cache.move_to_end(w)
            return self._cache[w]
        import time

        t0 = time.perf_counter()
        s, n, k = self.windows[w]
        mel = normalise_log_mel(log10_mel_frames(self.audio, s, s + n), self.max_log)
        states = self.encoder(pad_mel_window(mel).unsqueeze(0)).cpu()[0, :k]
        self._cache[w] = states
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        self.seconds += time.perf_counter() - t0
        return states

    def _gather(self, steps: torch.Tensor) -> torch.Tensor:
        """States at global 50 Hz step indices (any shape) -> ``[*shape, L + 1, D]``."""
        flat = steps.reshape(-1)
        win = torch.div(flat, WINDOW_STEPS, rounding_mode="floor")
        out = torch.empty(flat.numel(), self.encoder.num_layers, self.encoder.hidden_size)
        for w in win.unique().tolist():
            sel = win == w
            out[sel] = self.window(w)[flat[sel] - w * WINDOW_STEPS]
        return out.reshape(*steps.shape, *out.shape[1:])

    def steps(self, lo: int, hi: int) -> torch.Tensor:
        """50 Hz states ``[hi - lo, L + 1, D]`` for steps ``lo .. hi - 1``."""
        if not 0 <= lo <= hi <= self.num_steps:
            raise IndexError(f"steps [{lo}, {hi}) outside [0, {self.num_steps})")
        return self._gather(torch.arange(lo, hi))

    def frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Token sets ``[F, 10 * (L + 1), D]`` of 25 fps frames ``indices`` (each in ``[0, num_frames)``)."""
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        if any(not 0 <= i < self.num_frames for i in idx):
            raise IndexError(f"frame index outside [0, {self.num_frames})")
        if not idx:
            return torch.zeros(0, STEPS_PER_TOKEN_SET * self.encoder.num_layers, self.encoder.hidden_size)
        steps = torch.cat([frame_step_indices(1, self.num_steps, i) for i in idx])  # [F, 10], the window rule
        feats = self._gather(steps)  # [F, 10, L + 1, D]
        return feats.reshape(len(idx), STEPS_PER_TOKEN_SET * feats.shape[2], feats.shape[3])
