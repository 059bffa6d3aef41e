"""losses package."""

from losses.consistency import L2, PseudoHuber  # noqa: F401
from losses.perceptual import LPIPSLoss, build_lpips  # noqa: F401
from losses.reconstruction import LatentReconstruction  # noqa: F401
from losses.sync import SyncLoss, SyncScores, offset_distances, sync_bce, sync_scores  # noqa: F401
from losses.syncnet import StableSyncNet, SyncNetCheckpointError, load_syncnet  # noqa: F401
from losses.syncnet_v2 import SyncNetV2, load_syncnet_v2  # noqa: F401
from losses.trepa import TREPALoss, VideoMAEFeatures, load_videomae, toy_videomae  # noqa: F401
