"""Sync loss and LSE metrics against closed forms on hand-made embeddings; SyncLoss on a toy StableSyncNet."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import configs
import losses
from losses.sync import SyncLoss, offset_distances, sync_bce, sync_scores


def test_sync_bce_closed_form():
    # cos = 1, 0.6, 0 (clamped from -0.8), 0.8 for the four pairs
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    a = torch.tensor([[2.0, 0.0], [0.6, 0.8], [-0.8, 0.6], [0.0, 3.0]])
    out = sync_bce(v, a)
    expected = torch.tensor([0.0, -math.log(0.6), 100.0, -math.log(0.8)])  # BCELoss floors each log at -100
    assert out.shape == (4,)
    torch.testing.assert_close(out, expected)
    off = sync_bce(v, a, y=0.0)  # off-sync target: -log(1 - s)
    torch.testing.assert_close(off, torch.tensor([100.0, -math.log(0.4), 0.0, -math.log(0.2)]))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        sync_bce(v, a[:3])


def test_sync_bce_matches_latentsync_cosine_loss_on_nonnegative_embeddings():
    g = torch.Generator().manual_seed(0)
    v, a = torch.rand(6, 32, generator=g), torch.rand(6, 32, generator=g)
    y = torch.ones(6, 1)
    ref = torch.nn.BCELoss(reduction="none")(F.cosine_similarity(v, a).unsqueeze(1), y).squeeze()  # upstream
    torch.testing.assert_close(sync_bce(v, a), ref)


@pytest.fixture(scope="module")
def toy_loss():
    torch.manual_seed(0)
    cfg = configs.load("syncnet/toy")
    loss = configs.instantiate(cfg.loss)  # the loss node builds its SyncNet from the same file
    assert isinstance(loss, SyncLoss) and loss.resolution == 128 and loss.lower_half
    return loss


def test_sync_loss_on_frames(toy_loss):
    g = torch.Generator().manual_seed(1)
    frames = (torch.rand(2, 3, 8, 128, 128, generator=g) * 2 - 1).requires_grad_(True)
    mel = torch.rand(2, 1, 80, 26, generator=g) * 8 - 4
    out = toy_loss(frames, mel)
    assert out.shape == (2,) and out.dtype == torch.float32
    # closed form through the network by hand: frame-major channels, lower half, -log cos
    images = frames.detach().transpose(1, 2).reshape(2, 24, 128, 128)[:, :, 64:]
    with torch.no_grad():
        v, a = toy_loss.syncnet(images, mel)
    torch.testing.assert_close(out.detach(), -torch.log((v * a).sum(1)))
    out.sum().backward()
    assert frames.grad[:, :, :, 64:].abs().sum() > 0 and frames.grad[:, :, :, :64].abs().sum() == 0
    assert all(p.grad is None and not p.requires_grad for p in toy_loss.syncnet.parameters())
    assert not toy_loss.syncnet.training


def test_sync_loss_relative_to_real_frames(toy_loss):
    g = torch.Generator().manual_seed(2)
    frames = (torch.rand(3, 3, 8, 128, 128, generator=g) * 2 - 1).requires_grad_(True)
    real = torch.rand(3, 3, 8, 128, 128, generator=g) * 2 - 1
    real[1] = frames[1].detach()  # item 1: the generated window is its own real frames -> on the floor
    mel = torch.rand(3, 1, 80, 26, generator=g) * 8 - 4
    with torch.no_grad():
        absolute, floor = toy_loss(frames, mel), toy_loss(real, mel)
    out = toy_loss(frames, mel, real_frames=real)
    torch.testing.assert_close(out.detach(), (absolute - floor).clamp_min(0))  # max(0, L(gen) - L(real))
    assert out[1] == 0 and (out > 0).any()
    out.sum().backward()
    for b in range(3):  # gradient exactly where the generated window scores worse than its real frames
        assert (frames.grad[b].abs().sum() > 0) == bool(absolute[b] > floor[b])
    assert frames.grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="must match"):
        toy_loss(frames, mel, real_frames=real[:2])


def test_sync_loss_negatives_add_the_off_sync_pair(toy_loss):
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(3, 3, 8, 128, 128, generator=g) * 2 - 1
    mel = torch.rand(3, 1, 80, 26, generator=g) * 8 - 4
    with torch.no_grad():
        images = frames.transpose(1, 2).reshape(3, 24, 128, 128)[:, :, 64:]
        v, a = toy_loss.syncnet(images, mel)
        cos = v @ a.T  # unit, non-negative embeddings: cos[i, j] = cos(v_i, a_j)
        contrastive = SyncLoss(toy_loss.syncnet, resolution=128, negatives=True)
        out = contrastive(frames, mel)
    # -log cos(v_b, a_b) - log(1 - cos(v_b, a_{b-1})), b - 1 taken cyclically
    expected = torch.stack([-torch.log(cos[b, b]) - torch.log(1 - cos[b, (b - 1) % 3]) for b in range(3)])
    torch.testing.assert_close(out, expected)
    assert "negatives=True" in repr(contrastive)
    with pytest.raises(ValueError, match="at least 2"):
        contrastive(frames[:1], mel[:1])


def test_sync_loss_mel_negatives_closed_form(toy_loss):
    """-log(s_0 / (s_0 + sum_k s_k)) over the window's own audio and K off-sync candidates, on the net's own
    embeddings; composes with real_frames; rejects a mis-shaped candidate tensor."""
    g = torch.Generator().manual_seed(4)
    frames = torch.rand(2, 3, 8, 128, 128, generator=g) * 2 - 1
    mel = torch.rand(2, 1, 80, 26, generator=g) * 8 - 4
    negs = torch.rand(2, 3, 1, 80, 26, generator=g) * 8 - 4
    with torch.no_grad():
        images = frames.transpose(1, 2).reshape(2, 24, 128, 128)[:, :, 64:]
        v, a = toy_loss.syncnet(images, mel)
        _, a_neg = toy_loss.syncnet(images.repeat_interleave(3, 0), negs.reshape(6, 1, 80, 26))
        s = torch.cat([(v * a).sum(1, keepdim=True), (v[:, None] * a_neg.reshape(2, 3, -1)).sum(2)], 1)  # [B, 1+K]
        out = toy_loss(frames, mel, mel_negatives=negs)
        expected = -torch.log(s[:, 0] / s.sum(1))
        torch.testing.assert_close(out, expected)
        assert (out > 0).all()
        real = torch.rand(2, 3, 8, 128, 128, generator=g) * 2 - 1
        floor = toy_loss(real, mel, mel_negatives=negs)
        torch.testing.assert_close(toy_loss(frames, mel, real_frames=real, mel_negatives=negs),
                                   (expected - floor).clamp_min(0))  # fmt: skip
        # the window's own audio among the candidates: the odds are its own cosine twice over
        twice = toy_loss(frames, mel, mel_negatives=mel[:, None])
        torch.testing.assert_close(twice, torch.full((2,), math.log(2.0)))
    with pytest.raises(ValueError, match="mel_negatives must be"):
        toy_loss(frames, mel, mel_negatives=negs[:, 0])


def test_sync_loss_resizes_larger_faces(toy_loss):
    frames = torch.rand(1, 3, 8, 256, 256) * 2 - 1
    mel = torch.zeros(1, 1, 80, 26)
    small = F.interpolate(frames.transpose(1, 2).reshape(8, 3, 256, 256), size=(128, 128), mode="bicubic")
    small = small.reshape(1, 8, 3, 128, 128).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(toy_loss(frames, mel), toy_loss(small, mel))
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        toy_loss(frames[:, 0], mel)


def orthonormal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T.float()  # [n, d] orthonormal rows


@pytest.mark.parametrize("shift", [-4, 0, 3])
def test_lse_closed_form_on_orthonormal_embeddings(shift):
    """Audio a_t and extra video vectors are orthonormal, so every distance is 0, 1 or sqrt(2) (+ the 1e-6 eps):
    video frame t equals audio frame t - shift where that exists, else a fresh unit vector."""
    t_len, vshift = 20, 5
    basis = orthonormal(2 * t_len, 64)
    a = basis[:t_len]
    v = torch.stack([a[t - shift] if 0 <= t - shift < t_len else basis[t_len + t] for t in range(t_len)])
    d = offset_distances(v, a, vshift)
    # closed form: d_j = mean_t dist(v_t, a_{t+j-S}); a outside the clip is 0
    expected = []
    for j in range(2 * vshift + 1):
        total = 0.0
        for t in range(t_len):
            k = t + j - vshift
            if not 0 <= k < t_len:
                total += 1.0                                  # ||v_t - 0||
            elif 0 <= t - shift < t_len and k == t - shift:
                total += 0.0
            else:
                total += math.sqrt(2.0)
        expected.append(total / t_len)
    expected = torch.tensor(expected)
    torch.testing.assert_close(d, expected, atol=1e-4, rtol=0)
    s = sync_scores(v, a, vshift)
    best = int(torch.argmin(expected))
    assert s.offset == vshift - best == shift
    assert s.lse_d == pytest.approx(float(expected.min()), abs=1e-4)
    assert s.lse_c == pytest.approx(float(expected.median() - expected.min()), abs=1e-4)


def test_lse_matches_the_original_calc_pdist_loop():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 16, generator=g)
    v = torch.roll(a, 2, 0) + 0.3 * torch.randn(30, 16, generator=g)
    vshift = 15
    # syncnet_python's calc_pdist, written out
    a_pad = F.pad(a, (0, 0, vshift, vshift))
    dists = [F.pairwise_distance(v[[i], :].repeat(2 * vshift + 1, 1), a_pad[i:i + 2 * vshift + 1]) for i in range(30)]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    s = losses.sync_scores(v, a)
    torch.testing.assert_close(s.distances, mdist)
    assert s.offset == vshift - int(minidx) == 2
    assert s.lse_d == pytest.approx(float(minval)) and s.lse_c == pytest.approx(float(torch.median(mdist) - minval))
    with pytest.raises(ValueError):
        sync_scores(v, a[:-1])
