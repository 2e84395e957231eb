"""Read, validate and partition a clip manifest (the pipeline's reader).

A manifest is a parquet, csv or jsonl table, local or at any fsspec URL, with columns ``key``,
``path``, ``text`` (the subtitle) and optional ``start``/``end`` seconds of the clip inside a longer
video. ``ManifestConfig.rename`` maps other column names onto these (``{"video": "path"}``). Every
other column is carried through to each sample's metadata unchanged.

Validation runs before any work and fails fast, naming the row and column: missing columns,
empty manifest, empty or duplicate keys, keys with a dot or slash (WebDataset splits sample keys
at the first dot and treats slashes as folders), empty paths, non-numeric spans. Per-row problems
that only show up when the clip is read (a missing file, empty text) are not errors here: they
become failed rows downstream.

Partitioning is by position: input shard ``i`` holds manifest rows ``[i*S, (i+1)*S)``, so shard
names never change between runs of the same manifest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

REQUIRED = ("key", "path", "text")
SPAN = ("start", "end")
# Columns the pipeline itself adds; a manifest may not use them for passthrough data.
RESERVED = ("shard", "row", "status", "error", "extra", "jpg", "mp4", "clip", "caption", "caption_info")

# What the reader hands the first stage (STYLE: every stage names what it reads and writes).
OUTPUTS = ("key", "path", "start", "end", "text", "extra", "shard", "row", "status", "error")


@dataclasses.dataclass(kw_only=True, frozen=True)
class ManifestConfig:
    """Where the manifest is and how its columns map onto ``key``/``path``/``text``/``start``/``end``."""

    path: str = ""
    format: str = "auto"  # auto (by suffix) | parquet | csv | jsonl
    rename: dict[str, str] = dataclasses.field(default_factory=dict)  # source column -> canonical name


class ManifestError(ValueError):
    """The manifest cannot be processed; the message names the row, column and fix."""


def _format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.lower().removesuffix(".gz")
    for suffix, kind in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if name.endswith(suffix):
            return kind
    raise ManifestError(f"manifest {path}: cannot tell the format from the name; set manifest.format to parquet, csv or jsonl")


def read_manifest(cfg: ManifestConfig) -> pd.DataFrame:
    """Read the manifest table as is (any columns), through fsspec."""
    import fsspec

    if not cfg.path:
        raise ManifestError("manifest.path is empty; point it at a parquet, csv or jsonl manifest")
    kind = _format(cfg.path, cfg.format)
    if kind not in ("parquet", "csv", "jsonl"):
        raise ManifestError(f"manifest.format={kind!r} is unknown; use parquet, csv or jsonl")
    try:
        with fsspec.open(cfg.path, "rb", compression="infer") as f:
            if kind == "parquet":
                return pd.read_parquet(f)
            if kind == "csv":
                return pd.read_csv(f, dtype={"key": str}, keep_default_na=False, na_values={"start": [""], "end": [""]})
            return pd.read_json(f, lines=True, dtype={"key": str})
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {cfg.path} does not exist") from exc


def normalise(df: pd.DataFrame, cfg: ManifestConfig) -> pd.DataFrame:
    """Rename columns, validate, and pack passthrough columns into one JSON ``extra`` column.

    Raises:
        ManifestError: on the first problem found, naming row and column.
    """
    where = cfg.path or "manifest"
    unknown = sorted(set(cfg.rename) - set(df.columns))
    if unknown:
        raise ManifestError(f"{where}: manifest.rename names column(s) {unknown} that the manifest lacks; "
                            f"its columns are {list(df.columns)}")
    df = df.rename(columns=cfg.rename)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}; columns are {list(df.columns)}. "
                            f"Map yours with manifest.rename, e.g. {{\"video\": \"path\"}}")
    clash = [c for c in RESERVED if c in df.columns]
    if clash:
        raise ManifestError(f"{where}: column(s) {clash} are reserved for pipeline output; rename them")
    if len(df) == 0:
        raise ManifestError(f"{where}: the manifest has no rows")
    df = df.reset_index(drop=True)
    _check_keys(df, where)
    paths = df["path"]
    for i, p in enumerate(paths):
        if not isinstance(p, str) or not p.strip():
            raise ManifestError(f"{where}: row {i}, column 'path': empty path {p!r}")
    out = pd.DataFrame({"key": df["key"].astype(str), "path": paths.astype(str)})
    for col in SPAN:
        out[col] = _span_column(df, col, where)
    out["text"] = [t if isinstance(t, str) else "" for t in df["text"]]
    extras = [c for c in df.columns if c not in REQUIRED + SPAN]
    out["extra"] = [json.dumps({c: _plain(df.at[i, c]) for c in extras}) for i in range(len(df))]
    return out


def _check_keys(df: pd.DataFrame, where: str) -> None:
    seen: dict[str, int] = {}
    for i, key in enumerate(df["key"]):
        if not isinstance(key, str) or not key:
            raise ManifestError(f"{where}: row {i}, column 'key': empty key {key!r}")
        if "." in key or "/" in key or "\\" in key:
            raise ManifestError(f"{where}: row {i}, column 'key': key {key!r} contains '.', '/' or '\\'; "
                                "WebDataset splits keys there, so replace them (e.g. with '_')")
        if key in seen:
            raise ManifestError(f"{where}: row {i}, column 'key': duplicate key {key!r} (first in row {seen[key]}); "
                                "keys must be unique")
        seen[key] = i


def _span_column(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    values = np.full(len(df), np.nan)
    for i, v in enumerate(df[col]):
        if v is None or (isinstance(v, str) and v.strip() == ""):
            continue
        try:
            values[i] = float(v)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: row {i}, column {col!r}: {v!r} is not a number of seconds") from exc
    return values


def _plain(v: Any) -> Any:
    """A JSON-ready value (numpy scalars and NaN become plain Python)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (np.ndarray, list, tuple)):
        return [_plain(x) for x in v]
    return v


def partition(df: pd.DataFrame, samples_per_shard: int) -> pd.DataFrame:
    """Add ``row`` (manifest position), ``shard`` (row // S) and the initial ``status``/``error``."""
    if samples_per_shard < 1:
        raise ValueError(f"writer.samples_per_shard={samples_per_shard} must be >= 1")
    df = df.copy()
    df["row"] = np.arange(len(df), dtype=np.int64)
    df["shard"] = df["row"] // samples_per_shard
    df["status"] = "ok"
    df["error"] = ""
    return df


def load_manifest(cfg: ManifestConfig, samples_per_shard: int) -> pd.DataFrame:
    """Read, validate and partition: the reader's whole job. Columns are ``OUTPUTS``."""
    df = partition(normalise(read_manifest(cfg), cfg), samples_per_shard)
    logger.info("manifest %s: %d rows in %d shard(s)", cfg.path, len(df), int(df["shard"].max()) + 1)
    return df[list(OUTPUTS)]
