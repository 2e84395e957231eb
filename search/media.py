"""Clips and thumbnails for the server, found from the index's metadata only.

A request names an index and a key, never a path: the bytes come from where the metadata says
the clip lies (its byte range inside a curated shard tar, or the source file of a manifest row).
HTTP Range requests (one range) are answered with 206 and the slice, so a browser can seek.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import re
from typing import Any

from common.errors import UserError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeError(UserError):
    """A Range header that cannot be satisfied (416)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """``size`` bytes of ``url`` from ``offset``, served as ``content_type``."""

    url: str
    offset: int
    size: int
    content_type: str


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive of a single-range header, None for the whole body."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m[1] and not m[2]):
        raise RangeError(f"unsupported Range {header!r}: give one range, bytes=first-last")
    if m[1]:
        first = int(m[1])
        last = min(int(m[2]), size - 1) if m[2] else size - 1
    else:
        first, last = max(0, size - int(m[2])), size - 1
    if first >= size or first > last:
        raise RangeError(f"Range {header!r} is outside the {size} bytes")
    return first, last


def clip_source(row: dict[str, Any]) -> Source | None:
    """Where the clip of a metadata row lies."""
    if row.get("shard") and row.get("mp4_offset") is not None:
        return Source(row["shard"], int(row["mp4_offset"]), int(row["mp4_size"]), "video/mp4")
    path = row.get("path")
    if not path:
        return None
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    try:
        size = int(fs.size(p))
    except FileNotFoundError:
        return None
    return Source(path, 0, size, mimetypes.guess_type(p)[0] or "video/mp4")


def thumb_source(row: dict[str, Any]) -> Source | None:
    """The middle frame inside the shard tar, or None (then the server decodes one from the source)."""
    if row.get("shard") and row.get("jpg_offset") is not None:
        return Source(row["shard"], int(row["jpg_offset"]), int(row["jpg_size"]), "image/jpeg")
    return None


def read_slice(src: Source, first: int, length: int) -> bytes:
    """``length`` bytes of the clip from byte ``first`` of it."""
    import fsspec

    with fsspec.open(src.url, "rb") as f:
        f.seek(src.offset + first)
        return f.read(length)
