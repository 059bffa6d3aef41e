"""losses package."""

from losses.syncnet import StableSyncNet, SyncNetCheckpointError, load_syncnet  # noqa: F401
