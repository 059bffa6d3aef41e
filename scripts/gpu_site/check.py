"""Check that ``Cv2VideoReader`` returns PyAV's frames (``teacher.media.VideoReader``) on prepared shards:

    python -m scripts.gpu_site.check runs/losses_world runs/bench_losses/heldout
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(roots: list[str]) -> int:
    from scripts.gpu_site.cv2_reader import Cv2VideoReader
    from teacher.media import VideoReader

    worst = 0
    files = [p for r in roots for p in sorted(Path(r).glob("shards/*/faces.mp4"))]
    for path in files:
        a, b = VideoReader(path), Cv2VideoReader(path)
        idx = np.arange(len(a))
        if len(a) != len(b) or a.fps != b.fps:
            print(f"{path}: {len(a)} frames at {a.fps} vs {len(b)} at {b.fps}")
            return 1
        worst = max(worst, int(np.abs(a.get_frames(idx).astype(int) - b.get_frames(idx).astype(int)).max()))
    print(f"{len(files)} shards, largest pixel difference {worst}")
    return int(worst != 0 or not files)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
