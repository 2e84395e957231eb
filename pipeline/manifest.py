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
- ``wds``: video2dataset's WebDataset output: ``<key>.mp4`` with ``<key>.json`` and/or
  ``<key>.txt`` per sample. The subtitle is ``manifest.subtitle_field`` (``txt``, or ``json:<k>``
  for a field of the json member); the json's fields pass through as metadata.

The driver never reads rows. ``scan_part`` (a Ray task per part) validates every row, counts
them, digests the part and records where every ``CHECKPOINT_EVERY``-th row starts, so that
``read_rows`` on another worker can seek to a shard's first row instead of reading the part from
the top. Keys are checked for uniqueness across parts by hash buckets (``pipeline/plan.py``).

Validation fails fast and names the part, row and column: missing columns, empty parts, empty
or malformed keys (WebDataset splits sample keys at a dot and treats slashes as folders), empty
paths, non-numeric spans. Per-row problems that only show when the clip is read (a missing file,
empty text) are not errors here: they become failed rows downstream.
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

from common.errors import UserError
from common.jsonl import read_objects

REQUIRED = ("key", "path", "text")
SPAN = ("start", "end")
# Fields the pipeline itself adds to a row; a manifest may not use them for passthrough data.
RESERVED = ("shard", "row", "status", "error", "extra", "jpg", "mp4", "clip", "caption", "caption_info", "member")
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


class ManifestError(UserError):
    """The manifest cannot be processed; the message names the part, row, column and fix."""


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
            parts += [Part(url=_unstrip(fs, url, n), format=part_format(n, cfg.format)) for n in names]
        elif fs.exists(path):
            base = url.rsplit("/", 1)[-1]
            if base.startswith(("_", ".")) and base not in cfg.path:
                continue  # a glob's match like _SUCCESS or .crc: another tool's marker, not a part
            parts.append(Part(url=url, format=part_format(url, cfg.format)))
        else:
            raise ManifestError(f"manifest {url} does not exist; check manifest.path")
    return parts


def _looks_like_part(name: str, fmt: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base.startswith((".", "_")):
        return False
    try:
        part_format(base, fmt if fmt != "auto" else "auto")
    except ManifestError:
        return False
    return True


def _unstrip(fs: Any, url: str, path: str) -> str:
    return fs.unstrip_protocol(path) if "://" in url else path


# ---------------------------------------------------------------------------------------------
# Raw records of one part: (byte offset where the record starts, or -1; the record as a dict)


def _open(url: str, compression: str | None = "infer"):
    import fsspec

    return fsspec.open(url, "rb", compression=compression).open()


def _seekable(url: str) -> bool:
    return not url.lower().endswith(".gz")


def _jsonl_records(part: Part, offset: int) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open(part.url) as f:
        if offset > 0:
            f.seek(offset)
        for at, record in read_objects(_at_offsets(f, max(offset, 0)),
                                       lambda at: f"manifest part {part.url}, the line at byte {at}", ManifestError):
            yield (at if _seekable(part.url) else -1), record


def _at_offsets(f, start: int) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` of the lines of a binary stream read from ``start``."""
    pos = start
    for line in f:
        yield pos, line
        pos += len(line)


def _csv_frame(part: Part, skip: int = 0, nrows: int | None = None):
    import pandas as pd

    with _open(part.url) as f:
        # Only an empty cell is missing ("NA" or "null" stay text).
        df = pd.read_csv(f, dtype={"key": str}, keep_default_na=False, na_values=[""],
                         skiprows=range(1, skip + 1) if skip else None, nrows=nrows)
    # Nullable dtypes keep an integer column integral where some rows are empty.
    return df.convert_dtypes()


def _table_records(frame) -> Iterator[tuple[int, dict[str, Any]]]:
    columns = list(frame.columns)
    for values in frame.itertuples(index=False, name=None):
        yield -1, dict(zip(columns, values))


def _parquet_records(part: Part, first_row: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    with _open(part.url, None) as f:
        pf = pq.ParquetFile(f)
        meta = pf.metadata
        start_group, row_at = 0, 0
        while start_group < meta.num_row_groups and row_at + meta.row_group(start_group).num_rows <= first_row:
            row_at += meta.row_group(start_group).num_rows
            start_group += 1
        skip = first_row - row_at
        for group in range(start_group, meta.num_row_groups):
            for batch in pf.iter_batches(row_groups=[group], batch_size=4096):
                for record in batch.to_pylist():
                    if skip:
                        skip -= 1
                        continue
                    yield -1, record


def _wds_records(part: Part, offset: int, cfg: ManifestConfig,
                 read_clips: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """video2dataset samples as records: key, path (the tar), member (the clip's bytes when
    ``read_clips``, else b""), text, and the json's fields with ``source_member`` naming the mp4."""
    from shards.format import split_member

    json_field = cfg.subtitle_field[5:] if cfg.subtitle_field.startswith("json:") else None
    text_ext = None if json_field else cfg.subtitle_field
    keep = {"json", text_ext} | ({"mp4"} if read_clips else set())

    def record(key: str, at: int, members: dict[str, Any], names: dict[str, str]) -> tuple[int, dict[str, Any]]:
        where = f"manifest part {part.url}, sample {key!r}"
        meta = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ManifestError(f"{where}: the json member is not JSON ({exc})") from exc
        if "mp4" not in members:
            raise ManifestError(f"{where}: no mp4 member (members: {sorted(members)}); curation reads the "
                                "video from <key>.mp4")
        if json_field is not None:
            text = meta.get(json_field)
        else:
            text = members[text_ext].decode("utf-8", "replace") if members.get(text_ext) else None
        extra = {k: v for k, v in meta.items() if k not in ("key", json_field) and k not in RESERVED + REQUIRED + SPAN}
        return at, {**extra, "source_member": names["mp4"], "key": key.rsplit("/", 1)[-1], "path": part.url,
                    "member": members["mp4"] or b"", "text": text if isinstance(text, str) else ""}

    with _open(part.url, None) as f:
        if offset > 0:
            f.seek(offset)
        with tarfile.open(fileobj=f, mode="r|") as tar:
            key, at, members, names = None, -1, {}, {}
            for info in tar:
                parts = split_member(info.name) if info.isfile() else None
                if parts is None:
                    continue
                name, ext = parts
                if name != key:
                    if key is not None:
                        yield record(key, at, members, names)
                    key, at, members, names = name, max(offset, 0) + info.offset, {}, {}
                # A clip's bytes are read only by the shard worker that processes it.
                members[ext] = tar.extractfile(info).read() if ext in keep else None
                names[ext] = info.name
            if key is not None:
                yield record(key, at, members, names)


def _records(part: Part, cfg: ManifestConfig, first_row: int = 0, offset: int = 0, read_clips: bool = False):
    if part.format == "jsonl":
        return _jsonl_records(part, offset)
    if part.format == "csv":
        return _table_records(_csv_frame(part, skip=first_row))
    if part.format == "parquet":
        return _parquet_records(part, first_row)
    return _wds_records(part, offset, cfg, read_clips)


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


def normalise_record(record: dict[str, Any], cfg: ManifestConfig, part: Part, index: int) -> dict[str, Any]:
    """One manifest record as a pipeline row (``key``, ``path``, ``member``, span, ``text``, ``extra``).

    Raises:
        ManifestError: naming the part, the row within it and the column.
    """
    where = f"manifest part {part.url}, row {index}"
    if cfg.rename and part.format != "wds":
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
    clash = [c for c in RESERVED if c in record and not (c == "member" and part.format == "wds")]
    if clash:
        raise ManifestError(f"{where}: column(s) {clash} are reserved for pipeline output; rename them")
    key = _plain(record["key"])
    if not isinstance(key, str) or not key:
        raise ManifestError(f"{where}, column 'key': empty key {key!r}")
    if "." in key or "/" in key or "\\" in key:
        raise ManifestError(f"{where}, column 'key': key {key!r} contains '.', '/' or '\\'; WebDataset splits "
                            "keys there, so replace them (e.g. with '_')")
    path = _plain(record["path"])
    if not isinstance(path, str) or not path.strip():
        raise ManifestError(f"{where}, column 'path': empty path {path!r}")
    text = _plain(record["text"])
    extra = {c: _plain(v) for c, v in record.items() if c not in REQUIRED + SPAN + ("member",)}
    return {"key": key, "path": path, "member": record.get("member") or b"",
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


def _digest(part: Part) -> str:
    import fsspec

    if part.format == "wds":
        # Clip tars are large and immutable: name, size and modification identify them.
        fs, path = fsspec.core.url_to_fs(part.url)
        info = fs.info(path)
        ident = [part.url, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))]
        return hashlib.blake2b(json.dumps(ident).encode(), digest_size=16).hexdigest()
    h = hashlib.blake2b(digest_size=16)
    with _open(part.url, None) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scan_part(part: Part, cfg: ManifestConfig) -> PartScan:
    """Validate every row of ``part``; count, digest and index it. Raises ManifestError on a bad row."""
    offsets: list[int] = []
    hashes: list[int] = []
    try:
        for i, (at, record) in enumerate(_records(part, cfg)):
            row = normalise_record(record, cfg, part, i)
            if i % CHECKPOINT_EVERY == 0:
                offsets.append(at)
            hashes.append(key_hash(row["key"]))
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
                    checkpoints=np.asarray(offsets, dtype=np.int64), keys=np.asarray(hashes, dtype=np.uint64))


def read_rows(part: Part, cfg: ManifestConfig, start: int, end: int, checkpoints: np.ndarray,
              first_row: int, shard: int) -> Iterator[dict[str, Any]]:
    """Rows ``[start, end)`` of ``part`` as pipeline rows (``OUTPUTS``), global row numbers from ``first_row``.

    Seeks to the nearest recorded row at or before ``start`` where the format allows (jsonl, tar),
    or to the row group (parquet); reads from the top otherwise (gzip parts, csv). Video2dataset
    rows carry their clip's bytes in ``member``.
    """
    cp = start // CHECKPOINT_EVERY
    offset = int(checkpoints[cp]) if len(checkpoints) > cp else -1
    skip_to = cp * CHECKPOINT_EVERY if offset >= 0 else 0
    if part.format in ("parquet", "csv"):
        records, index = _records(part, cfg, first_row=start), start
    else:
        records, index = _records(part, cfg, offset=max(offset, 0), read_clips=True), skip_to
    for _, record in records:
        if index >= end:
            break
        if index >= start:
            row = normalise_record(record, cfg, part, index)
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

