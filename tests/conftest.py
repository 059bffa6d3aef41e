"""Test-wide settings: one torch thread per process.

CI runs on 2 cores; OpenMP threads spinning while they wait made tiny-model tests up to 10x
slower whenever a second process (a DataLoader worker, a prepare worker) was running.
"""

import torch

torch.set_num_threads(1)
