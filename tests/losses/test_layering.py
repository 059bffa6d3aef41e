"""``losses`` sits below the models: no file in losses/ imports teacher, student, distill, inference, scripts,
accelerate or deepspeed (DESIGN section 1), checked on the source of every module and on what importing them
loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import losses

LOSSES_DIR = Path(losses.__file__).resolve().parent
FORBIDDEN = {"teacher", "student", "distill", "inference", "scripts", "accelerate", "deepspeed"}


def imported_roots(source: str) -> set[str]:
    """Top-level package names a module imports (absolute imports, at any depth of the file)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_scan_sees_imports():
    src = "import teacher.unet\nfrom student import x\ndef f():\n    import deepspeed\nfrom . import y\n"
    assert imported_roots(src) == {"teacher", "student", "deepspeed"}


def test_no_loss_module_imports_the_models():
    files = sorted(LOSSES_DIR.glob("*.py"))
    assert len(files) >= 3  # __init__, consistency, reconstruction at least
    bad = {f.name: sorted(imported_roots(f.read_text()) & FORBIDDEN) for f in files}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_importing_losses_loads_no_model_package():
    modules = ["losses"] + [f"losses.{f.stem}" for f in sorted(LOSSES_DIR.glob("*.py")) if f.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({sorted(FORBIDDEN)!r})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=LOSSES_DIR.parent, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
