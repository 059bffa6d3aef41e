"""Official LatentSync files: where they go, and downloading them when the network allows.

We never ship ByteDance's or Stability's weights; a user downloads them (``turbosync
fetch-teacher``) or copies them to the paths the teacher config names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VERSIONS = ("1.5", "1.6")
VAE_REPO = "stabilityai/sd-vae-ft-mse"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
PROBE_TIMEOUT_S = 5.0  # seconds the first request may take before the hub counts as unreachable


@dataclass(frozen=True)
class TeacherFile:
    repo: str  # Hugging Face repo id
    filename: str  # path inside the repo
    local: Path  # where the teacher config expects it
    needed_for: str


def teacher_files(version: str, root: str | os.PathLike = "checkpoints", syncnet: bool = False) -> list[TeacherFile]:
    """The files of LatentSync ``version`` at the paths ``configs/teacher/latentsync-<version>.yaml`` uses."""
    if version not in VERSIONS:
        raise ValueError(f"unknown LatentSync version {version!r}; choose one of {', '.join(VERSIONS)}")
    root = Path(root)
    repo = f"ByteDance/LatentSync-{version}"
    base = root / f"latentsync-{version}"
    files = [
        TeacherFile(repo, "latentsync_unet.pt", base / "latentsync_unet.pt", "the teacher U-Net"),
        TeacherFile(repo, "whisper/tiny.pt", base / "whisper" / "tiny.pt", "Whisper audio features"),
    ]
    if syncnet:
        files.append(TeacherFile(repo, "stable_syncnet.pt", base / "stable_syncnet.pt", "the SyncNet loss"))
    files += [TeacherFile(VAE_REPO, f, root / "sd-vae-ft-mse" / f, "the SD VAE") for f in VAE_FILES]
    return files


def missing_files(files: list[TeacherFile]) -> list[TeacherFile]:
    return [f for f in files if not f.local.is_file()]


def describe_missing(files: list[TeacherFile]) -> str:
    lines = [f"  {f.local}  <- {f.repo}/{f.filename}  ({f.needed_for})" for f in files]
    return "missing teacher files (download them with `turbosync fetch-teacher`, or copy them there):\n" + "\n".join(
        lines
    )


class FetchError(RuntimeError):
    pass


def fetch_teacher(
    version: str = "1.6", root: str | os.PathLike = "checkpoints", syncnet: bool = False, force: bool = False
) -> list[Path]:
    """Download the official files through ``huggingface_hub``; already present files are kept.

    The hub is probed once first (one HEAD request, ``PROBE_TIMEOUT_S``, no retries): when it does not
    answer, ``FetchError`` comes within seconds as one line instead of after ``hf_hub_download``'s
    retries (about 20 s a file). Otherwise raises ``FetchError`` naming every file that could not be
    fetched and where to put it.
    """
    files = teacher_files(version, root, syncnet)
    todo = files if force else missing_files(files)
    failed: list[tuple[TeacherFile, str]] = []
    if todo:
        from huggingface_hub import hf_hub_download
        from tqdm import tqdm

        _check_hub(todo)

        for f in tqdm(todo, desc=f"LatentSync-{version} files", unit="file"):
            try:
                local_dir = f.local.parents[len(Path(f.filename).parts) - 1]
                got = Path(hf_hub_download(f.repo, f.filename, local_dir=str(local_dir)))
                _place(got, f.local)
            except Exception as err:  # network, auth, missing repo: reported together below
                failed.append((f, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
    if failed:
        detail = "\n".join(f"  {f.local}  <- {f.repo}/{f.filename}  ({why})" for f, why in failed)
        raise FetchError(
            "could not download these teacher files (offline or hub unreachable); copy them to the paths shown:\n"
            + detail
        )
    return [f.local for f in files]


def _check_hub(todo: list[TeacherFile]) -> None:
    """One HEAD request for the first file through ``huggingface_hub`` (its endpoint, proxies, token and
    offline mode), without its retries; FetchError (one line) when no HTTP answer comes back. An HTTP
    error answer (401 gated, 404) means the hub is reachable: the downloads then report it per file."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    first = todo[0]
    try:  # huggingface_hub >= 1.0: no retries unless retry_on_errors=True; 0.x never retried this call
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(first.repo, first.filename),
                                             timeout=PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return
    except Exception as err:  # refused, DNS, timeout, HF_HUB_OFFLINE=1
        if isinstance(err, OfflineModeIsEnabled):
            reason = "HF_HUB_OFFLINE is set"
        else:
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        by_repo: dict[str, list[str]] = {}
        for f in todo:
            by_repo.setdefault(f.repo, []).append(str(f.local))
        where = "; ".join(f"{', '.join(paths)} <- {repo}" for repo, paths in by_repo.items())
        raise FetchError(f"cannot reach the model hub at {constants.ENDPOINT} ({reason}); nothing downloaded. "
                         f"Copy the files by hand: {where}") from None


def _place(downloaded: Path, target: Path) -> None:
    """hf_hub_download keeps the repo's sub-path; move the file to the path our config expects."""
    if downloaded.resolve() == target.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(downloaded, target)
