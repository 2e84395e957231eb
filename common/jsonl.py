"""One JSON-lines row: every JSON-lines file the project reads (curation manifests, text corpora,
caption and retrieval manifests) parses its lines here, so a broken line reads the same everywhere."""

from __future__ import annotations

import json
from typing import Any

from common.errors import UserError


class JSONLineError(UserError):
    """A line that is not one JSON object; the message names where it is and what to do."""


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
