"""Config files into nested dataclasses, and dataclasses back into plain dicts.

Every component owns a keyword-only dataclass (``FrameConfig``, ``CaptionConfig``, ``TrainConfig``,
...). A run is a dataclass tree; a TOML or YAML file and a few ``a.b=value`` overrides change it.
Unknown keys are errors that name the key and the dataclass, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, key or value the user must fix; the message names it and says how."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing .toml, .yaml or .json file")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    if suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
        return data or {}
    if suffix == ".json":
        return json.loads(text)
    raise ConfigError(f"config file {path}: unknown format {suffix!r}; use .toml, .yaml or .json")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so ``3``, ``true`` and ``[1, 2]`` keep their types."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    import yaml

    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=value`` override set."""
    out = json.loads(json.dumps(data, default=str)) if data else {}
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return out


def _resolve(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def from_dict(cls: type[T], data: dict[str, Any] | None, base: T | None = None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, starting from ``base`` (or the defaults).

    Nested dataclass fields recurse; tuples and lists are converted; unknown keys raise.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or cls.__name__} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} in {where or cls.__name__}; known keys: {sorted(fields)}"
        )
    current = base if base is not None else cls()
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = _resolve(hints[name])
        here = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kwargs[name] = from_dict(tp, value, getattr(current, name), here)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            kwargs[name] = float(value)
        else:
            kwargs[name] = value
    return dataclasses.replace(current, **kwargs)


def to_dict(obj: Any) -> Any:
    """A JSON-ready dict of a dataclass tree (tuples become lists, paths become strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, base: T | None = None) -> T:
    """Defaults (or ``base``), then the file, then the overrides."""
    data = read_config_file(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, base)


def write_resolved(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON (first thing a run does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
