"""Whisper audio features of the LatentSync teacher.

The teacher conditions every video frame on a ``[50, 384]`` token set cut from Whisper-tiny
encoder states (LatentSync's ``latentsync/whisper/audio2feature.py``). The computation, step by step:

1. ``log_mel``: an 80-bin log-mel spectrogram of the *whole* 16 kHz clip at 100 Hz, with the
   dynamic-range floor hung from the maximum over the whole clip.
2. ``encode_log_mel``: the spectrogram is cut into 30 s windows of 3000 frames, each padded with
   zeros (in the log-mel domain) and encoded on its own. Per window the stacked states are the
   input embedding plus every block output, taken before ``ln_post``: ``[1500, L + 1, D]`` at
   50 Hz. Only the steps covering real audio are kept, and the windows are concatenated.
3. ``frame_windows``: video frame ``i`` (25 fps) takes whisper steps ``2i-4 .. 2i+5`` (clamped
   to the clip), flattened with the layer index innermost: ``[10 * (L + 1), D] = [50, 384]``.

The network is transformers' ``WhisperEncoder``; OpenAI-format checkpoints (``tiny.pt``) are
mapped onto it key by key, and every key of the file is accounted for.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

__all__ = [
    "SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "N_MELS", "WINDOW_SECONDS", "WINDOW_MEL_FRAMES",
    "WINDOW_STEPS", "STEPS_PER_SECOND", "VIDEO_FPS", "SAMPLES_PER_FRAME", "STEPS_PER_FRAME",
    "PAST_STEPS", "FUTURE_STEPS", "STEPS_PER_TOKEN_SET", "LOG_FLOOR", "DYNAMIC_RANGE",
    "WhisperAudioEncoder", "whisper_features", "mel_filters", "log_mel", "log10_mel", "normalise_log_mel",
    "pad_mel_window",
    "encode_mel_window", "encode_log_mel", "frame_step_indices", "frame_windows",
    "num_video_frames", "to_16k",
]

# --- constants of the official computation ----------------------------------------------------
SAMPLE_RATE = 16000            # Hz, Whisper's input rate
N_FFT = 400                    # 25 ms STFT window
HOP_LENGTH = 160               # 10 ms hop -> 100 mel frames a second
N_MELS = 80
WINDOW_SECONDS = 30            # the encoder sees 30 s at a time
WINDOW_MEL_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP_LENGTH   # 3000
WINDOW_STEPS = WINDOW_MEL_FRAMES // 2                            # 1500 (conv2 has stride 2)
STEPS_PER_SECOND = 50
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS                     # 640
STEPS_PER_FRAME = STEPS_PER_SECOND // VIDEO_FPS                  # 2
PAST_STEPS = 4                 # frame i starts at step 2i - 4 (80 ms of past audio)
FUTURE_STEPS = 5               # ... and ends at step 2i + 5 (120 ms incl. step 2i + 1)
STEPS_PER_TOKEN_SET = PAST_STEPS + 1 + FUTURE_STEPS              # 10
LOG_FLOOR = 1e-10              # clamp of the mel power before log10
DYNAMIC_RANGE = 8.0            # log10 units kept below the maximum

_DIM_FIELDS = (
    "n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
    "n_vocab", "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer",
)

# OpenAI encoder names -> transformers WhisperEncoder names (``{n}`` = block index).
_KEY_MAP = (
    ("conv1.weight", "conv1.weight"),
    ("conv1.bias", "conv1.bias"),
    ("conv2.weight", "conv2.weight"),
    ("conv2.bias", "conv2.bias"),
    ("positional_embedding", "embed_positions.weight"),
    ("blocks.{n}.attn.query.weight", "layers.{n}.self_attn.q_proj.weight"),
    ("blocks.{n}.attn.query.bias", "layers.{n}.self_attn.q_proj.bias"),
    ("blocks.{n}.attn.key.weight", "layers.{n}.self_attn.k_proj.weight"),
    ("blocks.{n}.attn.value.weight", "layers.{n}.self_attn.v_proj.weight"),
    ("blocks.{n}.attn.value.bias", "layers.{n}.self_attn.v_proj.bias"),
    ("blocks.{n}.attn.out.weight", "layers.{n}.self_attn.out_proj.weight"),
    ("blocks.{n}.attn.out.bias", "layers.{n}.self_attn.out_proj.bias"),
    ("blocks.{n}.attn_ln.weight", "layers.{n}.self_attn_layer_norm.weight"),
    ("blocks.{n}.attn_ln.bias", "layers.{n}.self_attn_layer_norm.bias"),
    ("blocks.{n}.mlp.0.weight", "layers.{n}.fc1.weight"),
    ("blocks.{n}.mlp.0.bias", "layers.{n}.fc1.bias"),
    ("blocks.{n}.mlp.2.weight", "layers.{n}.fc2.weight"),
    ("blocks.{n}.mlp.2.bias", "layers.{n}.fc2.bias"),
    ("blocks.{n}.mlp_ln.weight", "layers.{n}.final_layer_norm.weight"),
    ("blocks.{n}.mlp_ln.bias", "layers.{n}.final_layer_norm.bias"),
    ("ln_post.weight", "layer_norm.weight"),
    ("ln_post.bias", "layer_norm.bias"),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)") + "$")


_HF_TO_OPENAI = tuple((_pattern(hf), oa) for oa, hf in _KEY_MAP)


def _openai_key(hf_key: str) -> str:
    """The OpenAI checkpoint key (``encoder.*``) that fills a ``WhisperEncoder`` parameter."""
    for pattern, template in _HF_TO_OPENAI:
        m = pattern.match(hf_key)
        if m:
            return "encoder." + template.format(n=m.groupdict().get("n"))
    raise KeyError(f"no OpenAI name for WhisperEncoder key {hf_key!r}")


# --- audio front end ------------------------------------------------------------------------------
@cache
def _mel_filters_np() -> np.ndarray:
    # Slaney mel scale + Slaney area norm == librosa.filters.mel(sr=16000, n_fft=400, n_mels=80).
    fb = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=N_MELS, min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
        mel_scale="slaney", dtype=np.float32,
    )
    return np.ascontiguousarray(fb.T)


def mel_filters(device: torch.device | str | None = None) -> torch.Tensor:
    """The official mel filter bank ``[80, 201]`` float32 (librosa's slaney filters)."""
    return torch.from_numpy(_mel_filters_np().copy()).to(device)


def log_mel(audio: np.ndarray | torch.Tensor, max_log: float | None = None) -> torch.Tensor:
    """Whisper log-mel spectrogram of 16 kHz mono audio ``[N]`` -> ``[80, N // 160]`` float32.

    Power STFT (hann 400, hop 160, centred with reflect padding, last frame dropped), mel
    projection, ``log10(max(., 1e-10))``, floor at ``max_log - 8``, then ``(x + 4) / 4``.
    ``max_log=None`` uses the maximum over this audio (the official, whole-clip behaviour); a
    fixed value gives a normalisation that does not look at the future (streaming).
    """
    x = _as_audio_tensor(audio)
    if x.numel() <= N_FFT // 2:
        raise ValueError(f"audio of {x.numel()} samples is too short for a log-mel (needs > {N_FFT // 2})")
    window = torch.hann_window(N_FFT, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    log_spec = log10_mel(stft[:, :-1].abs() ** 2)                    # [80, N // 160]
    top = log_spec.max() if max_log is None else torch.as_tensor(max_log, dtype=log_spec.dtype)
    return normalise_log_mel(log_spec, top)


def log10_mel(power: torch.Tensor) -> torch.Tensor:
    """STFT power ``[201, n]`` -> ``log10(max(mel, 1e-10))`` ``[80, n]`` (before the dynamic-range floor)."""
    return torch.clamp(mel_filters(power.device) @ power, min=LOG_FLOOR).log10()


def normalise_log_mel(log_spec: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Whisper's floor at ``top - 8`` and scaling ``(x + 4) / 4`` of a ``log10_mel`` ``[80, n]``."""
    return (torch.maximum(log_spec, top - DYNAMIC_RANGE) + 4.0) / 4.0


def pad_mel_window(mel: torch.Tensor) -> torch.Tensor:
    """Zero-pad (in the log-mel domain) or trim ``[80, n]`` to one encoder window ``[80, 3000]``."""
    n = mel.shape[-1]
    if n >= WINDOW_MEL_FRAMES:
        return mel[..., :WINDOW_MEL_FRAMES]
    return torch.nn.functional.pad(mel, (0, WINDOW_MEL_FRAMES - n))


# --- encoder ---------------------------------------------------------------------------------------
class WhisperAudioEncoder(nn.Module):
    """Frozen Whisper audio encoder that returns LatentSync's stacked states.

    Wraps a transformers ``WhisperEncoder``; build it once with ``from_checkpoint`` and reuse it.
    """

    def __init__(self, encoder: WhisperEncoder):
        super().__init__()
        cfg = encoder.config
        if cfg.num_mel_bins != N_MELS or cfg.max_source_positions != WINDOW_STEPS:
            raise ValueError(
                f"LatentSync features need a Whisper encoder with {N_MELS} mel bins and {WINDOW_STEPS} "
                f"audio positions, got {cfg.num_mel_bins} and {cfg.max_source_positions}"
            )
        self.encoder = encoder.float()
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> WhisperAudioEncoder:
        """The teacher's audio encoder stays frozen: always eval mode, whatever a parent asks."""
        return super().train(False)

    @property
    def num_layers(self) -> int:
        """Number of stacked states per step: the input embedding plus one per block (5 for tiny)."""
        return len(self.encoder.layers) + 1

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.d_model

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str | None = None
                        ) -> WhisperAudioEncoder:
        """Load an OpenAI ``tiny.pt`` file or a Hugging Face Whisper folder (config.json + weights)."""
        path = Path(path)
        if path.is_dir():
            model = cls(_load_hf_folder(path))
        elif path.is_file():
            dims, state_dict = _read_openai_checkpoint(path)
            model = cls.from_openai_state_dict(dims, state_dict, source=str(path))
        else:
            raise FileNotFoundError(f"Whisper checkpoint not found: {path}")
        return model.to(device or "cpu")

    @classmethod
    def from_openai_state_dict(cls, dims: Mapping, state_dict: Mapping[str, torch.Tensor],
                               source: str = "<state dict>") -> WhisperAudioEncoder:
        """Build from OpenAI ``dims`` and ``model_state_dict`` (decoder keys are ignored)."""
        encoder = WhisperEncoder(_config_from_dims(dims, source))
        encoder.load_state_dict(_map_openai_encoder(state_dict, encoder, source), strict=True)
        return cls(encoder)

    @classmethod
    def random_tiny(cls, seed: int = 0, layers: int = 4) -> WhisperAudioEncoder:
        """A randomly initialised encoder with Whisper-tiny dims (384-d, 6 heads), for tests and the
        tiny preset when no ``tiny.pt`` is given. Positions are Whisper's fixed sinusoids."""
        dims = dict(n_mels=N_MELS, n_audio_ctx=WINDOW_STEPS, n_audio_state=384, n_audio_head=6,
                    n_audio_layer=layers, n_vocab=51865, n_text_ctx=448, n_text_state=384,
                    n_text_head=6, n_text_layer=layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = WhisperEncoder(_config_from_dims(dims, "random_tiny"))
        channels = encoder.config.d_model
        log_inc = np.log(10000) / (channels // 2 - 1)
        inv = torch.exp(-log_inc * torch.arange(channels // 2))
        t = torch.arange(WINDOW_STEPS)[:, None] * inv[None, :]
        with torch.no_grad():
            encoder.embed_positions.weight.copy_(torch.cat([torch.sin(t), torch.cos(t)], dim=1))
        return cls(encoder)

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Stacked states of whole windows: ``[B, 80, 3000]`` -> ``[B, 1500, L + 1, D]``.

        Entry 0 is the input embedding after the positional add, entry ``k`` the output of
        block ``k``; the last one is taken before the final LayerNorm (``ln_post``), which
        transformers' ``output_hidden_states`` would have applied.
        """
        if mel.ndim != 3 or mel.shape[1:] != (N_MELS, WINDOW_MEL_FRAMES):
            raise ValueError(f"expected mel windows [B, {N_MELS}, {WINDOW_MEL_FRAMES}], got {list(mel.shape)}")
        states: list[torch.Tensor] = []

        def grab(_module, args, kwargs):
            states.append(args[0] if args else kwargs["hidden_states"])

        modules = [*self.encoder.layers, self.encoder.layer_norm]   # inputs: emb, blk1..blkN
        hooks = [m.register_forward_pre_hook(grab, with_kwargs=True) for m in modules]
        try:
            self.encoder(mel.to(self.device, torch.float32))
        finally:
            for h in hooks:
                h.remove()
        return torch.stack(states, dim=2)

    def feature_array(self, audio_16k: np.ndarray | torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """Whole-clip 50 Hz feature array ``[T50, L + 1, D]`` of 16 kHz audio (CPU float32)."""
        return encode_log_mel(self, log_mel(audio_16k), batch_size=batch_size)

    def features(self, audio: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """Per-video-frame token sets ``[floor(N_16k / 640), 10 * (L + 1), D]`` (CPU float32)."""
        audio_16k = to_16k(audio, sample_rate)
        frames = num_video_frames(audio_16k.shape[0])
        if frames == 0:
            return torch.zeros(0, STEPS_PER_TOKEN_SET * self.num_layers, self.hidden_size)
        return frame_windows(self.feature_array(audio_16k), frames)


def encode_mel_window(encoder: WhisperAudioEncoder, mel_3000: torch.Tensor) -> torch.Tensor:
    """One 30 s window ``[80, 3000]`` (already padded) -> stacked states ``[1500, L + 1, D]``."""
    return encoder(mel_3000.unsqueeze(0))[0]


def encode_log_mel(encoder: WhisperAudioEncoder, mel: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Whole-clip log-mel ``[80, n]`` -> feature array ``[T50, L + 1, D]`` (CPU float32).

    Windows start every 3000 frames (``seek``); each is zero-padded to 3000 frames and encoded
    independently, and keeps its first ``int((end_seek - seek) / 2)`` steps.
    """
    n = mel.shape[-1]
    windows = [(s, int((min(s + WINDOW_MEL_FRAMES, n) - s) / 2)) for s in range(0, n, WINDOW_MEL_FRAMES)]
    windows = [(s, k) for s, k in windows if k > 0]      # a 1-frame tail window keeps no step
    seeks, kept = [s for s, _ in windows], [k for _, k in windows]
    out = []
    for b in range(0, len(seeks), batch_size):
        batch = torch.stack([pad_mel_window(mel[:, s:s + WINDOW_MEL_FRAMES]) for s in seeks[b:b + batch_size]])
        states = encoder(batch).cpu()
        out.extend(st[:k] for st, k in zip(states, kept[b:b + batch_size]))
    if not out:
        return torch.zeros(0, encoder.num_layers, encoder.hidden_size)
    return torch.cat(out, dim=0)


# --- per-frame windows -----------------------------------------------------------------------------
def num_video_frames(num_samples_16k: int) -> int:
    """Video frames (25 fps) covered by a 16 kHz clip: ``floor(N / 640)``."""
    return num_samples_16k // SAMPLES_PER_FRAME


def frame_step_indices(num_frames: int, num_steps: int, start_frame: int = 0) -> torch.Tensor:
    """Whisper steps of frames ``start .. start+F-1``: ``[F, 10]``, row i = ``2i-4 .. 2i+5`` clamped."""
    if num_steps <= 0:
        raise ValueError("the feature array has no steps")
    centre = STEPS_PER_FRAME * torch.arange(start_frame, start_frame + num_frames)
    offsets = torch.arange(-PAST_STEPS, FUTURE_STEPS + 1)
    return (centre[:, None] + offsets[None, :]).clamp(0, num_steps - 1)


def frame_windows(feature_array: torch.Tensor, num_frames: int, start_frame: int = 0) -> torch.Tensor:
    """Cut per-frame token sets: ``[T50, L + 1, D]`` -> ``[F, 10 * (L + 1), D]`` (layer innermost)."""
    t50, layers, dim = feature_array.shape
    idx = frame_step_indices(num_frames, t50, start_frame).to(feature_array.device)
    return feature_array[idx].reshape(num_frames, STEPS_PER_TOKEN_SET * layers, dim)


# --- public entry point -----------------------------------------------------------------------------
def whisper_features(
    audio: np.ndarray | torch.Tensor,
    whisper_ckpt: str | os.PathLike | WhisperAudioEncoder,
    sample_rate: int = SAMPLE_RATE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """LatentSync's per-frame Whisper conditioning for a mono clip.

    audio: float mono ``[N]`` at ``sample_rate`` (resampled to 16 kHz when it differs).
    whisper_ckpt: an OpenAI ``tiny.pt``, a Hugging Face Whisper folder, or a loaded
    ``WhisperAudioEncoder`` (load once, reuse). ``device`` applies when loading from a path.
    Returns ``[floor(N_16k / 640), 50, 384]`` float32 on the CPU.
    """
    audio_16k = to_16k(audio, sample_rate)            # validate the audio before loading weights
    if isinstance(whisper_ckpt, WhisperAudioEncoder):
        encoder = whisper_ckpt
    elif isinstance(whisper_ckpt, WhisperEncoder):
        encoder = WhisperAudioEncoder(whisper_ckpt)
    elif isinstance(whisper_ckpt, (str, os.PathLike)):
        encoder = WhisperAudioEncoder.from_checkpoint(whisper_ckpt, device=device)
    else:
        raise TypeError(
            "whisper_ckpt must be a checkpoint path or a WhisperAudioEncoder, "
            f"got {type(whisper_ckpt).__name__}"
        )
    return encoder.features(audio_16k, SAMPLE_RATE)


# --- input checks and resampling --------------------------------------------------------------------
def _check_sample_rate(sample_rate) -> int:
    ok = isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, bool)
    if ok and not isinstance(sample_rate, numbers.Integral):
        ok = math.isfinite(sample_rate) and float(sample_rate).is_integer()
    if not ok:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def _as_audio_tensor(audio) -> torch.Tensor:
    if isinstance(audio, torch.Tensor):
        x = audio.detach()
        floating = x.is_floating_point()
    elif isinstance(audio, np.ndarray):
        floating = np.issubdtype(audio.dtype, np.floating)
        x = torch.from_numpy(np.ascontiguousarray(audio)) if floating else None
    else:
        raise ValueError(f"audio must be a numpy array or torch tensor, got {type(audio).__name__}")
    if not floating:
        raise ValueError(f"audio must be floating point in [-1, 1] (int16 PCM: divide by 32768), "
                         f"got dtype {audio.dtype}")
    if x.ndim != 1:
        raise ValueError(f"audio must be mono and 1-D [N], got shape {list(x.shape)}")
    if x.numel() == 0:
        raise ValueError("audio is empty")
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    return x


def to_16k(audio: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Validate mono float audio and resample it to 16 kHz (polyphase, ``resample_poly``)."""
    sr = _check_sample_rate(sample_rate)
    x = _as_audio_tensor(audio).cpu().numpy()
    if sr == SAMPLE_RATE:
        return x
    from scipy.signal import resample_poly

    ratio = Fraction(SAMPLE_RATE, sr)
    y = resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator).astype(np.float32)
    if y.size == 0:
        raise ValueError(f"audio of {x.size} samples at {sr} Hz is empty at {SAMPLE_RATE} Hz")
    return y


# --- checkpoint loading -----------------------------------------------------------------------------
def _read_openai_checkpoint(path: Path) -> tuple[dict, dict]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, foreign pickle, truncated file ...
        raise ValueError(
            f"{path}: not a readable OpenAI Whisper checkpoint (torch.load failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(ckpt, Mapping) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        found = sorted(map(str, ckpt.keys()))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"{path}: not an OpenAI Whisper checkpoint; expected a dict with 'dims' and "
            f"'model_state_dict', found {found}"
        )
    state_dict = ckpt["model_state_dict"]
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: 'model_state_dict' must map names to tensors")
    return ckpt["dims"], dict(state_dict)


def _config_from_dims(dims, source: str) -> WhisperConfig:
    if not isinstance(dims, Mapping):
        raise ValueError(f"{source}: 'dims' must be a dict of ModelDimensions, got {type(dims).__name__}")
    missing = [f for f in _DIM_FIELDS if f not in dims]
    unknown = sorted(set(map(str, dims)) - set(_DIM_FIELDS))
    bad = [f for f in _DIM_FIELDS if f in dims and (isinstance(dims[f], bool) or not isinstance(dims[f], int)
                                                    or dims[f] <= 0)]
    if missing or unknown or bad:
        raise ValueError(f"{source}: bad Whisper 'dims': missing {missing}, unknown {unknown}, "
                         f"not positive integers {bad}")
    if dims["n_mels"] != N_MELS or dims["n_audio_ctx"] != WINDOW_STEPS:
        raise ValueError(f"{source}: LatentSync features need n_mels={N_MELS} and n_audio_ctx={WINDOW_STEPS}, "
                         f"got n_mels={dims['n_mels']}, n_audio_ctx={dims['n_audio_ctx']}")
    if dims["n_audio_state"] % dims["n_audio_head"]:
        raise ValueError(f"{source}: n_audio_state {dims['n_audio_state']} is not divisible by "
                         f"n_audio_head {dims['n_audio_head']}")
    # Token ids only matter to the text decoder, which is never built here; keep them inside
    # the vocabulary so tiny test vocabularies give a valid config.
    last = dims["n_vocab"] - 1
    token_ids = {"pad_token_id": 50256, "bos_token_id": 50256, "eos_token_id": 50256,
                 "decoder_start_token_id": 50257}
    return WhisperConfig(
        **{k: min(v, last) for k, v in token_ids.items()},
        vocab_size=dims["n_vocab"], num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"], encoder_attention_heads=dims["n_audio_head"],
        encoder_ffn_dim=4 * dims["n_audio_state"], max_source_positions=dims["n_audio_ctx"],
        decoder_layers=dims["n_text_layer"], decoder_attention_heads=dims["n_text_head"],
        decoder_ffn_dim=4 * dims["n_text_state"], max_target_positions=dims["n_text_ctx"],
        activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        encoder_layerdrop=0.0, scale_embedding=False,
    )


def _map_openai_encoder(state_dict: Mapping[str, torch.Tensor], encoder: WhisperEncoder,
                        source: str) -> dict[str, torch.Tensor]:
    """OpenAI ``encoder.*`` tensors renamed for ``encoder``; every key is accounted for.

    ``decoder.*`` keys are expected and ignored; any other key, a missing encoder key or a shape
    that does not match the dims raises a ValueError naming the file and the keys.
    """
    target = encoder.state_dict()
    wanted = {_openai_key(k): k for k in target}
    present = set(state_dict)
    missing = sorted(set(wanted) - present)
    unexpected = sorted(k for k in present - set(wanted) if not k.startswith("decoder."))
    misshaped = sorted(
        f"{k} {list(state_dict[k].shape)} != {list(target[wanted[k]].shape)}"
        for k in set(wanted) & present if state_dict[k].shape != target[wanted[k]].shape
    )
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{source}: Whisper encoder weights do not match the dims: missing {missing}, "
            f"unexpected {unexpected}, mis-shaped {misshaped}"
        )
    return {hf: state_dict[oa].to(torch.float32) for oa, hf in wanted.items()}


def _load_hf_folder(path: Path) -> WhisperEncoder:
    from transformers import WhisperModel

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: Hugging Face Whisper folder has no config.json")
    try:
        model, info = WhisperModel.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    except Exception as e:
        raise ValueError(f"{path}: could not load a Hugging Face Whisper model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith("encoder."))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise ValueError(f"{path}: Whisper encoder weights missing {missing}, mis-shaped {mismatched}")
    return model.encoder


def load_whisper(path: str | os.PathLike | None = None, seed: int = 0,
                 device: torch.device | str | None = None) -> WhisperAudioEncoder:
    """Config entry point: the checkpoint at ``path``, or a random Whisper-tiny encoder when None."""
    if path is None:
        return WhisperAudioEncoder.random_tiny(seed).to(device or "cpu")
    return WhisperAudioEncoder.from_checkpoint(path, device=device)
