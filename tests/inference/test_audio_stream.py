"""Streaming Whisper features: chunk invariance, emission timing, bounded state, the unpadded encoder,
no 30 s seam, and exact agreement with the offline features where both see the same window."""

import numpy as np
import pytest
import torch

from inference.audio_stream import (
    STREAM_LOOKAHEAD_SAMPLES,
    StreamConfig,
    encode_window,
    frame_ready_sample,
    stream_flush,
    stream_push,
    stream_start,
)
from teacher.audio import LOG_FLOOR, WhisperAudioEncoder, log_mel, mel_filters, pad_mel_window, whisper_features

SR = 16000
FAST = StreamConfig(context_seconds=1.0, block=2)       # 25-frame windows: cheap, same code paths


@pytest.fixture(scope="module")
def enc():
    return WhisperAudioEncoder.random_tiny(0)


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonics + noise with pauses: a non-stationary test signal."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 6))
    env = np.clip(np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)), 0, None)
    return (0.3 * env * voice + 0.02 * rng.standard_normal(n)).astype(np.float32)


def _run(enc, audio, cfg, sizes):
    """Push ``audio`` in pieces of the given sizes (cycled), flush; all emitted frames and the max buffer."""
    state, out, i, k, max_buf = stream_start(enc, cfg), [], 0, 0, 0
    while i < audio.size:
        n = sizes[k % len(sizes)]
        feats, state = stream_push(state, audio[i:i + n])
        out.append(feats)
        i, k = i + n, k + 1
        max_buf = max(max_buf, state.buffer.size)
    feats, state = stream_flush(state)
    return torch.cat([*out, feats]), max_buf


@pytest.mark.parametrize("absolute", [False, True])
def test_chunking_does_not_change_features(enc, absolute):
    audio = _speechy(3.0)[: 3 * SR - 77]
    cfg = StreamConfig(context_seconds=1.0, block=4, absolute_positions=absolute)
    whole, _ = _run(enc, audio, cfg, [audio.size])
    ms20, _ = _run(enc, audio, cfg, [320])
    rng = np.random.default_rng(1)
    rand, _ = _run(enc, audio, cfg, list(rng.integers(0, 3000, size=50)) + [1, 0])
    assert whole.shape == (-(-audio.size // 640), 50, 384)
    assert torch.equal(whole, ms20) and torch.equal(whole, rand)


@pytest.mark.parametrize("n", [0, 1, 639, 640, 641, 1919, 1920, 5000])
def test_flush_gives_ceil_frames(enc, n):
    feats, _ = _run(enc, _speechy(1.0)[:n], FAST, [max(n, 1)])
    assert feats.shape == (-(-n // 640), 50, 384) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("block", [1, 3])
def test_frame_emitted_exactly_when_its_block_lookahead_arrives(enc, block):
    assert STREAM_LOOKAHEAD_SAMPLES == 1920 and frame_ready_sample(5) == 640 * 8
    audio = _speechy(1.0)
    state, emitted = stream_start(enc, StreamConfig(context_seconds=1.0, block=block)), 0
    for first in range(0, 7, block):                                          # blocks [first, first + block)
        due = frame_ready_sample(first + block - 1)
        feats, state = stream_push(state, audio[state.num_samples:due - 1])    # one sample short
        emitted += feats.shape[0]
        assert emitted == first, f"frames {first}.. left before sample {due}"
        feats, state = stream_push(state, audio[due - 1:due])                   # the sample that completes them
        emitted += feats.shape[0]
        assert emitted == first + block
        assert all(frame_ready_sample(i) <= state.num_samples for i in range(emitted))


def test_empty_push_and_flush_after_flush(enc):
    state = stream_start(enc, FAST)
    feats, state = stream_push(state, np.zeros(0, np.float32))
    assert feats.shape == (0, 50, 384)
    feats, state = stream_flush(state)
    assert feats.shape == (0, 50, 384)
    with pytest.raises(ValueError, match="flushed"):
        stream_push(state, np.zeros(10, np.float32))


def test_buffer_stays_bounded(enc):
    cfg = StreamConfig(context_seconds=0.5, block=3)
    audio = _speechy(4.0)
    for sizes in ([320], [1], [7000, 13, 2500]):
        if sizes == [1]:
            audio_ = audio[: SR // 2]              # 1-sample pushes: keep it short
        else:
            audio_ = audio
        _, max_buf = _run(enc, audio_, cfg, sizes)
        # after every push: one context plus one frame of mel margin (context + block + chunk is the brief)
        assert max_buf <= cfg.context_samples + 640


def test_encode_window_matches_padded_forward(enc):
    mel = pad_mel_window(log_mel(_speechy(30.0)))                      # [80, 3000]
    ref = enc(mel[None])[0]                                            # [1500, 5, 384]
    ours = encode_window(enc, mel)
    assert ours.shape == ref.shape == (1500, 5, 384)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert encode_window(enc, mel[:, :7]).shape == (4, 5, 384)        # odd length: ceil(n / 2) steps
    with pytest.raises(ValueError):
        encode_window(enc, torch.zeros(80, 3002))
    pos = enc.encoder.embed_positions.weight                            # entry 0 = conv embedding + positions
    torch.testing.assert_close(encode_window(enc, mel[:, :400], first_position=100)[:, 0],
                               encode_window(enc, mel[:, :400])[:, 0] - pos[:200] + pos[100:300])
    with pytest.raises(ValueError, match="positions"):
        encode_window(enc, mel[:, :400], first_position=1301)


def test_stream_equals_offline_where_windows_coincide(enc):
    """30 s context, 30 s of audio: the flush window is the offline window, unpadded; with max_log set to
    the clip maximum the last frames must equal whisper_features (index and end-clamping alignment)."""
    audio = _speechy(30.0, seed=3)
    audio[29 * SR:] = 0.0                                              # digital silence: the floor matters
    power = torch.stft(torch.from_numpy(audio), 400, 160, window=torch.hann_window(400), center=True,
                       pad_mode="reflect", return_complex=True)[:, :-1].abs() ** 2
    top = float(torch.clamp(mel_filters() @ power, min=LOG_FLOOR).log10().max())
    cfg = StreamConfig(context_seconds=30.0, block=746, max_log=top)  # frames 746..749 come from flush
    state = stream_start(enc, cfg)
    early, state = stream_push(state, audio)
    late, _ = stream_flush(state)
    assert early.shape[0] == 746 and late.shape[0] == 4
    offline = whisper_features(audio, enc)
    torch.testing.assert_close(late, offline[746:], atol=1e-5, rtol=1e-4)


def test_no_seam_at_30_and_60_seconds(enc):
    n = 65 * SR
    t = np.arange(n) / SR
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * 200 * t) + 0.1 * np.sin(2 * np.pi * 1000 * t)
             + 0.01 * rng.standard_normal(n)).astype(np.float32)

    def change(f):                                                     # relative frame-to-frame change [F - 1]
        f = f.reshape(f.shape[0], -1)
        return (f[1:] - f[:-1]).norm(dim=1) / f[:-1].norm(dim=1)

    near = np.r_[745:755, 1495:1505]
    elsewhere = np.setdiff1d(np.arange(100, 1600), near)
    cfg = StreamConfig(context_seconds=1.0, block=8)
    streamed, _ = _run(enc, audio, cfg, [n])
    d = change(streamed)
    assert d[near].max() <= d[elsewhere].max() * 1.001
    d_off = change(whisper_features(audio, enc))                       # the metric sees the offline seam
    assert d_off[near].max() > 1.3 * d_off[elsewhere].max()


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((2, 320), np.float32), "1-D"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
    (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
    (np.zeros(320, np.int16), "floating point"),
    ([0.0, 0.1], "numpy array"),
])
def test_invalid_chunks_raise(enc, bad, msg):
    with pytest.raises(ValueError, match=msg):
        stream_push(stream_start(enc, FAST), bad)


@pytest.mark.parametrize("kwargs", [dict(block=0), dict(block=2.0), dict(context_seconds=0.1),
                                    dict(context_seconds=31.0), dict(max_log=float("nan"))])
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError):
        StreamConfig(**kwargs)
