"""Lazy package exports: ``import pkg`` stays cheap; a name's module loads on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str], namespace: dict) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for a package whose names live in the modules of ``table``."""
    names = sorted(table)

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
