"""The few-step student: teacher-initialised U-Net + guidance embedding (optional LoRA), the
consistency parameterisation (boundary scalings, DDIM solver grid) and the LCM sampler.

Names are imported lazily so that ``import student`` stays cheap.
"""

from __future__ import annotations

from teacher.lazy import lazy_exports

_EXPORTS = {
    "StudentUNet": "student.model",
    "GuidanceEmbedding": "student.model",
    "DEFAULT_LORA_TARGETS": "student.model",
    "guidance_sinusoid": "student.model",
    "student_state_for_export": "student.model",
    "boundary_scalings": "student.consistency",
    "consistency_x0": "student.consistency",
    "add_noise": "student.consistency",
    "solver_timesteps": "student.consistency",
    "solver_pairs": "student.consistency",
    "lcm_timesteps": "student.sampler",
    "sample_lcm": "student.sampler",
    "video_noise": "student.sampler",
    "load": "student.io",
    "load_denoiser": "student.io",
    "load_bundle": "student.io",
    "StudentBundle": "student.io",
    "save": "student.io",
    "StudentDenoiser": "student.denoiser",
    "DenoiserSettings": "student.denoiser",
}

__getattr__, __dir__, __all__ = lazy_exports("student", _EXPORTS, globals())
