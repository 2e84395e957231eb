"""Strict JSON for every file the project writes: non-finite numbers become null."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import PurePath
from typing import Any


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (nan, inf, -inf) as None, so it is strict JSON.

    Python's ``json`` writes ``NaN`` and ``-Infinity``, which strict readers (JavaScript, jq, most
    languages' parsers) reject; a missing number is written as ``null`` instead. NumPy scalars and
    tuples become plain numbers and lists, paths strings, dataclass instances dicts of their fields.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        return strict_json(obj.item())  # numpy / torch scalars
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return strict_json(dataclasses.asdict(obj))
    return obj


def strict_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict_json` (non-finite numbers as null). Anything else non-standard is
    refused unless ``default`` (as for ``json.dumps``) says how to write it."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def config_json(cfg: Any) -> str:
    """The text of a run's ``config.json``: the resolved config (a dataclass tree or a dict) as
    strict JSON, keys sorted, two-space indent. Every run that records its config writes this."""
    return strict_dumps(cfg, indent=2, sort_keys=True, default=str) + "\n"
