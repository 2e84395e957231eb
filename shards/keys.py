"""Key lists: a text file of sample keys, one a line (blank lines and ``#`` comments ignored).

``clipvip dedup`` writes one (``drop_keys.txt``, the near-duplicates to leave out) and the
trainer's shard loader reads it (``data.exclude_keys``), so both use this module.
"""

from __future__ import annotations

from typing import Iterable


def write_key_list(path: str, keys: Iterable[str]) -> None:
    """Write ``keys`` one a line (local path; callers build the file aside and move it in)."""
    with open(path, "w") as f:
        f.writelines(k + "\n" for k in keys)


def read_key_list(path: str) -> frozenset[str]:
    """The keys in the file at ``path`` (local or any fsspec URL)."""
    import fsspec

    with fsspec.open(path, "r") as f:
        return frozenset(line.strip() for line in f if line.strip() and not line.lstrip().startswith("#"))
