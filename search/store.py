"""An index folder opened for searching: the faiss index, metadata and vectors, all memory-mapped.

Opening costs little time and memory whatever the collection's size: the index file is mapped
(an IVF index's inverted lists, the vectors of a Flat or HNSW index: pages come in as searches
touch them; an HNSW graph itself is read, about 8 M bytes a vector), the metadata is an Arrow IPC
file viewed in place, and the float16 vectors a numpy memmap. Filters (:class:`Filters`) run as Arrow
compute over the metadata columns and give a mask of the rows that pass.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from search.index import INDEX_FILE, INFO_FILE, META_FILE, VECTORS_FILE, read_flags, read_info


class StoreError(UserError):
    """An index folder that cannot be opened, or a filter on a column it lacks."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class Filters:
    """Metadata filters; every one given must hold. Text filters ignore case."""

    duration_min: float | None = None
    duration_max: float | None = None
    subtitle: str = ""  # substring of the subtitle
    caption: str = ""  # substring of the caption
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # metadata column -> value (as text)

    @property
    def empty(self) -> bool:
        return (self.duration_min is None and self.duration_max is None and not self.subtitle and not self.caption
                and not self.columns)

    @classmethod
    def parse(cls, spec: dict[str, Any] | None) -> Filters:
        """From JSON (``{"duration_min": 2, "subtitle": "dog", "columns": {"color": "red"}}``)."""
        spec = dict(spec or {})
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise StoreError(f"unknown filter(s) {sorted(unknown)}: use duration_min, duration_max, subtitle, caption "
                             "or columns")
        out = {}
        for name in ("duration_min", "duration_max"):
            if spec.get(name) not in (None, ""):
                try:
                    out[name] = float(spec[name])
                except (TypeError, ValueError):
                    raise StoreError(f"filter {name}={spec[name]!r} is not a number") from None
        for name in ("subtitle", "caption"):
            if spec.get(name):
                out[name] = str(spec[name])
        cols = spec.get("columns") or {}
        if not isinstance(cols, dict):
            raise StoreError("filter columns must be an object of column -> value")
        out["columns"] = {str(k): str(v) for k, v in cols.items() if v not in (None, "")}
        return cls(**out)


class Store:
    """One index folder (see ``search/index.py``), opened read-only."""

    def __init__(self, folder: str | Path) -> None:
        import faiss
        import pyarrow as pa

        self.folder = Path(folder)
        info = read_info(self.folder, StoreError)
        missing = [f for f in (INDEX_FILE, META_FILE, VECTORS_FILE) if not (self.folder / f).is_file()]
        if info is None or missing:
            raise StoreError(f"{self.folder} is not an index folder ({INFO_FILE if info is None else missing[0]} is "
                             "missing); build one with clipvip index")
        self.info: dict[str, Any] = info
        self.index = faiss.read_index(str(self.folder / INDEX_FILE), read_flags(info))
        from search.tune import set_param

        set_param(self.index, self.info["search"]["param"])
        self.meta = pa.ipc.open_file(pa.memory_map(str(self.folder / META_FILE))).read_all()
        self.vectors = np.load(self.folder / VECTORS_FILE, mmap_mode="r")
        if not (len(self.meta) == len(self.vectors) == self.index.ntotal):
            raise StoreError(f"{self.folder}: index, metadata and vectors disagree on the row count; rebuild it")
        self._keys: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    def row_of(self, key: str) -> int | None:
        """The row (vector id) of ``key``, or None."""
        import pyarrow.compute as pc

        i = pc.index(self.meta["key"], key).as_py()
        return None if i < 0 else int(i)

    def keys(self, ids: list[int]) -> list[str]:
        column = self.meta["key"]
        return [column[int(i)].as_py() for i in ids]

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self.vectors[row], dtype=np.float32)

    def filter_columns(self) -> list[str]:
        """Metadata columns a ``columns`` filter may name (manifest fields without the ``m.`` prefix)."""
        return sorted(c[2:] for c in self.meta.column_names if c.startswith("m."))

    def mask(self, filters: Filters) -> np.ndarray | None:
        """Bool [N] of the rows passing ``filters``; None when there is no filter."""
        import pyarrow.compute as pc

        if filters.empty:
            return None
        m = self.meta
        conds = []
        if filters.duration_min is not None:
            conds.append(pc.greater_equal(m["duration"], filters.duration_min))
        if filters.duration_max is not None:
            conds.append(pc.less_equal(m["duration"], filters.duration_max))
        for name in ("subtitle", "caption"):
            value = getattr(filters, name)
            if value:
                conds.append(pc.match_substring(m[name], value, ignore_case=True))
        for col, value in filters.columns.items():
            name = f"m.{col}"
            if name not in m.column_names:
                raise StoreError(f"filter column {col!r} is not in this index; it has {self.filter_columns()[:20]}")
            conds.append(pc.equal(m[name], value))
        out = conds[0]
        for c in conds[1:]:
            out = pc.and_(out, c)
        return pc.fill_null(out, False).to_numpy(zero_copy_only=False)

    def rows(self, ids: list[int]) -> list[dict[str, Any]]:
        """Metadata rows of ``ids`` (the ``m.`` columns folded back into ``meta``)."""
        import pyarrow as pa

        if not ids:
            return []
        # One-row slices are views into the mapped file; ``take`` on the chunked table would first
        # concatenate whole columns (tens of milliseconds at a million rows).
        sub = pa.concat_tables([self.meta.slice(int(i), 1) for i in ids]).to_pylist()
        out = []
        for r in sub:
            meta = json.loads(r.pop("meta") or "{}")
            for k in [k for k in r if k.startswith("m.")]:
                r.pop(k)
            r["meta"] = meta
            out.append(r)
        return out
