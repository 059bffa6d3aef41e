"""Device harness of ``scripts/gpu_losses.sh`` (on ``PYTHONPATH`` there only; nothing else imports it).

The GPU machine's image has no PyAV and no decord, and its 64 MiB transfer limit cannot carry PyAV's wheel
(35 MB) beside the repository (35 MB). The training and evaluation path only *reads* the shards' ``faces.mp4``
(H.264, yuv420p), so there ``teacher.media.VideoReader`` is replaced by a reader on OpenCV's FFmpeg (in the
image): it returns the same RGB frames as PyAV (bit-exact on the toy world's shards,
``python -m scripts.gpu_site.check``), and the module-level ``import av`` of ``teacher.media`` gets an empty
placeholder module (any use of it raises AttributeError).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

try:
    import av  # noqa: F401
except ImportError:
    _av = types.ModuleType("av")
    _av.__spec__ = importlib.machinery.ModuleSpec("av", None)  # importlib.util.find_spec (diffusers) needs one
    sys.modules["av"] = _av

try:
    import decord  # noqa: F401
except ImportError:
    try:
        import teacher.media as _media
        from scripts.gpu_site.cv2_reader import Cv2VideoReader

        _media.VideoReader = Cv2VideoReader
    except ImportError:  # not run from the repository root: leave everything as it is
        pass
