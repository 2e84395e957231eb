"""Nested settings as flat ``section.key`` paths, and what differs between two of them.

Run configs and fingerprints are trees of dicts (a dataclass tree as JSON, or read back from a
``config.json``/``_run.json``). Comparing two of them key by key is how a resumed run or a rerun
into an old output folder names exactly what changed, and how the demo prints the overrides that
rebuild a run from a named config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-5}, "steps": 3}`` -> ``{"optim.lr": 1e-5, "steps": 3}``.

    Tuples become lists, as they are once written as JSON, so a tree from memory and the same tree
    read back compare equal. An empty section has no key.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = list(value) if isinstance(value, tuple) else value
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any], missing: Any = None) -> list[tuple[str, Any, Any]]:
    """``(path, old value, new value)`` for every flattened path whose values differ, sorted by path;
    a path present on one side only has ``missing`` on the other."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]
