"""``turbosync lipsync`` / ``avatar prepare`` / ``demo`` end to end on a tiny random student, the unusable
inputs (exit code 2, one line, nothing written), and the README's command table against the parser."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from scripts.cli import build_parser, main
from tests.inference.test_engine import tiny_export

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny student export, a 1.2 s synthetic face video (320 x 256, with audio) and 1.5 s of speech."""
    from distill.synthworld import make_clip
    from teacher.media import write_video

    root = tmp_path_factory.mktemp("cli")
    student = tiny_export(root / "student")
    clip = make_clip(5, resolution=256, seconds=1.2)
    frames = np.pad(clip.frames, ((0, 0), (0, 0), (32, 32), (0, 0)), mode="edge")  # a non-square video
    write_video(root / "face.mp4", frames, fps=25, audio=clip.audio, sample_rate=16000)
    speech = make_clip(6, resolution=256, seconds=1.53).audio
    sf.write(root / "speech.wav", speech, 16000)
    return {"root": root, "student": student, "video": root / "face.mp4", "audio": root / "speech.wav",
            "seconds": len(speech) / 16000}  # fmt: skip


def probe(path: Path) -> tuple[int, tuple[int, int], float]:
    """(video frames, (H, W), audio seconds) of an mp4."""
    with av.open(str(path)) as c:
        n = sum(1 for _ in c.decode(video=0))
        vs = c.streams.video[0]
        size = (vs.height, vs.width)
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(audio=0))
        seconds = samples / a.rate
    return n, size, seconds


def test_lipsync_video_and_avatar(files, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    args = ["lipsync", "--student", str(files["student"]), "--video", str(files["video"]), "--audio",
            str(files["audio"]), "--out", str(out), "--chunk", "4", "--no-degrade", "context=2",
            "threads=1"]  # fmt: skip
    assert main(args) == 0
    n, size, seconds = probe(out)
    assert n == int(np.ceil(files["seconds"] * 25)) and size == (256, 320)
    assert abs(seconds - files["seconds"]) <= 1024 / 48000 + 1e-3  # within one AAC frame
    assert "fps" in capsys.readouterr().out
    avatar = tmp_path / "avatar"
    assert main(["avatar", "prepare", str(files["video"]), str(avatar), "--student", str(files["student"])]) == 0
    out2 = tmp_path / "out2.mp4"
    args2 = ["lipsync", "--student", str(files["student"]), "--avatar", str(avatar), "--audio", str(files["audio"]),
             "--out", str(out2), "--chunk", "4", "--no-degrade", "context=2", "threads=1"]  # fmt: skip
    assert main(args2) == 0
    assert probe(out2)[0] == n


def test_demo_runs_the_student(files, tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--student", str(files["student"]), "--out", str(out), "--seconds", "0.6"]) == 0
    printed = capsys.readouterr().out
    assert "real-time factor" in printed and probe(out)[0] == 15


def _unusable(files, tmp_path):
    """(name, argv, the file the error line must name) for every kind of unusable input."""
    r = files["root"]
    empty = r / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    corrupt = r / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    nan = r / "nan.wav"
    sf.write(nan, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    broken_avatar = tmp_path / "broken_avatar"
    broken_avatar.mkdir()
    (broken_avatar / "manifest.json").write_text('{"format": "turbosync.avatar/1", "num_frames": 1}')
    not_export = tmp_path / "not_export"
    not_export.mkdir()
    base = ["lipsync", "--student", str(files["student"])]
    return [
        ("missing video", base + ["--video", str(r / "nope.mp4"), "--audio", str(files["audio"])], "nope.mp4"),
        ("missing audio", base + ["--video", str(files["video"]), "--audio", str(r / "nope.wav")], "nope.wav"),
        ("corrupt video", base + ["--video", str(corrupt), "--audio", str(files["audio"])], "corrupt.mp4"),
        ("empty audio", base + ["--video", str(files["video"]), "--audio", str(empty)], "empty.wav"),
        ("nan audio", base + ["--video", str(files["video"]), "--audio", str(nan)], "nan.wav"),
        ("avatar missing files", base + ["--avatar", str(broken_avatar), "--audio", str(files["audio"])],
         "broken_avatar"),
        ("not an export", ["lipsync", "--student", str(not_export), "--video", str(files["video"]), "--audio",
                           str(files["audio"])], "not_export"),
        ("unknown preset", base + ["--video", str(files["video"]), "--preset", "engine/nope"], "engine/nope"),
        ("bad override", base + ["--video", str(files["video"]), "chunk=abc"], "chunk"),
        ("not a tiny decoder", base + ["--video", str(files["video"]), "--decoder", "tiny", "--tiny-decoder",
                                       str(not_export)], "not_export"),
        ("folder as video", base + ["--video", str(not_export), "--audio", str(files["audio"])], "is a folder"),
        ("folder as audio", base + ["--video", str(files["video"]), "--audio", str(not_export)], "is a folder"),
    ]  # fmt: skip


def test_unusable_inputs_exit_2_with_one_line(files, tmp_path, capsys):
    for name, argv, named in _unusable(files, tmp_path):
        out = tmp_path / f"{name.replace(' ', '_')}.mp4"
        capsys.readouterr()
        assert main(argv + ["--out", str(out)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0] and err[0].startswith("error:"), (name, err)
        assert not out.exists() and not list(tmp_path.glob(f".{out.stem}*")), name


def test_avatar_at_another_resolution_is_refused(files, tmp_path, capsys):
    other = tiny_export(tmp_path / "student128", resolution=128)
    avatar = tmp_path / "avatar"
    assert main(["avatar", "prepare", str(files["video"]), str(avatar), "--student", str(files["student"])]) == 0
    out = tmp_path / "o.mp4"
    code = main(["lipsync", "--student", str(other), "--avatar", str(avatar), "--audio", str(files["audio"]),
                 "--out", str(out)])  # fmt: skip
    assert code == 2 and "64 px" in capsys.readouterr().err and not out.exists()


def test_version_and_no_traceback_in_a_subprocess(files, tmp_path):
    env_cmd = [sys.executable, "-m", "scripts.cli"]
    res = subprocess.run([*env_cmd, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("turbosync ")
    res = subprocess.run([*env_cmd, "lipsync", "--student", str(files["student"]), "--video", "missing.mp4",
                          "--out", str(tmp_path / "x.mp4")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr and "missing.mp4" in res.stderr


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _subcommands(sub, f"{prefix}{name} ")
                out.update(nested or {f"{prefix}{name}": sub})
    return out


def test_readme_command_table_matches_the_parser():
    """Every sub-command has a row in the README's command table naming each of its options, every
    row is a real sub-command, and every option has a help text."""
    readme = (ROOT / "README.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `turbosync ([a-z-]+(?: [a-z][a-z-]*)?)[^|]*\|.*$", readme,
                                                        re.MULTILINE)}  # fmt: skip
    commands = _subcommands(build_parser())
    assert set(rows) == set(commands), (sorted(rows), sorted(commands))
    for name, parser in commands.items():
        for action in parser._actions:
            if action.help is None and not isinstance(action, argparse._HelpAction):
                pytest.fail(f"turbosync {name}: {action.dest} has no help text")
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in rows[name], f"README row of `turbosync {name}` does not mention {opt}"


def test_lipsync_teacher_mode(files, tmp_path):
    """--teacher PRESET: the teacher's own conditioning, the same muxing: the same frame count and size."""
    out = tmp_path / "teacher.mp4"
    assert main(["lipsync", "--teacher", "teacher/tiny", "--video", str(files["video"]), "--audio", str(files["audio"]),
                 "--out", str(out), "sampler.num_inference_steps=2"]) == 0  # fmt: skip
    n, size, seconds = probe(out)
    assert size == (256, 320) and abs(seconds - files["seconds"]) <= 1024 / 48000 + 1e-3
    assert n == int(files["seconds"] * 25)  # the teacher keeps the official floor(samples / 640) frames


def test_terminated_run_leaves_nothing_behind(files, tmp_path):
    """SIGTERM mid-run (a container stop, `timeout`): exit 143, no output, no temporary mp4 or avatar folder."""
    import os
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "killed.mp4"
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", "lipsync", "--student", str(files["student"]),
                             "--video", str(files["video"]), "--audio", str(files["audio"]), "--out", str(out)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not list(tmp.glob("turbosync-avatar-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # wait until the run is under way (its temporary avatar exists)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (143, 0), err[-2000:]  # 0 only if it finished before the signal landed
    if proc.returncode == 143:
        assert not out.exists() and "Traceback" not in err
    assert not list(tmp.iterdir()) and not list(tmp_path.glob(".killed*"))



def test_a_signal_that_comes_out_as_a_library_error_is_still_a_termination(monkeypatch, capsys):
    """CI saw SIGTERM land inside mediapipe's import, which turned our SystemExit into an ImportError: exit 1 and a
    traceback. Whatever error follows the signal (a crash, or what would be a bad-input line) exits 143, one line."""
    import signal

    import scripts.cli as cli

    def demo(args):
        with pytest.raises(SystemExit):
            cli._terminated(signal.SIGTERM, None)
        raise ImportError("mediapipe half imported")

    monkeypatch.setattr(cli, "_SIGNALLED", [])
    monkeypatch.setattr(cli, "_demo", demo)
    assert main(["demo"]) == 143
    assert capsys.readouterr().err.strip() == "terminated"
    assert cli._fail(ValueError("a decoder cut short")) == 143  # the user-error path says the same
    assert capsys.readouterr().err.strip() == "terminated"
    monkeypatch.setattr(cli, "_SIGNALLED", [])
    monkeypatch.setattr(cli, "_demo", lambda args: (_ for _ in ()).throw(ImportError("a real crash")))
    with pytest.raises(ImportError):  # without a signal, a crash stays a crash
        main(["demo"])


def test_main_restores_the_callers_sigterm_handler(monkeypatch):
    """main() called in-process (a program, the tests) must not leave its SIGTERM handler installed: a pytest
    process was left ignoring `kill` (SIGTERM became a SystemExit inside whatever test ran next)."""
    import signal

    import scripts.cli as cli

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_demo", lambda args: 0)
    assert main(["demo"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_lipsync_without_audio_lasts_as_long_as_the_video(files, tmp_path):
    """No --audio: the video's own track drives it, padded with silence where the video outlasts it (issue 10
    item 1; `--teacher` reads it the same way, ``read_audio_16k(video, to_video_end=True)``); a video without
    an audio track is exit 2, nothing written."""
    from distill.synthworld import make_clip
    from teacher.media import write_video

    clip = make_clip(8, resolution=256, seconds=1.6)  # 40 frames, the audio cut to 0.8 s
    video = tmp_path / "short_audio.mp4"
    write_video(video, clip.frames, fps=25, audio=clip.audio[: 16000 * 4 // 5], sample_rate=16000)
    out = tmp_path / "student.mp4"
    assert main(["lipsync", "--student", str(files["student"]), "--video", str(video), "--out", str(out)]) == 0
    n, _, seconds = probe(out)
    assert n == 40 and abs(seconds - 1.6) < 0.05, (n, seconds)
    silent = tmp_path / "silent.mp4"
    write_video(silent, clip.frames[:10], fps=25)
    assert main(["lipsync", "--student", str(files["student"]), "--video", str(silent), "--out",
                 str(tmp_path / "x.mp4")]) == 2  # fmt: skip
    assert not (tmp_path / "x.mp4").exists()


def test_config_device_and_option_errors_are_one_line(files, tmp_path, capsys):
    """A preset or override that cannot be used, a CUDA device on a machine without one, a value out of range,
    an output that would overwrite its input: one line, exit 2, for every command (not a traceback)."""
    import torch

    cases = [
        (["distill", "--config", "distill/tiny", "run.max_stepz=2"], "run.max_stepz"),
        (["distill", "--config", "distill/nope"], "distill/nope"),
        (["distill", "--config", "distill/tiny", "run.max_steps"], "key=value"),
        (["distill", "--config", "teacher/tiny"], "not a distillation preset"),
        (["distill", "--config", "distill/tiny", "run.max_steps=-2"], "max_steps"),
        (["teacher-demo", "--config", "teacher/nope", "--out", str(tmp_path / "t.mp4")], "teacher/nope"),
        (["lipsync", "--student", str(files["student"]), "--video", str(files["video"]), "--out", str(files["video"])],
         "is the input"),
    ]
    bad_student = tmp_path / "bad_student"
    bad_student.mkdir()
    (bad_student / "config.json").write_text((files["student"] / "config.json").read_text())
    (bad_student / "model.safetensors").write_bytes(b"\x00\x01" * 500)
    cases += [
        (["lipsync", "--student", str(bad_student), "--video", str(files["video"]), "--out", str(tmp_path / "s.mp4")],
         "model.safetensors"),
        (["eval", "sync", str(files["video"]), "--syncnet", str(files["audio"])], "not a SyncNet checkpoint"),
    ]
    if not torch.cuda.is_available():
        cases.append((["bench", "stream", "--out", str(tmp_path / "b.json"), "--device", "cuda"], "no CUDA device"))
    for argv, named in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0] and err[0].startswith("error:"), (argv, err)
    assert files["video"].stat().st_size > 0
    for argv in (["synth", str(tmp_path / "s"), "--clips", "0"], ["prepare", str(tmp_path), str(tmp_path / "o"),
                                                                   "--resolution", "-1"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage + one error line
            main(argv)
        assert exit_info.value.code == 2 and "must be at least" in capsys.readouterr().err
