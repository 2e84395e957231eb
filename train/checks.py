"""The two checks every training config section writes its values' rules with.

Each section's ``problems()`` returns sentences naming the key (``optim.lr``, ``data.batch_size``),
the value and what is allowed; ``TrainConfig.check`` joins them into one
:class:`common.errors.UserError`, so a run refuses a config before it writes anything, whether it
came from the command line or from Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def out_of_range(key: str, value: float, lo: float, hi: float = math.inf, *, lo_open: bool = False,
                 hint: str = "") -> list[str]:
    """``[]`` when ``value`` is finite and within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), else the problem."""
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if ok:
        return []
    bound = f"> {lo}" if lo_open else f">= {lo}"
    bound += f" and <= {hi}" if hi != math.inf else ""
    return [f"{key}={value!r} must be {bound}{hint}"]


def not_one_of(key: str, value: Any, choices: Iterable[Any], hint: str = "") -> list[str]:
    """``[]`` when ``value`` is one of ``choices``, else the problem naming them."""
    choices = tuple(choices)
    if value in choices:
        return []
    return [f"{key}={value!r}: choose one of {', '.join(map(str, choices))}{hint}"]
