"""JSON lines: every JSON-lines file the project reads (curation manifests, text corpora, caption
and retrieval manifests, training metrics, the demo's manifests) goes through :func:`read_objects`,
so a broken line reads the same everywhere and so does a blank one: a line holding only whitespace
is no row, anywhere."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from common.errors import UserError


class JSONLineError(UserError):
    """A line that is not one JSON object; the message names where it is and what to do."""


T = TypeVar("T")


def read_objects(lines: Iterable[tuple[T, str | bytes]], where: Callable[[T], str],
                 error: type[ValueError] = JSONLineError) -> Iterator[tuple[T, dict[str, Any]]]:
    """``(tag, object)`` for each non-blank line of ``(tag, line)`` pairs, in order.

    The tag says where the line is (its number, its byte offset, the line itself) and ``where(tag)``
    words it for the ``error`` raised by a line that is not one JSON object.
    """
    for tag, line in lines:
        if line.strip():
            yield tag, parse_object(line, where(tag), error)


def read_jsonl(path: str | Path, error: type[ValueError] = JSONLineError) -> list[dict[str, Any]]:
    """The objects of a local JSON-lines file (UTF-8), errors naming ``path:line``."""
    lines = enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1)
    return [row for _, row in read_objects(lines, lambda n: f"{path}:{n}", error)]


def parse_object(line: str | bytes, where: str, error: type[ValueError] = JSONLineError) -> dict[str, Any]:
    """The JSON object on ``line``; ``where`` (file and line or byte) leads the message of the
    ``error`` raised otherwise (each reader passes its own error class)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{where}: not valid JSON ({exc}); fix or remove the line") from None
    if not isinstance(record, dict):
        raise error(f"{where}: a {type(record).__name__}, not a JSON object; each line must be one {{...}} row")
    return record
