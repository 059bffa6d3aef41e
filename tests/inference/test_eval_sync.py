"""``turbosync eval sync``: a face video through the face path and both SyncNet formats prints offset, LSE-C and
LSE-D equal to the tensor-level computation on the same crops; unusable inputs are one error line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import configs
import losses
from inference.eval_sync import checkpoint_kind, face_crops, scores_stable, scores_v2
from scripts.cli import main
from teacher.media import read_audio, read_video, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from distill.synthworld import make_clip

    root = tmp_path_factory.mktemp("eval_sync")
    c = make_clip(3, identity=0, resolution=256, seconds=1.0)  # the astronaut portrait, 25 frames
    write_video(root / "clip.mp4", c.frames, audio=c.audio)
    torch.manual_seed(0)
    net = losses.StableSyncNet(OmegaConf.to_container(configs.load("syncnet/toy").model))
    torch.save({"state_dict": net.state_dict()}, root / "stable_syncnet.pt")
    torch.save(losses.SyncNetV2().state_dict(), root / "syncnet_v2.model")
    return root


def parse(out: str) -> tuple[int, float, float]:
    offset = int(re.search(r"^offset: (-?\d+) frames", out, re.M).group(1))
    lse_c = float(re.search(r"^LSE-C: (\S+)", out, re.M).group(1))
    lse_d = float(re.search(r"^LSE-D: (\S+)", out, re.M).group(1))
    return offset, lse_c, lse_d


@pytest.mark.parametrize("ckpt", ["stable_syncnet.pt", "syncnet_v2.model"])
def test_eval_sync_matches_the_tensor_level_scores(clip, ckpt, capsys):
    path = clip / ckpt
    assert main(["eval", "sync", str(clip / "clip.mp4"), "--syncnet", str(path), "--config", "syncnet/toy"]) == 0
    out = capsys.readouterr().out
    offset, lse_c, lse_d = parse(out)
    frames, _ = read_video(clip / "clip.mp4")
    audio = read_audio(clip / "clip.mp4")
    if checkpoint_kind(path) == "stable_syncnet":
        crops, faceless = face_crops(frames, 128)
        scores, windows = scores_stable(losses.load_syncnet(path, configs.resolve("syncnet/toy")), crops, audio, 8)
        assert windows == 18  # 25 frames, 8-frame windows
    else:
        crops, faceless = face_crops(frames, 224)
        scores, windows = scores_v2(losses.load_syncnet_v2(path), crops, audio)
        assert windows == 20  # min(25 frames, 25 audio frames) - 5, as the original
    assert faceless == 0 and f"{windows} windows of 25 frames" in out
    assert -15 <= offset <= 15 and offset == scores.offset
    assert lse_c == pytest.approx(scores.lse_c, abs=1e-3) and lse_d == pytest.approx(scores.lse_d, abs=1e-3)
    assert lse_c >= 0 and lse_d > 0


def test_eval_sync_errors(clip, tmp_path, capsys):
    video = str(clip / "clip.mp4")
    assert main(["eval", "sync", video, "--config", "syncnet/toy"]) == 2  # the toy preset has no weights yet
    assert "no SyncNet weights: pass --syncnet PATH" in capsys.readouterr().err
    grey = np.full((30, 128, 128, 3), 127, np.uint8)
    write_video(tmp_path / "grey.mp4", grey, audio=np.zeros(30 * 640, np.float32))
    assert main(["eval", "sync", str(tmp_path / "grey.mp4"), "--syncnet", str(clip / "syncnet_v2.model")]) == 2
    assert "no face found in any frame" in capsys.readouterr().err
    # a StableSyncNet checkpoint under the wrong config: one line naming the mismatch
    assert main(["eval", "sync", video, "--syncnet", str(clip / "stable_syncnet.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: SyncNet checkpoint") and "mis-shaped" in err and len(err.splitlines()) == 1


def test_a_syncnet_yaml_beside_the_checkpoint_is_its_config(clip, tmp_path, capsys):
    """``--syncnet RUN/syncnet.pt`` without ``--config`` takes ``RUN/syncnet.yaml`` (as train-syncnet writes it) and
    says so; an explicit ``--config`` still wins; without a yaml beside it the default is LatentSync's preset."""
    from inference.eval_sync import DEFAULT_CONFIG, syncnet_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "syncnet.pt").write_bytes((clip / "stable_syncnet.pt").read_bytes())
    OmegaConf.save(configs.load("syncnet/toy"), run / "syncnet.yaml")
    assert syncnet_config(run / "syncnet.pt") == (str(run / "syncnet.yaml"), True)
    assert syncnet_config(run / "syncnet.pt", "syncnet/toy") == ("syncnet/toy", False)
    assert syncnet_config(clip / "stable_syncnet.pt") == (DEFAULT_CONFIG, False)
    assert syncnet_config(None) == (DEFAULT_CONFIG, False)

    video = str(clip / "clip.mp4")
    assert main(["eval", "sync", video, "--syncnet", str(run / "syncnet.pt")]) == 0
    beside = capsys.readouterr().out
    assert f"config {run / 'syncnet.yaml'} (beside the checkpoint)" in beside
    assert main(["eval", "sync", video, "--syncnet", str(clip / "stable_syncnet.pt"), "--config", "syncnet/toy"]) == 0
    assert parse(beside) == parse(capsys.readouterr().out)  # the same network under the same config
    # an explicit --config wins over the file beside the checkpoint (here a mismatch: one error line)
    assert main(["eval", "sync", video, "--syncnet", str(run / "syncnet.pt"), "--config", DEFAULT_CONFIG]) == 2
    assert "mis-shaped" in capsys.readouterr().err
