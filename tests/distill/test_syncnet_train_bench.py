"""The sync columns of the benchmarks: LSE over a clip's windows joined back (an oracle SyncNet on the loudness
world), the shuffled-audio control, and the audio shift of scripts/bench_syncnet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.benchmark import Window, lse_metrics, shuffle_audio, teacher_method
from distill.syncnet_data import SyncWindow
from scripts.bench_syncnet import shifted_audio, truth_difference
from tests.distill.test_syncnet_train import SPF, OracleSyncNet, _loudness

F_WIN = 8  # benchmark windows of 8 frames; the SyncNet reads 4


def _windows(loud: np.ndarray, audio_from: np.ndarray, clip: int, size: int = 16) -> tuple[list, list[Window]]:
    """Windows tiling one clip of the loudness world: frames [F, R, R, 3] in [0, 1] whose grey level encodes
    ``loud``, audio noise of loudness ``audio_from``."""
    level = (np.log(loud) - np.log(0.02)) / -np.log(0.02)
    audio = (0.5 * np.random.default_rng(clip).standard_normal(len(loud) * SPF) * np.repeat(audio_from, SPF))
    frames, wins = [], []
    for s in range(0, len(loud), F_WIN):
        frames.append(torch.from_numpy(level[s:s + F_WIN]).float()[:, None, None, None].expand(-1, size, size, 3))
        wins.append(Window(frames=None, mask=None, mask_latent=None, masked_latents=None, ref_latents=None,
                           audio_embeds=torch.full((1,), float(clip)), noise=None, mouth_open=np.zeros(F_WIN),
                           audio=audio[s * SPF:(s + F_WIN) * SPF].astype(np.float32), clip=clip, start=s))
    return frames, wins


def test_lse_metrics_joins_clips_and_scores_sync_above_mismatched_audio():
    sync_window, net = SyncWindow(4, 16, lower_half=True), OracleSyncNet(4)
    frames, wins = [], []
    for c in range(2):
        loud = _loudness(40 + c, 48)
        f, w = _windows(loud, loud, clip=c)
        frames += f
        wins += w
    order = np.random.default_rng(0).permutation(len(wins))  # windows in any order: joined by (clip, start)
    good = lse_metrics([frames[i] for i in order], [wins[i] for i in order], net, sync_window)
    assert good["sync_offset_abs"] == 0 and good["lse_c"] > 0.3
    f_bad, w_bad = _windows(_loudness(40, 48), _loudness(99, 48), clip=0)  # faces of one clip, audio of another
    bad = lse_metrics(f_bad, w_bad, net, sync_window)
    assert bad["lse_c"] < good["lse_c"] / 2 and bad["lse_d"] > good["lse_d"]
    with pytest.raises(ValueError, match="do not tile"):
        lse_metrics(frames[:1] + frames[2:3], wins[:1] + wins[2:3], net, sync_window)


def test_shuffled_audio_rows_take_another_clips_audio():
    _, wins = _windows(_loudness(1, 16), _loudness(1, 16), clip=0)
    _, more = _windows(_loudness(2, 16), _loudness(2, 16), clip=1)
    wins = shuffle_audio(wins + more)
    assert [float(w.other_audio_embeds) for w in wins] == [1.0, 1.0, 0.0, 0.0]
    _, plain = _windows(_loudness(1, 8), _loudness(1, 8), clip=0)
    with pytest.raises(ValueError, match="shuffle_audio"):
        teacher_method(None, 20, shuffled_audio=True)(plain[0])


def test_shifted_audio_moves_whole_frames():
    a = np.arange(1, 5 * SPF + 1, dtype=np.float32)
    late, early = shifted_audio(a, 2), shifted_audio(a, -2)
    assert len(late) == len(early) == len(a)
    assert np.all(late[:2 * SPF] == 0) and np.array_equal(late[2 * SPF:], a[:3 * SPF])
    assert np.array_equal(early[:3 * SPF], a[2 * SPF:]) and np.all(early[3 * SPF:] == 0)
    assert np.all(shifted_audio(a, 9) == 0)


def test_truth_difference_is_the_largest_gap_between_the_two_windows_true_mouth_tracks():
    from types import SimpleNamespace

    opened = [0.0, 0.0, 0.5, 0.9, 0.9, 0.2, 0.0, 0.0]
    width = [0.45, 0.45, 0.6, 0.6, 0.7, 0.5, 0.45, 0.45]
    shard = SimpleNamespace(meta={"ground_truth": {"mouth_open": opened, "mouth_width": width}})
    data = SimpleNamespace(window=SyncWindow(2, 16), shards=[shard])
    d = truth_difference(data, [(0, 0, 0), (0, 0, 6), (0, 2, 3), (0, 1, 4)])
    np.testing.assert_allclose(d, [0.0, 0.0, 0.4, 0.9], atol=1e-6)  # silence vs silence: the same tracks
    assert truth_difference(SimpleNamespace(window=data.window, shards=[SimpleNamespace(meta={})]), [(0, 0, 1)]) is None
