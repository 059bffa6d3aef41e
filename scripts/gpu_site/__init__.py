"""Device harness of ``scripts/gpu_losses.sh``: see ``sitecustomize``."""
