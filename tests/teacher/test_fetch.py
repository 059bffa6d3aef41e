"""`turbosync fetch-teacher`: paths match the teacher configs; offline errors name every file; an unreachable hub
fails within seconds in one line; the real ``huggingface_hub`` download path against a local stand-in hub."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **_: None)  # the hub answers
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

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **_: None)
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


ROOT = Path(__file__).resolve().parents[2]


def _fetch_cli(root: Path, endpoint: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """``turbosync fetch-teacher`` in a fresh process (huggingface_hub reads HF_ENDPOINT at import)."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(root / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "scripts.cli", "fetch-teacher", "--root", str(root), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


def test_unreachable_hub_fails_fast_in_one_line(tmp_path):
    """Nothing listens on port 9: huggingface_hub alone retries ~20 s a file (90 s in all); we stop at once."""
    proc, seconds = _fetch_cli(tmp_path, "http://127.0.0.1:9")
    assert proc.returncode == 2 and seconds < 15, (proc.returncode, seconds)
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: cannot reach the model hub at http://127.0.0.1:9") and "nothing downloaded" in err
    assert str(tmp_path / "latentsync-1.6" / "latentsync_unet.pt") in err and "stabilityai/sd-vae-ft-mse" in err
    assert "Retrying" not in proc.stderr and not (tmp_path / "latentsync-1.6").exists()


class _Hub(BaseHTTPRequestHandler):
    """Answers ``HEAD``/``GET /{repo}/resolve/main/{file}`` as the hub does (commit, ETag, length); 404 for
    paths in ``missing``."""

    missing: set[str] = set()
    requests: list[str] = []

    def _answer(self) -> bytes | None:
        self.requests.append(f"{self.command} {self.path}")
        if any(self.path.endswith(m) for m in self.missing):
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        body = f"content of {self.path}".encode()
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def do_HEAD(self):  # noqa: N802 (http.server's names)
        self._answer()

    def do_GET(self):  # noqa: N802
        body = self._answer()
        if body:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hub.missing, _Hub.requests = set(), []
    yield f"http://127.0.0.1:{server.server_port}", _Hub
    server.shutdown()
    server.server_close()


def test_real_download_path_against_a_local_hub(tmp_path, local_hub):
    """huggingface_hub itself downloads from a stand-in hub; a file the hub answers 404 for (the probed first one)
    is reported per file, the others land where the configs expect them, and a second run fetches only it."""
    endpoint, hub = local_hub
    hub.missing = {"latentsync_unet.pt"}
    proc, _ = _fetch_cli(tmp_path, endpoint)
    assert proc.returncode == 2 and "could not download these teacher files" in proc.stderr
    assert str(tmp_path / "latentsync-1.6" / "latentsync_unet.pt") in proc.stderr
    assert "cannot reach" not in proc.stderr  # a 404 is an answer: the hub is reachable
    tiny = tmp_path / "latentsync-1.6" / "whisper" / "tiny.pt"
    assert tiny.read_bytes() == b"content of /ByteDance/LatentSync-1.6/resolve/main/whisper/tiny.pt"
    hub.missing, hub.requests = set(), []
    proc, _ = _fetch_cli(tmp_path, endpoint)
    assert proc.returncode == 0, proc.stderr
    assert [Path(line) for line in proc.stdout.split()] == [f.local for f in teacher_files("1.6", tmp_path)]
    files = [r for r in hub.requests if "/resolve/" in r]  # (the library may also ask for its own registries)
    assert files and all("latentsync_unet.pt" in r for r in files), hub.requests  # nothing fetched twice
