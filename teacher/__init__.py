"""LatentSync as it is: U-Net, VAE wrapper, Whisper audio features, the guided DDIM sampler,
face alignment + mask + paste-back, and official checkpoint loading.

Names are imported lazily so that ``import teacher`` stays cheap (no mediapipe or
transformers import until a name that needs it is used).
"""

from __future__ import annotations

from teacher.lazy import lazy_exports

_EXPORTS = {
    "LatentSyncUNet": "teacher.unet",
    "normalize_model_config": "teacher.unet",
    "load_unet": "teacher.loading",
    "read_state_dict": "teacher.loading",
    "CheckpointError": "teacher.loading",
    "freeze": "teacher.loading",
    "whisper_features": "teacher.audio",
    "WhisperAudioEncoder": "teacher.audio",
    "VideoVAE": "teacher.vae",
    "sample_ddim": "teacher.sampler",
    "ddim_step": "teacher.sampler",
    "guided_eps": "teacher.sampler",
    "ddim_timesteps": "teacher.sampler",
    "make_ddim_scheduler": "teacher.sampler",
    "FaceAligner": "teacher.face",
    "AlignedFace": "teacher.face",
}

__getattr__, __dir__, __all__ = lazy_exports("teacher", _EXPORTS, globals())
