"""Teacher Whisper features against an independent reference on tiny random OpenAI checkpoints.

The reference below is written from the published facts only: numpy log-mel with a hand-rolled
slaney filter bank, the OpenAI encoder as plain torch ops on the raw state dict, and the
official segmentation / per-frame windowing rules as simple loops.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from teacher import audio as ta

SR = 16000
DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
            n_vocab=64, n_text_ctx=8, n_text_state=384, n_text_head=6, n_text_layer=1)


# --- tiny OpenAI-format checkpoint -------------------------------------------------------------------
def _sinusoids(length, channels, max_timescale=10000.0):
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).float()


def _block(prefix, d, g, cross=False):
    def lin(out_f, in_f, bias=True):
        b = 1 / math.sqrt(in_f)
        w = {"weight": (torch.rand(out_f, in_f, generator=g) * 2 - 1) * b}
        if bias:
            w["bias"] = (torch.rand(out_f, generator=g) * 2 - 1) * b
        return w

    def ln():
        return {"weight": 1 + 0.1 * torch.randn(d, generator=g), "bias": 0.1 * torch.randn(d, generator=g)}

    parts = {"attn.query": lin(d, d), "attn.key": lin(d, d, bias=False), "attn.value": lin(d, d),
             "attn.out": lin(d, d), "attn_ln": ln(), "mlp.0": lin(4 * d, d), "mlp.2": lin(d, 4 * d),
             "mlp_ln": ln()}
    if cross:
        parts.update({"cross_attn.query": lin(d, d), "cross_attn.key": lin(d, d, bias=False),
                      "cross_attn.value": lin(d, d), "cross_attn.out": lin(d, d), "cross_attn_ln": ln()})
    return {f"{prefix}.{m}.{p}": t for m, ps in parts.items() for p, t in ps.items()}


def openai_state_dict(dims=DIMS, seed=0):
    """A full OpenAI Whisper ``model_state_dict`` (encoder and decoder) with random weights."""
    g = torch.Generator().manual_seed(seed)
    d, n_mels = dims["n_audio_state"], dims["n_mels"]
    sd = {
        "encoder.conv1.weight": (torch.rand(d, n_mels, 3, generator=g) * 2 - 1) / math.sqrt(3 * n_mels),
        "encoder.conv1.bias": (torch.rand(d, generator=g) * 2 - 1) / math.sqrt(3 * n_mels),
        "encoder.conv2.weight": (torch.rand(d, d, 3, generator=g) * 2 - 1) / math.sqrt(3 * d),
        "encoder.conv2.bias": (torch.rand(d, generator=g) * 2 - 1) / math.sqrt(3 * d),
        "encoder.positional_embedding": _sinusoids(dims["n_audio_ctx"], d),
        "encoder.ln_post.weight": 1 + 0.1 * torch.randn(d, generator=g),
        "encoder.ln_post.bias": 0.1 * torch.randn(d, generator=g),
    }
    for n in range(dims["n_audio_layer"]):
        sd.update(_block(f"encoder.blocks.{n}", d, g))
    dt = dims["n_text_state"]
    sd["decoder.token_embedding.weight"] = torch.randn(dims["n_vocab"], dt, generator=g) * 0.02
    sd["decoder.positional_embedding"] = torch.randn(dims["n_text_ctx"], dt, generator=g) * 0.02
    for n in range(dims["n_text_layer"]):
        sd.update(_block(f"decoder.blocks.{n}", dt, g, cross=True))
    sd["decoder.ln.weight"], sd["decoder.ln.bias"] = torch.ones(dt), torch.zeros(dt)
    return {k: v.half() for k, v in sd.items()}      # the official tiny.pt is stored in fp16


def save_ckpt(path, state_dict, dims=DIMS):
    torch.save({"dims": dict(dims), "model_state_dict": state_dict}, path)
    return path


@pytest.fixture(scope="module")
def state_dict():
    return openai_state_dict()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, state_dict):
    return save_ckpt(tmp_path_factory.mktemp("whisper") / "tiny.pt", state_dict)


@pytest.fixture(scope="module")
def encoder(ckpt):
    return ta.WhisperAudioEncoder.from_checkpoint(ckpt)


def make_audio(num_samples, seed=0, sr=SR):
    """Two tones (one amplitude-modulated) plus noise, quiet in its first third so the dynamic-range floor matters, and
    loudest after 30 s so a per-window (instead of whole-clip) maximum would show."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
         + 0.1 * np.sin(2 * np.pi * 1300 * t) + 0.05 * rng.standard_normal(num_samples))
    x[: num_samples // 3] *= 1e-6
    x[30 * sr:] *= 2.0
    return x.astype(np.float32)


# --- independent reference ---------------------------------------------------------------------------
def slaney_filters(sr=16000, n_fft=400, n_mels=80):
    """librosa-style slaney filters ``[n_mels, n_fft // 2 + 1]`` written out in float64."""
    f_sp, brk_hz, brk_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < brk_hz, f / f_sp, brk_mel + np.log(np.maximum(f, 1e-300) / brk_hz) / logstep)

    def mel_to_hz(m):
        return np.where(m < brk_mel, m * f_sp, brk_hz * np.exp(logstep * (m - brk_mel)))

    hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    out = np.zeros((n_mels, freqs.size))
    for m in range(n_mels):
        rise = (freqs - hz[m]) / (hz[m + 1] - hz[m])
        fall = (hz[m + 2] - freqs) / (hz[m + 2] - hz[m + 1])
        out[m] = np.maximum(0.0, np.minimum(rise, fall)) * 2.0 / (hz[m + 2] - hz[m])
    return out


def reference_log_mel(audio):
    """numpy float64: centred reflect-padded periodic-hann STFT, drop last frame, slaney, log10."""
    x = np.pad(audio.astype(np.float64), 200, mode="reflect")
    n_frames = 1 + (x.size - 400) // 160
    frames = np.stack([x[i * 160: i * 160 + 400] for i in range(n_frames)])[:-1]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2
    log_spec = np.log10(np.maximum(slaney_filters() @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return torch.from_numpy((log_spec + 4.0) / 4.0).float()


def reference_encoder(sd, mel, n_head=6):
    """OpenAI AudioEncoder as plain ops: mel ``[80, 3000]`` -> ``[1500, L + 1, D]`` before ln_post."""
    w = {k[len("encoder."):]: v.float() for k, v in sd.items() if k.startswith("encoder.")}
    x = F.gelu(F.conv1d(mel[None], w["conv1.weight"], w["conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1))
    x = x.permute(0, 2, 1) + w["positional_embedding"]
    d = x.shape[-1]
    scale = (d // n_head) ** -0.25
    states = [x]
    n = 0
    while f"blocks.{n}.attn.query.weight" in w:
        p = f"blocks.{n}."
        h = F.layer_norm(x, (d,), w[p + "attn_ln.weight"], w[p + "attn_ln.bias"])
        q = F.linear(h, w[p + "attn.query.weight"], w[p + "attn.query.bias"])
        k = F.linear(h, w[p + "attn.key.weight"])
        v = F.linear(h, w[p + "attn.value.weight"], w[p + "attn.value.bias"])
        q = q.view(1, -1, n_head, d // n_head).permute(0, 2, 1, 3) * scale
        k = k.view(1, -1, n_head, d // n_head).permute(0, 2, 3, 1) * scale
        v = v.view(1, -1, n_head, d // n_head).permute(0, 2, 1, 3)
        o = (torch.softmax(q @ k, dim=-1) @ v).permute(0, 2, 1, 3).flatten(2)
        x = x + F.linear(o, w[p + "attn.out.weight"], w[p + "attn.out.bias"])
        h = F.layer_norm(x, (d,), w[p + "mlp_ln.weight"], w[p + "mlp_ln.bias"])
        h = F.linear(F.gelu(F.linear(h, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"])),
                     w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
        x = x + h
        states.append(x)
        n += 1
    return torch.stack(states, dim=2)[0]


@torch.no_grad()
def reference_features(sd, audio_16k):
    """Official rules, written as loops: 3000-frame segments, keep int(len/2) steps, 10-step windows."""
    mel = reference_log_mel(audio_16k)
    n = mel.shape[1]
    kept = []
    seek = 0
    while seek < n:
        end = min(seek + 3000, n)
        seg = mel[:, seek:seek + 3000]
        seg = torch.cat([seg, torch.zeros(80, 3000 - seg.shape[1])], dim=1)
        kept.append(reference_encoder(sd, seg)[: int((end - seek) / 2)])
        seek += 3000
    arr = torch.cat(kept)
    frames = []
    for i in range(len(audio_16k) // 640):
        rows = [arr[min(max(j, 0), len(arr) - 1)] for j in range(2 * i - 4, 2 * i + 6)]
        frames.append(torch.cat(rows, dim=0))                  # [10 * 5, 384], layer innermost
    return torch.stack(frames)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# --- tests: formulas ----------------------------------------------------------------------------------
def test_mel_filters_match_independent_slaney():
    ours = ta.mel_filters().numpy()
    assert ours.shape == (80, 201) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, slaney_filters(), rtol=1e-5, atol=1e-9)
    assert (ours >= 0).all() and (ours.max(axis=1) > 0).all()
    # closed form of slaney area norm: each triangle has unit area in Hz (40 Hz bins; wide bands)
    np.testing.assert_allclose(ours[45:].sum(axis=1) * 40.0, 1.0, atol=0.03)


def test_log_mel_matches_numpy_reference_with_global_max():
    audio = make_audio(int(3.3 * SR) + 77)
    mel = ta.log_mel(audio)
    ref = reference_log_mel(audio)
    assert mel.shape == ref.shape == (80, len(audio) // 160) and mel.dtype == torch.float32
    assert (mel - ref).abs().max().item() < 1e-4
    # the floor hangs from the whole-clip max: the quiet first third sits on it
    assert torch.isclose(mel.min(), mel.max() - 2.0, atol=1e-5)
    # a fixed max (streaming) changes only the floor
    fixed = ta.log_mel(audio, max_log=float(ref.max() * 4 - 4) + 1.0)
    assert fixed.min() > mel.min()


def test_frame_windows_rule_and_layer_order():
    t50, layers = 23, 5
    steps = torch.arange(t50, dtype=torch.float32)[:, None, None].expand(t50, layers, 2)
    layer_id = torch.arange(layers, dtype=torch.float32)[None, :, None].expand(t50, layers, 2)
    arr = torch.cat([steps[..., :1], layer_id[..., :1]], dim=-1)   # [T, L, 2] = (step, layer)
    out = ta.frame_windows(arr, 12)
    assert out.shape == (12, 50, 2)
    for i in range(12):
        want = [min(max(j, 0), t50 - 1) for j in range(2 * i - 4, 2 * i + 6)]
        assert out[i, :, 0].tolist() == [float(s) for s in want for _ in range(layers)]
        assert out[i, :, 1].tolist() == [float(k) for _ in want for k in range(layers)]


def test_window_constants():
    assert (ta.WINDOW_SECONDS, ta.WINDOW_MEL_FRAMES, ta.WINDOW_STEPS) == (30, 3000, 1500)
    assert ta.SAMPLES_PER_FRAME == 640 and ta.STEPS_PER_TOKEN_SET == 10


# --- tests: the whole chain ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples", [int(0.5 * SR) + 333, 31 * SR])
def test_features_match_independent_reference(encoder, state_dict, num_samples):
    audio = make_audio(num_samples, seed=num_samples)
    ours = ta.whisper_features(audio, encoder)
    ref = reference_features(state_dict, audio)
    assert ours.shape == ref.shape == (num_samples // 640, 50, 384)
    assert ours.dtype == torch.float32
    assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize("num_samples", [100, 639, 640, 1000, 16000, int(30.01 * SR), 31 * SR + 5])
def test_frame_count(encoder, num_samples):
    out = ta.whisper_features(make_audio(num_samples), encoder)
    assert out.shape == (num_samples // 640, 50, 384)
    assert torch.isfinite(out).all()


def test_stack_is_taken_before_ln_post(encoder):
    mel = ta.pad_mel_window(ta.log_mel(make_audio(SR)))
    stacked = ta.encode_mel_window(encoder, mel)
    assert stacked.shape == (1500, 5, 384)
    with torch.no_grad():
        hf_last = encoder.encoder(mel[None]).last_hidden_state[0]
    assert not torch.allclose(stacked[:, -1], hf_last, atol=1e-2)
    assert torch.allclose(encoder.encoder.layer_norm(stacked[:, -1]), hf_last, atol=1e-5)


def test_path_and_object_agree_and_teacher_is_frozen(ckpt, encoder):
    audio = make_audio(SR + 640 * 3)
    assert torch.equal(ta.whisper_features(audio, ckpt), ta.whisper_features(audio, encoder))
    assert not encoder.training and not encoder.encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.train().training and not encoder.encoder.training


def test_hf_folder_matches_pt(tmp_path, state_dict, encoder):
    from transformers import WhisperConfig, WhisperModel

    d = DIMS["n_audio_state"]
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=d, encoder_layers=4, encoder_attention_heads=6,
                        encoder_ffn_dim=4 * d, decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=4 * d,
                        max_source_positions=1500, max_target_positions=8, pad_token_id=0, bos_token_id=0,
                        eos_token_id=0, decoder_start_token_id=0)
    model = WhisperModel(cfg)
    names = {"attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
             "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm", "mlp.0": "fc1",
             "mlp.2": "fc2", "mlp_ln": "final_layer_norm"}
    hf = {}
    for k, v in state_dict.items():
        if not k.startswith("encoder."):
            continue
        k = k[len("encoder."):]
        if k.startswith("blocks."):
            _, n, rest = k.split(".", 2)
            module, param = rest.rsplit(".", 1)
            k = f"layers.{n}.{names[module]}.{param}"
        else:
            k = {"positional_embedding": "embed_positions.weight", "ln_post.weight": "layer_norm.weight",
                 "ln_post.bias": "layer_norm.bias"}.get(k, k)
        hf[k] = v.float()
    model.encoder.load_state_dict(hf, strict=True)
    model.save_pretrained(tmp_path / "whisper-tiny")

    audio = make_audio(2 * SR + 123, seed=3)
    from_folder = ta.whisper_features(audio, tmp_path / "whisper-tiny")
    from_pt = ta.whisper_features(audio, encoder)
    assert from_folder.shape == (50, 50, 384)
    assert rel_err(from_folder, from_pt) < 1e-6


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resampled_input(encoder, sr):
    from scipy.signal import resample_poly

    n = int(2.5 * sr) + 7
    audio = make_audio(n, sr=sr)
    out = ta.whisper_features(audio, encoder, sample_rate=sr)
    n16 = len(resample_poly(audio, SR // math.gcd(SR, sr), sr // math.gcd(SR, sr)))
    assert out.shape == (n16 // 640, 50, 384) and out.shape[0] == 62


# --- tests: errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("audio, sr, match", [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.zeros((2, 16000), np.float32), 16000, "1-D"),
    (np.full(16000, np.nan, np.float32), 16000, "NaN"),
    (np.zeros(16000, np.int16), 16000, "floating"),
    (np.zeros(16000, np.float32), 0, "sample_rate"),
    (np.zeros(16000, np.float32), -8000, "sample_rate"),
    (np.zeros(16000, np.float32), 22050.5, "sample_rate"),
    (np.zeros(16000, np.float32), "16000", "sample_rate"),
])
def test_bad_audio(encoder, audio, sr, match):
    with pytest.raises(ValueError, match=match):
        ta.whisper_features(audio, encoder, sample_rate=sr)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ta.whisper_features(make_audio(SR), tmp_path / "nope.pt")
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        ta.WhisperAudioEncoder.from_checkpoint(tmp_path / "hf")


def test_corrupt_and_foreign_checkpoints(tmp_path, state_dict):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="corrupt.pt"):
        ta.WhisperAudioEncoder.from_checkpoint(bad)
    unet = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(1)}, "global_step": 1}, unet)
    with pytest.raises(ValueError, match="latentsync_unet.pt.*'dims'"):
        ta.WhisperAudioEncoder.from_checkpoint(unet)
    no_dims = save_ckpt(tmp_path / "dims.pt", state_dict, {k: v for k, v in DIMS.items() if k != "n_mels"})
    with pytest.raises(ValueError, match="dims.pt.*n_mels"):
        ta.WhisperAudioEncoder.from_checkpoint(no_dims)
    v3 = save_ckpt(tmp_path / "v3.pt", state_dict, {**DIMS, "n_mels": 128})
    with pytest.raises(ValueError, match="v3.pt.*n_mels=80"):
        ta.WhisperAudioEncoder.from_checkpoint(v3)


def test_every_key_is_accounted_for(tmp_path, state_dict):
    missing = dict(state_dict)
    del missing["encoder.blocks.2.attn.key.weight"]
    extra = {**state_dict, "encoder.blocks.0.attn.key.bias": torch.zeros(384),
             "alien.weight": torch.zeros(1)}
    shaped = {**state_dict, "encoder.conv1.weight": torch.zeros(384, 80, 5)}
    cases = [(missing, r"missing \['encoder.blocks.2.attn.key.weight'\]"),
             (extra, r"unexpected \['alien.weight', 'encoder.blocks.0.attn.key.bias'\]"),
             (shaped, r"encoder.conv1.weight \[384, 80, 5\] != \[384, 80, 3\]")]
    for i, (sd, match) in enumerate(cases):
        path = save_ckpt(tmp_path / f"case{i}.pt", sd)
        with pytest.raises(ValueError, match=f"case{i}.pt.*{match}"):
            ta.WhisperAudioEncoder.from_checkpoint(path)
    # decoder keys alone may be dropped or changed: they are ignored
    enc_only = {k: v for k, v in state_dict.items() if k.startswith("encoder.")}
    ta.WhisperAudioEncoder.from_checkpoint(save_ckpt(tmp_path / "enc_only.pt", enc_only))
