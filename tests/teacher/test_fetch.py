"""`turbosync fetch-teacher`: paths match the teacher configs; offline errors name every file."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

import configs
from scripts.cli import main
from teacher.fetch import FetchError, describe_missing, fetch_teacher, missing_files, teacher_files


@pytest.mark.parametrize("version", ["1.5", "1.6"])
def test_paths_are_the_ones_the_config_uses(version):
    cfg = configs.load(f"teacher/latentsync-{version}")
    local = {str(f.local) for f in teacher_files(version, "checkpoints", syncnet=True)}
    for key in ("unet", "whisper", "syncnet"):
        assert cfg.files[key] in local
    assert any(p.startswith(cfg.files.vae) for p in local)


def test_offline_error_lists_files(tmp_path, monkeypatch, capsys):
    def offline(repo, filename, local_dir=None, **_):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FetchError) as err:
        fetch_teacher("1.6", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "latentsync-1.6" / "latentsync_unet.pt") in msg
    assert "ByteDance/LatentSync-1.6/whisper/tiny.pt" in msg and "ConnectionError" in msg
    assert main(["fetch-teacher", "--root", str(tmp_path)]) == 2
    assert "could not download" in capsys.readouterr().err


def test_download_places_files_and_skips_present(tmp_path, monkeypatch):
    calls = []

    def fake(repo, filename, local_dir=None, **_):
        calls.append((repo, filename))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    paths = fetch_teacher("1.5", tmp_path, syncnet=True)
    assert all(p.is_file() for p in paths) and len(calls) == 5
    assert not missing_files(teacher_files("1.5", tmp_path, syncnet=True))
    fetch_teacher("1.5", tmp_path, syncnet=True)
    assert len(calls) == 5  # nothing downloaded twice


def test_describe_missing_and_bad_version(tmp_path):
    text = describe_missing(teacher_files("1.6", tmp_path))
    assert "sd-vae-ft-mse" in text and "fetch-teacher" in text
    with pytest.raises(ValueError, match="1.5, 1.6"):
        teacher_files("2.0")
