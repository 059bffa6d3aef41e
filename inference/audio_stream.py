"""Streaming Whisper features for the real-time engine: a sliding window with a fixed normalisation.

The offline teacher features (``teacher.audio.whisper_features``) encode each 30 s window on its
own, padded to 3000 mel frames, with the log-mel floor hung from the maximum of the whole window
(LatentSync's ``latentsync/whisper`` code). A stream cannot know that maximum, and chunk-by-chunk use of the
offline code gives features that depend on where a chunk starts, plus a seam every 30 s. Here:

- **Fixed grid.** Frames are computed in blocks ``[a, a + block)`` with ``a`` a multiple of
  ``block``. Block ``[a, b)`` is encoded once the audio reaches the lookahead of its last frame,
  sample ``640 * (b + 2)`` (frame ``i`` takes whisper steps ``2i-4 .. 2i+5``, and step ``2i+5``
  ends at sample ``640 * (i + 3)``: :data:`STREAM_LOOKAHEAD_SAMPLES` = 1920 samples = 120 ms
  past the frame's first sample). Every computation depends only on the frame index, never on how
  the audio was chunked, so the output is bit-identical for any chunking.
- **Sliding window.** The encoder sees the last ``context_seconds`` of audio (whole frames) ending
  at the block's lookahead end ``E``: samples ``[S, E)``, ``S = max(0, E - context)``. At the
  stream start ``S = 0``, exactly like the offline first window. The log-mel of the window is
  cut from a log-mel over ``[S - 640, E)`` so its first frames see real past audio, not a
  reflection; only the last mel frame (centred 10 ms before ``E``) sees reflect padding.
- **Fixed normalisation.** ``log_spec = max(log_spec, max_log - 8)`` with a constant ``max_log``
  instead of the window maximum (``teacher.audio.log_mel(audio, max_log)``).
- **Unpadded encoder.** :func:`encode_window` runs the Hugging Face encoder's modules on the real
  length ``n`` (positions ``0 .. n/2 - 1`` of every window; ``absolute_positions`` is an opt-in
  alternative), no zero padding to 3000 frames; it equals ``WhisperAudioEncoder.forward`` on a
  full 3000-frame window.
- **Bounded state.** The state keeps only the audio later windows need (at most one context, one
  frame of mel margin and the latest chunk); nothing depends on absolute 30 s windows.

End of stream (:func:`stream_flush`): ``ceil(N / 640)`` frames in all; the last partial frame is
zero-padded to a whole frame, and steps past the end clamp to the last step of the padded audio
(``frame_step_indices``), so for ``N`` a multiple of 640 the end clamping is the offline one.

Latency: a frame leaves when the lookahead of the last frame of its block has arrived, i.e.
120 ms plus up to ``block - 1`` frames (40 ms each) after the frame's start; ``block=1`` gives
the minimum, larger blocks divide the encoder calls per frame by ``block``.

Default ``max_log`` (``DEFAULT_MAX_LOG = 1.2``), measured with ``log10`` of the mel power before
any floor: the eight speech clips of ``/usr/share/sounds/alsa`` (48 kHz -> 16 kHz) have maxima
0.90-1.38 (median 1.10; ``Noise.wav``: -0.21), two espeak-ng sentences 1.12 and 1.22, and 8 s
of synthetic-world speech (identities 0-3) 0.83-1.76; the median over all 14 speech clips is
1.14. The floor ``max_log - 8`` only touches near-silence (the median log-mel value of speech is
about -5), so the choice matters little (see the table below).

Gap to the offline features, measured by ``python -m scripts.bench_audio_stream --out
runs/bench_audio_stream.json`` (x86_64 CPU, 1 torch thread, another job on the second core) on
41.0 s of real speech: the nine alsa clips and seven espeak-ng sentences, 0.25 s of silence
between, 1024 frames, so the offline 30 s boundary is crossed. The encoder is a RANDOM
Whisper-tiny (``WhisperAudioEncoder.random_tiny(0)``): real weights cannot be downloaded here,
so the numbers show the method, not the trained network. Per-frame cosine similarity between
streaming (pushed in 20 ms chunks) and offline ``whisper_features`` of the flattened
``[50 * 384]`` token sets; ``0-4s`` / ``26-30s``: mean over those stretches; block seam: mean
frame-to-frame change across block boundaries / inside blocks (1 = none); 30 s seam: largest
change in frames 740-1000 / 99th percentile elsewhere (offline: 1.62)::

    positions  context  block  max_log | cos mean   p5    min  0-4s  26-30s | block seam  30s seam | ms/frame
    offline      30 s     -     1.2    |   1.000  1.000 1.000 1.000  1.000  |    1.00       1.62   |   -
    window        2 s     4     1.2    |   0.336  0.158 0.104 0.739  0.166  |    1.63       1.00   |  10.6
    window        4 s     4     1.2    |   0.370  0.145 0.104 0.970  0.155  |    1.58       1.00   |  17.4
    window        8 s     4     1.2    |   0.459  0.182 0.111 0.979  0.179  |    1.52       1.00   |  34.7
    window        4 s     4     0.5    |   0.370  0.145 0.104 0.970  0.156  |    1.58       1.00   |  18.6
    window        4 s     4     2.0    |   0.370  0.144 0.104 0.970  0.155  |    1.59       1.00   |  18.0
    window        4 s     1     1.2    |   0.376  0.156 0.104 0.975  0.166  |    1.00       0.13   |  76.6
    window        8 s     8     1.2    |   0.458  0.177 0.111 0.979  0.169  |    1.71       1.00   |  17.9
    absolute      4 s     4     1.2    |   0.912  0.175 0.088 0.979  0.979  |    1.07       3.02   |  19.3
    absolute      8 s     4     1.2    |   0.834  0.145 0.086 0.979  0.984  |    1.13       2.94   |  34.7

(first row: the offline 30 s windows with the fixed ``max_log`` instead of the window maximum.)
Reading: the fixed normalisation costs nothing measurable (cosine 1.000; 0.5 / 1.2 / 2.0 agree
to 3 decimals). The gap is the positional embedding: offline, frame ``i`` sits at position
``2i mod 1500`` of its window; streamed, every frame sits near the end of its window. Where the
two agree (the first seconds) the cosine is 0.97-0.98 for a 4-8 s context; it falls to ~0.16 as
the offline position grows. This random encoder exaggerates it: its conv embedding has a mean
norm of 0.53 per step against 13.9 for the sinusoidal positions, so its states are mostly
position; how much the trained Whisper-tiny depends on position cannot be measured here.
``absolute_positions=True`` gives the offline positions and 0.98 away from the boundary, but a
30 s seam about 3x the largest ordinary change (worse than the offline 1.62) and positions a
teacher trained on short clips never saw; hence off by default. Block > 1 makes a seam every
block (frames of one block sit at different window positions): 1.5-1.7x; ``block=1`` has none
but runs the encoder 4x as often (76.6 vs 17.4 ms a frame). On this CPU, context 4 s / block 4
runs at ~17 ms a frame (real time needs < 40 ms).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from teacher.audio import (
    FUTURE_STEPS,
    HOP_LENGTH,
    N_MELS,
    SAMPLES_PER_FRAME,
    STEPS_PER_FRAME,
    STEPS_PER_TOKEN_SET,
    VIDEO_FPS,
    WINDOW_MEL_FRAMES,
    WINDOW_STEPS,
    WhisperAudioEncoder,
    frame_step_indices,
    log_mel,
)

__all__ = [
    "STREAM_LOOKAHEAD_SAMPLES", "DEFAULT_MAX_LOG", "StreamConfig", "StreamState", "stream_start",
    "stream_push", "stream_flush", "encode_window", "frame_ready_sample",
]

SAMPLES_PER_STEP = SAMPLES_PER_FRAME // STEPS_PER_FRAME                    # 320 (50 Hz)
STREAM_LOOKAHEAD_SAMPLES = (FUTURE_STEPS + 1) * SAMPLES_PER_STEP           # 1920 = 120 ms past a frame's start
MEL_MARGIN_SAMPLES = SAMPLES_PER_FRAME   # real past audio before a window, so its first STFT frames need no reflection
DEFAULT_MAX_LOG = 1.2                    # log10 mel power; measured on speech, see the module docstring


def frame_ready_sample(frame: int) -> int:
    """Number of 16 kHz samples needed before frame ``frame``'s lookahead is complete: ``640 * (i + 3)``."""
    return frame * SAMPLES_PER_FRAME + STREAM_LOOKAHEAD_SAMPLES


@dataclass(frozen=True)
class StreamConfig:
    """Streaming feature settings.

    context_seconds: audio the encoder sees per window, rounded to whole frames (40 ms); at least
        ``block + 4`` frames (so every step of the block is inside the window), at most 30 s.
    block: frames per encoder call (fixed grid of frame indices); latency grows by ``block - 1`` frames.
    max_log: fixed log-mel reference in log10 mel-power units; the floor is ``max_log - 8``.
    absolute_positions: False (default): positions ``0 .. T-1`` in every window, nothing depends on
        absolute time. True: the positions the offline code gives those steps (step mod 1500),
        shifted back when the window would run past position 1499; closer to the offline features
        but the offset jumps once per 30 s (a seam, measured 3x the largest ordinary change; offline 1.6x).
    Raises ValueError for values outside these ranges.
    """

    context_seconds: float = 4.0
    block: int = 4
    max_log: float = DEFAULT_MAX_LOG
    absolute_positions: bool = False

    def __post_init__(self):
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"block must be a positive integer (frames), got {self.block!r}")
        if not (isinstance(self.max_log, (int, float)) and math.isfinite(self.max_log)):
            raise ValueError(f"max_log must be a finite number (log10 mel power), got {self.max_log!r}")
        if not isinstance(self.absolute_positions, bool):
            raise ValueError(f"absolute_positions must be a bool, got {self.absolute_positions!r}")
        if not (isinstance(self.context_seconds, (int, float)) and math.isfinite(self.context_seconds)):
            raise ValueError(f"context_seconds must be a finite number, got {self.context_seconds!r}")
        lo, hi = self.block + 4, WINDOW_MEL_FRAMES * HOP_LENGTH // SAMPLES_PER_FRAME
        if not lo <= self.context_frames <= hi:
            raise ValueError(f"context_seconds={self.context_seconds} is {self.context_frames} frames; "
                             f"need {lo} (block + 4) to {hi} (30 s) frames of 40 ms")

    @property
    def context_frames(self) -> int:
        return round(self.context_seconds * VIDEO_FPS)

    @property
    def context_samples(self) -> int:
        return self.context_frames * SAMPLES_PER_FRAME


@dataclass(frozen=True)
class StreamState:
    """Everything the stream carries between calls (treat as immutable; functions return a new one).

    buffer: the retained 16 kHz audio ``[M]`` float32, samples ``[buffer_start, num_samples)``.
    num_samples: samples pushed so far. next_frame: first frame not emitted yet.
    closed: True after :func:`stream_flush`.
    """

    encoder: WhisperAudioEncoder
    cfg: StreamConfig
    buffer: np.ndarray
    buffer_start: int = 0
    num_samples: int = 0
    next_frame: int = 0
    closed: bool = False


# --- encoder on an unpadded window ---------------------------------------------------------------
@torch.no_grad()
def encode_window(encoder: WhisperAudioEncoder, mel: torch.Tensor, first_position: int = 0) -> torch.Tensor:
    """Stacked states of an unpadded log-mel: ``[B, 80, n]`` -> ``[B, T, L + 1, D]``, ``T = ceil(n / 2)``.

    Same modules as the HF ``WhisperEncoder`` (conv1, gelu, conv2, gelu, + ``embed_positions`` rows
    ``first_position .. first_position + T - 1``, every layer); entry 0 is the input embedding, entry
    ``k`` the output of layer ``k``, all before the final ``layer_norm``. A ``[80, n]`` input gives
    ``[T, L + 1, D]``. Raises ValueError for a wrong shape, ``n < 1`` or positions past 1499.
    """
    single = mel.ndim == 2
    x = mel.unsqueeze(0) if single else mel
    if x.ndim != 3 or x.shape[1] != N_MELS or not 1 <= x.shape[2] <= WINDOW_MEL_FRAMES:
        raise ValueError(f"expected a log-mel [B, {N_MELS}, n] or [{N_MELS}, n] with 1 <= n <= "
                         f"{WINDOW_MEL_FRAMES}, got {list(mel.shape)}")
    T = -(-x.shape[2] // 2)
    if not 0 <= first_position <= WINDOW_STEPS - T:
        raise ValueError(f"positions {first_position} .. {first_position + T - 1} are outside 0 .. {WINDOW_STEPS - 1}")
    enc = encoder.encoder
    h = torch.nn.functional.gelu(enc.conv1(x.to(encoder.device, torch.float32)))
    h = torch.nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)           # [B, T, D]
    h = h + enc.embed_positions.weight[first_position:first_position + T]
    states = [h]
    for layer in enc.layers:
        h = layer(h, None)
        states.append(h)
    out = torch.stack(states, dim=2)                                       # [B, T, L + 1, D]
    return out[0] if single else out


# --- streaming -------------------------------------------------------------------------------------
def stream_start(encoder: WhisperAudioEncoder, cfg: StreamConfig | None = None) -> StreamState:
    """A fresh stream at sample 0. ``encoder`` is a loaded ``WhisperAudioEncoder`` (reused, never copied)."""
    if not isinstance(encoder, WhisperAudioEncoder):
        raise TypeError(f"encoder must be a teacher.audio.WhisperAudioEncoder, got {type(encoder).__name__}")
    cfg = StreamConfig() if cfg is None else cfg
    if not isinstance(cfg, StreamConfig):
        raise TypeError(f"cfg must be a StreamConfig, got {type(cfg).__name__}")
    return StreamState(encoder=encoder, cfg=cfg, buffer=np.zeros(0, np.float32))


def stream_push(state: StreamState, audio_chunk: np.ndarray) -> tuple[torch.Tensor, StreamState]:
    """Append 16 kHz mono float audio ``[n]`` (any ``n >= 0``) and emit the frames that became complete.

    Returns ``feats [k, 10 * (L + 1), D]`` (``[k, 50, 384]`` for Whisper-tiny; CPU float32; ``k >= 0``
    frames, in order, continuing from the previous call) and the new state. A frame ``i`` is emitted
    once the audio reaches the lookahead of the last frame of its block (``frame_ready_sample``).
    Raises ValueError for a non-1-D, non-float or non-finite chunk, or a closed stream.
    """
    _check_open(state)
    chunk = _check_chunk(audio_chunk)
    state = dataclasses.replace(state, buffer=np.concatenate([state.buffer, chunk]),
                                num_samples=state.num_samples + chunk.size)
    out = []
    while frame_ready_sample(_block_end(state) - 1) <= state.num_samples:
        b = _block_end(state)
        out.append(_encode_frames(state, state.next_frame, b, end=frame_ready_sample(b - 1)))
        state = dataclasses.replace(state, next_frame=b)
    return _cat(state, out), _trim(state)


def stream_flush(state: StreamState) -> tuple[torch.Tensor, StreamState]:
    """End of stream: emit every frame not yet emitted, ``ceil(N / 640)`` frames in all.

    The audio tail is zero-padded to a whole frame; steps past the end clamp to the last step of
    that padded audio. Returns ``feats [k, 10 * (L + 1), D]`` and a closed state (push or flush on
    it raise ValueError).
    """
    _check_open(state)
    total = -(-state.num_samples // SAMPLES_PER_FRAME)                      # ceil(N / 640)
    out = []
    if state.next_frame < total:
        end = total * SAMPLES_PER_FRAME
        pad = np.zeros(end - state.num_samples, np.float32)
        padded = dataclasses.replace(state, buffer=np.concatenate([state.buffer, pad]), num_samples=end)
        # Every block left ends its window at ``end`` (earlier lookaheads were emitted by push), so
        # the windows coincide: one encoder call, cut per frame exactly as the grid would.
        out.append(_encode_frames(padded, state.next_frame, total, end=end))
    return _cat(state, out), dataclasses.replace(state, next_frame=max(total, state.next_frame), closed=True,
                                                 buffer=np.zeros(0, np.float32), buffer_start=state.num_samples)


# --- internals ---------------------------------------------------------------------------------------
def _block_end(state: StreamState) -> int:
    """End (exclusive) of the grid block holding ``state.next_frame``."""
    return (state.next_frame // state.cfg.block + 1) * state.cfg.block


def _window_start(cfg: StreamConfig, end: int) -> int:
    """First sample the encoder sees for a window ending at ``end`` (both multiples of 640)."""
    return max(0, end - cfg.context_samples)


def _encode_frames(state: StreamState, a: int, b: int, end: int) -> torch.Tensor:
    """Token sets of frames ``[a, b)`` from the window ``[S, end)``: ``[b - a, 10 * (L + 1), D]``."""
    start = _window_start(state.cfg, end)
    lo = max(0, start - MEL_MARGIN_SAMPLES)
    audio = state.buffer[lo - state.buffer_start: end - state.buffer_start]
    assert lo >= state.buffer_start and audio.size == end - lo, "stream buffer lost audio a window needs"
    skip = (start - lo) // HOP_LENGTH                                      # mel frames of margin
    mel = log_mel(audio, max_log=state.cfg.max_log)[:, skip:]              # [80, (end - start) / 160]
    T = (end - start) // SAMPLES_PER_STEP
    first = min((start // SAMPLES_PER_STEP) % WINDOW_STEPS, WINDOW_STEPS - T) if state.cfg.absolute_positions else 0
    steps = encode_window(state.encoder, mel, first).cpu()                 # [T, L + 1, D]
    idx = frame_step_indices(b - a, end // SAMPLES_PER_STEP, start_frame=a) - start // SAMPLES_PER_STEP
    assert idx.min() >= 0 and idx.max() < steps.shape[0], "frame steps outside the encoder window"
    layers, dim = steps.shape[1:]
    return steps[idx].reshape(b - a, STEPS_PER_TOKEN_SET * layers, dim)


def _trim(state: StreamState) -> StreamState:
    """Drop audio no later window needs; keeps at most ``context + 640`` samples.

    Every later window ends at or after ``ceil(N / 640) * 640`` (a push block's lookahead is past
    ``N``; the flush window ends at the padded end), and window starts only move forward.
    """
    earliest_end = -(-state.num_samples // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
    keep_from = max(0, _window_start(state.cfg, earliest_end) - MEL_MARGIN_SAMPLES)
    drop = keep_from - state.buffer_start
    if drop <= 0:
        return state
    return dataclasses.replace(state, buffer=state.buffer[drop:].copy(), buffer_start=keep_from)


def _cat(state: StreamState, parts: list[torch.Tensor]) -> torch.Tensor:
    if parts:
        return torch.cat(parts, dim=0)
    return torch.zeros(0, STEPS_PER_TOKEN_SET * state.encoder.num_layers, state.encoder.hidden_size)


def _check_open(state: StreamState) -> None:
    if not isinstance(state, StreamState):
        raise TypeError(f"state must be a StreamState from stream_start, got {type(state).__name__}")
    if state.closed:
        raise ValueError("the stream was flushed; start a new one with stream_start")


def _check_chunk(audio) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio chunk must be a numpy array, got {type(audio).__name__}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio chunk must be floating point in [-1, 1] at 16 kHz (int16 PCM: divide by 32768), "
                         f"got dtype {audio.dtype}")
    if audio.ndim != 1:
        raise ValueError(f"audio chunk must be mono and 1-D [n] at 16 kHz, got shape {list(audio.shape)}")
    if not np.isfinite(audio).all():
        raise ValueError("audio chunk contains NaN or infinite samples")
    return audio.astype(np.float32, copy=False)
