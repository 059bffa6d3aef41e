"""OmegaConf presets, ``key=value`` overrides and one ``instantiate``.

A preset is named by its path under this folder without ``.yaml`` (``teacher/tiny``) or
given as a file path. A node with ``_target_: module.attr`` builds an object: its other
keys are the keyword arguments, nested targets are built first, ``_partial_: true`` gives a
``functools.partial`` instead of a call.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent
REPO_DIR = CONFIG_DIR.parent
if not OmegaConf.has_resolver("repo"):
    # ${repo:assets/x} -> an absolute path inside the repository (committed assets such as the toy teacher)
    with warnings.catch_warnings():  # omegaconf 2.4 renames it; 2.3 has only this name
        warnings.simplefilter("ignore")
        OmegaConf.register_new_resolver("repo", lambda rel: str(REPO_DIR / rel))
_RESERVED = ("_target_", "_partial_", "_recursive_")
_MISSING = object()


class ConfigError(ValueError):
    """A preset, file or override that cannot be used; the message says which and why (one line)."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """No config file or preset of that name."""


class ConfigKeyError(ConfigError, KeyError):
    """An override naming a key the config does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def available() -> list[str]:
    """Names of the bundled presets (``teacher/tiny``, ...)."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def resolve(name_or_path: str | Path) -> Path:
    """A YAML file path for a preset name or an existing file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
    if bundled.is_file():
        return bundled
    raise ConfigNotFoundError(f"no config file or preset named {name_or_path!r}; presets: {', '.join(available())}")


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``key.sub=value`` overrides; ``+key=value`` adds a key that does not exist yet.

    A typo in an existing key is an error rather than a silently added setting.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+")
        if not add and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigKeyError(f"override {item!r}: no key {key!r} in the config (prefix with + to add it)")
        parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        OmegaConf.update(cfg, key, OmegaConf.select(parsed, key), merge=False, force_add=add)
    return cfg


def load(name_or_path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """Load a preset (or YAML file) and apply command-line style overrides."""
    cfg = OmegaConf.load(resolve(name_or_path))
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config {name_or_path} must be a mapping at the top level")
    return apply_overrides(cfg, overrides)


def locate(target: str) -> Any:
    """``'package.module.attr.attr'`` -> the object."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot locate _target_ {target!r}")


def _split(node: DictConfig) -> tuple[Any, dict[str, Any], bool, bool]:
    target = locate(node["_target_"])
    kwargs = {k: v for k, v in node.items() if k not in _RESERVED}
    return target, kwargs, bool(node.get("_partial_", False)), bool(node.get("_recursive_", True))


def _build(value: Any) -> Any:
    if isinstance(value, DictConfig):
        if "_target_" in value:
            return instantiate(value)
        return {k: _build(v) for k, v in value.items()}
    if isinstance(value, ListConfig):
        return [_build(v) for v in value]
    return value


def instantiate(node: Any, **overrides: Any) -> Any:
    """Build the object a ``_target_`` node describes; keyword ``overrides`` win over the node."""
    if isinstance(node, dict):
        node = OmegaConf.create(node)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ValueError("instantiate needs a mapping with a _target_ key")
    target, kwargs, partial, recursive = _split(node)
    kwargs = {k: (_build(v) if recursive else _plain(v)) for k, v in kwargs.items()}
    kwargs.update(overrides)
    return functools.partial(target, **kwargs) if partial else target(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def target_nodes(cfg: Any, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every ``_target_`` node in ``cfg`` with its dotted path."""
    if isinstance(cfg, DictConfig):
        if "_target_" in cfg:
            yield prefix or "<root>", cfg
        for key, value in cfg.items():
            yield from target_nodes(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(cfg, ListConfig):
        for i, value in enumerate(cfg):
            yield from target_nodes(value, f"{prefix}[{i}]")


def bind(node: DictConfig) -> inspect.BoundArguments:
    """Bind a node's keys to its target's signature without building anything."""
    target, kwargs, _, _ = _split(node)
    return inspect.signature(target).bind(**kwargs)
