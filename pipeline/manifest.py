"""Read and validate a clip manifest in parts, on the workers (the pipeline's reader).

A manifest is one file or many: a path or fsspec URL, a folder, a glob, brace ranges or several of
these joined with ``::`` (the shard-pattern syntax of ``shards.format``). Parts are read in sorted
order and their rows numbered consecutively, so the same files always give the same row numbers
and therefore the same shards. Formats, per part by suffix or ``manifest.format``:

- ``parquet``, ``csv``, ``jsonl`` (optionally ``.gz``): columns ``key``, ``path`` (a video, local
  or any fsspec URL), ``text`` (the subtitle) and optional ``start``/``end`` seconds of the clip
  inside a longer video. ``rename`` maps other column names onto these (``{"video": "path"}``).
  Every other column is carried into each sample's metadata with its type (an integer stays an
  integer even where other rows lack the column).
- ``wds``: video2dataset's WebDataset output (``pipeline/v2d.py``): ``<key>.mp4`` with
  ``<key>.json`` and/or ``<key>.txt`` per sample. The subtitle is ``manifest.subtitle_field``
  (``txt``, or ``json:<k>`` for a field of the json member); every other json field is carried.
  A video2dataset output folder is a manifest as it is: its tars are the parts, and the parquet
  and ``_stats.json`` beside each tar are that tar's metadata (the counts are checked), not parts.

One rule for carried fields, whatever the format: every one is kept, under its own name, or as
``manifest_<name>`` where the name is one the pipeline writes itself (``shards.format``).

The driver never reads rows. ``scan_part`` (a Ray task per part) validates every row, counts
them, digests the part and records where every ``CHECKPOINT_EVERY``-th row starts, so that
``read_rows`` on another worker can seek to a shard's first row instead of reading the part from
the top. Keys are checked for uniqueness across parts by hash buckets (``pipeline/plan.py``).

Validation fails fast and names the part, row and column: missing columns, empty parts, empty
or malformed keys (WebDataset splits sample keys at a dot and treats slashes as folders), empty
paths, non-numeric spans and, inside a Ray job, relative clip paths. Per-row problems that only
show when the clip is read (a missing file, empty text) are not errors here: they become failed
rows downstream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tarfile
from typing import Any, Iterator

import numpy as np

from common.jsonl import parse_object
from pipeline import v2d
from pipeline.errors import ManifestError
from pipeline.tables import open_part, table_records

REQUIRED = ("key", "path", "text")
SPAN = ("start", "end")
FORMATS = ("parquet", "csv", "jsonl", "wds")
# Row positions recorded per part for seeking: every this many rows.
CHECKPOINT_EVERY = 256

# What the reader hands the first stage (every stage names what it reads and writes).
OUTPUTS = ("key", "path", "member", "start", "end", "text", "extra", "shard", "row", "status", "error")


@dataclasses.dataclass(kw_only=True, frozen=True)
class ManifestConfig:
    """Where the manifest is and how its columns map onto ``key``/``path``/``text``/``start``/``end``."""

    path: str = ""  # file, folder, glob, brace pattern or '::'-joined list; local or any fsspec URL
    format: str = "auto"  # auto (by suffix) | parquet | csv | jsonl | wds
    rename: dict[str, str] = dataclasses.field(default_factory=dict)  # source column -> canonical name
    subtitle_field: str = "txt"  # wds input: the member ("txt") or "json:<field>" holding the subtitle


@dataclasses.dataclass(kw_only=True, frozen=True)
class Part:
    """One manifest file and its format."""

    url: str
    format: str


def part_format(url: str, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ManifestError(f"manifest.format={fmt!r} is unknown; use one of {', '.join(FORMATS)} or auto")
        return fmt
    name = url.lower().removesuffix(".gz")
    for suffix, kind in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl"),
                         (".tar", "wds")):
        if name.endswith(suffix):
            return kind
    raise ManifestError(f"manifest part {url}: cannot tell the format from the name; set manifest.format to "
                        f"one of {', '.join(FORMATS)}")


def list_parts(cfg: ManifestConfig) -> list[Part]:
    """The manifest's files, in the order their rows are numbered (listing only: no row is read)."""
    import fsspec

    from shards.format import PatternError, expand_pattern

    if not cfg.path:
        raise ManifestError("manifest.path is empty; point it at a parquet, csv or jsonl manifest, a folder of "
                            "parts, a glob, or video2dataset .tar shards")
    try:
        urls = expand_pattern(cfg.path)
    except PatternError as exc:
        raise ManifestError(f"manifest.path {cfg.path!r} matches no file; check the path or pattern") from exc
    parts: list[Part] = []
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url)
        if fs.isdir(path):
            names = sorted(p for p in fs.ls(path, detail=False) if _looks_like_part(p, cfg.format))
            if not names:
                raise ManifestError(f"manifest folder {url} holds no parquet, csv, jsonl or tar file")
            names = [_unstrip(fs, url, n) for n in names]
            side = v2d.companions(names)
            parts += [Part(url=n, format=part_format(n, cfg.format)) for n in names if n not in side]
        elif fs.exists(path):
            base = url.rsplit("/", 1)[-1]
            if base.startswith(("_", ".")) and base not in cfg.path:
                continue  # a glob's match like _SUCCESS or .crc: another tool's marker, not a part
            parts.append(Part(url=url, format=part_format(url, cfg.format)))
        else:
            raise ManifestError(f"manifest {url} does not exist; check manifest.path")
    side = v2d.companions([p.url for p in parts])  # a glob's matches of a video2dataset folder
    return [p for p in parts if p.url not in side]


def _looks_like_part(name: str, fmt: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base.startswith((".", "_")):
        return False
    if fmt == "wds":  # a video2dataset folder also holds parquet and json files beside its tars
        return base.lower().endswith(".tar")
    try:
        part_format(base, fmt)
    except ManifestError:
        return False
    return True


def _unstrip(fs: Any, url: str, path: str) -> str:
    return fs.unstrip_protocol(path) if "://" in url else path


def _rows(part: Part, cfg: ManifestConfig, first_index: int = 0, offset: int = 0, read_clips: bool = False,
          walk: v2d.TarWalk | None = None,
          refuse_relative_paths: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset or -1, pipeline row without shard/row/status) of the part's rows from
    ``first_index`` (table formats start there; jsonl and tar start at ``offset``, which must be
    where row ``first_index`` starts)."""
    if part.format == "wds":
        walk = walk or v2d.TarWalk(part.url, cfg.subtitle_field)
        with open_part(part.url, None) as f:
            if offset > 0:
                f.seek(offset)
            for i, (at, row) in enumerate(walk.rows(f, max(offset, 0), read_clips), start=first_index):
                _check_key(row["key"], f"manifest part {part.url}, row {i}")
                yield at, row
        return
    skip = first_index if part.format in ("csv", "parquet") else 0
    records = table_records(part.url, part.format, first_row=skip, offset=offset)
    for i, (at, record) in enumerate(records, start=first_index):
        yield at, normalise_record(record, cfg, part, i, refuse_relative_paths=refuse_relative_paths)


# ---------------------------------------------------------------------------------------------
# Validation of one record


def _plain(v: Any) -> Any:
    """A JSON-ready value: numpy and pandas scalars become Python, NaN and NA become None."""
    if v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (np.ndarray, list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
    except ImportError:
        pass
    return v


def _span(value: Any, where: str, col: str) -> float | None:
    value = _plain(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}, column {col!r}: {value!r} is not a number of seconds") from exc
    if math.isnan(out):
        return None
    return out


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key:
        raise ManifestError(f"{where}, column 'key': empty key {key!r}")
    if "." in key or "/" in key or "\\" in key:
        raise ManifestError(f"{where}, column 'key': key {key!r} contains '.', '/' or '\\'; WebDataset splits "
                            "keys there, so replace them (e.g. with '_')")
    return key


def _is_relative(path: str) -> bool:
    return "://" not in path and not os.path.isabs(path)


def normalise_record(record: dict[str, Any], cfg: ManifestConfig, part: Part, index: int, *,
                     refuse_relative_paths: bool = False) -> dict[str, Any]:
    """One table-manifest record as a pipeline row (``key``, ``path``, ``member``, span, ``text``,
    ``extra``: every other column, whatever its name).

    Raises:
        ManifestError: naming the part, the row within it and the column.
    """
    where = f"manifest part {part.url}, row {index}"
    if cfg.rename:
        if index == 0:
            unknown = sorted(set(cfg.rename) - set(record))
            if unknown:
                raise ManifestError(f"{where}: manifest.rename names column(s) {unknown} that the manifest lacks; "
                                    f"its columns are {sorted(record)}")
        record = {cfg.rename.get(k, k): v for k, v in record.items()}
    missing = [c for c in REQUIRED if c not in record]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}; columns are {sorted(record)}. "
                            "Map yours with manifest.rename, e.g. {\"video\": \"path\"}")
    key = _check_key(_plain(record["key"]), where)
    path = _plain(record["path"])
    if not isinstance(path, str) or not path.strip():
        raise ManifestError(f"{where}, column 'path': empty path {path!r}")
    if refuse_relative_paths and _is_relative(path):
        raise ManifestError(f"{where}, column 'path': {path!r} is relative; inside a Ray job it would resolve in "
                            "Ray's temporary copy of the working dir, not where you submitted the job: write "
                            "absolute paths or URLs (s3://...) into the manifest")
    text = _plain(record["text"])
    extra = {c: _plain(v) for c, v in record.items() if c not in REQUIRED + SPAN}
    return {"key": key, "path": path, "member": b"",
            "start": _span(record.get("start"), where, "start"), "end": _span(record.get("end"), where, "end"),
            "text": text if isinstance(text, str) else "", "extra": extra}


def key_hash(key: str) -> int:
    """64 bits of BLAKE2b: how keys are compared across parts without collecting them."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


# ---------------------------------------------------------------------------------------------
# The two worker-side operations


@dataclasses.dataclass(kw_only=True)
class PartScan:
    """What the driver learns about a part: counts and identity, never rows."""

    url: str
    format: str
    rows: int
    digest: str  # BLAKE2b of the part's bytes (table formats) or of its listing entry (wds)
    checkpoints: np.ndarray  # byte offset of rows 0, K, 2K, ... (K = CHECKPOINT_EVERY); -1 where unseekable
    keys: np.ndarray  # uint64 key hashes in row order (stays in the object store)
    skipped: int = 0  # video2dataset samples without a clip (inputs it recorded as failed)


def _digest(part: Part) -> str:
    import fsspec

    if part.format == "wds":
        # Clip tars are large and immutable: name, size and modification identify them.
        fs, path = fsspec.core.url_to_fs(part.url)
        info = fs.info(path)
        ident = [part.url, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))]
        return hashlib.blake2b(json.dumps(ident).encode(), digest_size=16).hexdigest()
    h = hashlib.blake2b(digest_size=16)
    with open_part(part.url, None) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _v2d_stats(url: str) -> tuple[dict[str, Any], str] | None:
    """video2dataset's ``_stats.json`` beside the tar at ``url``, or None when there is none."""
    import fsspec

    at = v2d.stats_url(url)
    if at is None:
        return None
    try:
        with fsspec.open(at, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    stats = parse_object(raw, f"{at} (video2dataset's counts for {url})", ManifestError)
    return stats, at


def scan_part(part: Part, cfg: ManifestConfig, *, refuse_relative_paths: bool = False) -> PartScan:
    """Validate every row of ``part``; count, digest and index it. Raises ManifestError on a bad row.

    A video2dataset tar must end with its end-of-archive marker, and its counts must match the
    ``_stats.json`` video2dataset wrote beside it. ``refuse_relative_paths`` (inside a Ray job)
    refuses a row whose clip path is relative.
    """
    offsets: list[int] = []
    hashes: list[int] = []
    walk = v2d.TarWalk(part.url, cfg.subtitle_field) if part.format == "wds" else None
    try:
        for i, (at, row) in enumerate(_rows(part, cfg, walk=walk, refuse_relative_paths=refuse_relative_paths)):
            if i % CHECKPOINT_EVERY == 0:
                offsets.append(at)
            hashes.append(key_hash(row["key"]))
        stats = _v2d_stats(part.url) if walk is not None else None
        if stats is not None:
            walk.check_stats(*stats, rows=len(hashes))
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest part {part.url} does not exist (was it removed while listing?)") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest part {part.url} is not UTF-8 text ({exc}); is it a {part.format} file?") from exc
    except (ValueError, OSError, tarfile.TarError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"manifest part {part.url} cannot be read as {part.format}: {exc}") from exc
    if not hashes:
        raise ManifestError(f"manifest part {part.url} has no rows; remove it or fill it")
    return PartScan(url=part.url, format=part.format, rows=len(hashes), digest=_digest(part),
                    checkpoints=np.asarray(offsets, dtype=np.int64), keys=np.asarray(hashes, dtype=np.uint64),
                    skipped=walk.skipped if walk is not None else 0)


def read_rows(part: Part, cfg: ManifestConfig, start: int, end: int, checkpoints: np.ndarray,
              first_row: int, shard: int) -> Iterator[dict[str, Any]]:
    """Rows ``[start, end)`` of ``part`` as pipeline rows (``OUTPUTS``), global row numbers from ``first_row``.

    Seeks to the nearest recorded row at or before ``start`` where the format allows (jsonl, tar),
    or to the row group (parquet); reads from the top otherwise (gzip parts, csv). Video2dataset
    rows carry their clip's bytes in ``member``.
    """
    cp = start // CHECKPOINT_EVERY
    offset = int(checkpoints[cp]) if len(checkpoints) > cp else -1
    if part.format in ("parquet", "csv"):
        index, rows = start, _rows(part, cfg, first_index=start)
    else:
        index = cp * CHECKPOINT_EVERY if offset >= 0 else 0
        rows = _rows(part, cfg, first_index=index, offset=max(offset, 0), read_clips=True)
    for _, row in rows:
        if index >= end:
            break
        if index >= start:
            yield {**row, "shard": shard, "row": first_row + index - start, "status": "ok", "error": ""}
        index += 1


def resolve_local(path: str, base_dir: str) -> str:
    """A relative local path in a row resolves against the directory the run was started from."""
    if "://" in path or os.path.isabs(path) or not base_dir:
        return path
    return os.path.join(base_dir, path)


def scan_local(cfg: ManifestConfig) -> list[dict[str, Any]]:
    """Every row of a small manifest, validated, in one process (tests and tools; never the driver of a run)."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for part in list_parts(cfg):
        scan = scan_part(part, cfg)
        offset = len(rows)
        for row in read_rows(part, cfg, 0, scan.rows, scan.checkpoints, len(rows), 0):
            if row["key"] in seen:
                raise ManifestError(f"manifest part {part.url}, row {row['row'] - offset}, column 'key': duplicate "
                                    f"key {row['key']!r} (first in manifest row {seen[row['key']]}); keys must be unique")
            seen[row["key"]] = row["row"]
            rows.append(row)
    return rows

