"""Config files into nested dataclasses.

Every component owns a keyword-only dataclass (``FrameConfig``, ``CaptionConfig``, ``TrainConfig``,
...). A run is a dataclass tree; a TOML or YAML file and a few ``a.b=value`` overrides change it.

Values are parsed by the declared type of the field they land in, not by how they look: ``5e-6``
is text to YAML (its floats need a dot) and to the shell, but ``optim.lr`` is a ``float``, so it
becomes 5e-06. A value that does not fit its field, and a key no dataclass has, raise
:class:`ConfigError` naming the key, the value and what was expected, before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from common.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file, key or value the user must fix; the message names it and says how."""


class OverrideText(str):
    """An override's value exactly as typed (``a.b=<text>``); :func:`from_dict` parses it by the field's type."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing .toml, .yaml or .json file")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: unknown format {suffix!r}; use .toml, .yaml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib, yaml and json each have their own error type
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of sections and keys, not {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], OverrideText]:
    """Split ``a.b.c=value``; the value stays text until the field it lands in says how to read it."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {item!r}: {key.strip()!r} is not a key; write section.field=value")
    return keys, OverrideText(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=value`` override set (values still text)."""
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


# ---- parsing one value by its declared type ---------------------------------------------------

_NULL_WORDS = ("null", "none", "~")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


class _Mismatch(Exception):
    """A value that does not fit a type; ``from_dict`` turns it into a ConfigError naming the key."""


def _describe(tp: Any, example: bool = True) -> str:
    """The expected type in words (with an example for a scalar standing alone)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer (e.g. 10)" if example else "integer"
    if tp is float:
        return "a number (e.g. 0.5 or 5e-6)" if example else "number"
    if tp is str:
        return "a string" if example else "string"
    if dataclasses.is_dataclass(tp):
        return f"a section ({tp.__name__})"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a, example) for a in args)
    if origin in (tuple, list, set, frozenset):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} items ({', '.join(_describe(a, False) for a in args)})"
        return f"a list of {_describe(args[0], False)} items" if args else "a list"
    if origin is dict:
        return "a table (e.g. {a: 1})"
    return getattr(tp, "__name__", str(tp))


def _yaml_text(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _Mismatch(f"cannot be read ({str(exc).splitlines()[0]})") from exc


def _untyped_text(text: str) -> Any:
    """Override text for a field of no declared type (``kwargs: dict[str, Any]``): read as YAML,
    except that an exponent number YAML leaves as text (``5e-6``) is a float, and unreadable text
    stays text."""
    try:
        value = _yaml_text(text)
    except _Mismatch:
        return str(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def _unquote(text: str) -> str:
    """``'x'`` or ``"x"`` as typed in an override (quotes a shell kept) means x, as YAML would read it."""
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        value = _yaml_text(s)
        if isinstance(value, str):
            return value
    return text


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise _Mismatch


def _as_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Mismatch


def _as_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _Mismatch


def _as_str(value: Any) -> str:
    if isinstance(value, OverrideText):
        return str(_unquote(value))
    if isinstance(value, str):
        return value
    # TOML and YAML type bare scalars (a run name 2024, a version 1.5); a string field wants the text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Mismatch


def _items(value: Any) -> list[Any]:
    """A list-typed value: a list from a file, or text written ``[a, b]`` or ``a,b``."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith(("[", "(")):
            parsed = _yaml_text("[" + s[1:-1] + "]" if s.startswith("(") and s.endswith(")") else s)
            if isinstance(parsed, list):
                return parsed
            raise _Mismatch
        return [OverrideText(p.strip()) for p in s.split(",")] if s else []
    raise _Mismatch


def _as_sequence(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    items = _items(value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise _Mismatch(f"has {len(items)} item(s)")
        return tuple(parse_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
    item_tp = args[0] if args else Any
    parsed = [parse_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(items)]
    return origin(parsed) if origin in (tuple, set, frozenset) else parsed


def _as_dict(value: Any, tp: Any, key: str) -> dict[Any, Any]:
    if isinstance(value, str):
        value = _yaml_text(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise _Mismatch
    args = typing.get_args(tp)
    value_tp = args[1] if len(args) == 2 else Any
    return {k: parse_value(v, value_tp, f"{key}.{k}") for k, v in value.items()}


def _as_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    others = [a for a in args if a is not type(None)]
    if type(None) in args:
        if value is None:
            return None
        text = value.strip().lower() if isinstance(value, OverrideText) else None
        if text in _NULL_WORDS or (text == "" and str not in others):
            return None
    if len(others) == 1:
        return parse_value(value, others[0], key)
    # Text could fit several members (``3`` is a valid str too): try the narrower types first.
    for member in sorted(others, key=lambda a: a is str):
        try:
            return parse_value(value, member, key)
        except ConfigError:
            continue
    raise _Mismatch


def parse_value(value: Any, tp: Any, key: str, current: Any = None) -> Any:
    """``value`` (from a file, or override text) as the declared type ``tp`` of config key ``key``.

    ``current`` is the field's present value; a nested section starts from it. Raises
    :class:`ConfigError` naming the key, the value and the expected type.
    """
    origin = typing.get_origin(tp)
    try:
        if origin in (typing.Union, types.UnionType):
            return _as_union(value, tp, key)
        if tp is Any or isinstance(tp, (typing.TypeVar, str)):
            return _untyped_text(value) if isinstance(value, OverrideText) else value
        if value is None:
            raise _Mismatch("is null")
        if dataclasses.is_dataclass(tp):
            if isinstance(value, OverrideText):
                parsed = _yaml_text(value)
                if not isinstance(parsed, dict):
                    raise ConfigError(f"config key {key} is a section ({tp.__name__}); set one of its fields "
                                      f"as {key}.<field>=value")
                value = parsed
            if not isinstance(value, dict):
                raise _Mismatch
            return from_dict(tp, value, current if isinstance(current, tp) else None, key)
        if tp is bool:
            return _as_bool(value)
        if tp is int:
            return _as_int(value)
        if tp is float:
            return _as_float(value)
        if tp is str:
            return _as_str(value)
        if origin in (tuple, list, set, frozenset) or tp in (tuple, list):
            return _as_sequence(value, tp, key)
        if origin is dict or tp is dict:
            return _as_dict(value, tp, key)
        if isinstance(tp, type) and not isinstance(value, tp) and isinstance(value, str):
            return tp(_as_str(value))  # e.g. pathlib.Path
        return value
    except _Mismatch as exc:
        why = f" ({exc})" if str(exc) else ""
        raise ConfigError(f"config key {key}: {_show(value)} is not {_describe_for(tp, current)}{why}") from None


def _describe_for(tp: Any, current: Any) -> str:
    """The expected type, with the key's own present value as the example where it has a number."""
    if tp in (int, float) and isinstance(current, (int, float)) and not isinstance(current, bool):
        return f"{'an integer' if tp is int else 'a number'} (e.g. {current!r}, its value now)"
    return _describe(tp)


def _show(value: Any) -> str:
    if isinstance(value, OverrideText):
        return repr(str(value))
    return repr(value)


# ---- dataclass trees --------------------------------------------------------------------------


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass tree (``optim.lr``, ``eval.manifest.batch_size``, ...)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        here = f"{prefix}{f.name}"
        out.append(here)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _all_keys(tp, here + ".")
    return out


def _unknown_key(cls: type, where: str, name: str, root: type) -> ConfigError:
    """An unknown key's error: the key, its section, the closest known key and the section's keys."""
    key = f"{where}.{name}" if where else name
    known = sorted(f.name for f in dataclasses.fields(cls))
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    guess = (f"{where}.{near[0]}" if where else near[0]) if near else ""
    if not guess:
        # Maybe a field of another section (``lr`` for ``optim.lr``), or a misspelt section.
        everywhere = _all_keys(root)
        same_leaf = [k for k in everywhere if k.rsplit(".", 1)[-1] == name]
        near = same_leaf or difflib.get_close_matches(key, everywhere, n=1, cutoff=0.6)
        guess = near[0] if near else ""
    hint = f" (did you mean {guess!r}?)" if guess else ""
    section = f"section {where!r} ({cls.__name__})" if where else cls.__name__
    return ConfigError(f"unknown config key {key!r} in {section}{hint}; known keys there: {', '.join(known)}")


def from_dict(cls: type[T], data: dict[str, Any] | None, base: T | None = None, where: str = "",
              root: type | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, starting from ``base`` (or the defaults).

    Each value is parsed by its field's declared type (:func:`parse_value`); nested dataclass
    fields recurse; unknown keys raise, suggesting the closest known key.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or cls.__name__} must be a table, got {data!r}")
    root = root or cls
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for name in sorted(set(data) - fields):
        raise _unknown_key(cls, where, name, root)
    current = base if base is not None else cls()
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        here = f"{where}.{name}" if where else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kwargs[name] = from_dict(tp, value, getattr(current, name), here, root)
        else:
            kwargs[name] = parse_value(value, tp, here, getattr(current, name))
    try:
        return dataclasses.replace(current, **kwargs)
    except ValueError as exc:  # a section's own check (__post_init__) of values that parsed but do not fit
        raise ConfigError(str(exc)) from exc


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, base: T | None = None) -> T:
    """Defaults (or ``base``), then the file, then the overrides."""
    data = read_config_file(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, base)
