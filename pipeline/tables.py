"""Records of the table formats of a manifest part: jsonl (optionally gzipped), csv and parquet.

Each reader yields ``(offset, record)``: the byte offset where the record starts (jsonl, when the
file can seek) or -1, and the record as a dict of column values. jsonl resumes from a byte offset,
csv and parquet from a row number (parquet skips whole row groups first).
"""

from __future__ import annotations

from typing import Any, Iterator

from common.jsonl import read_objects
from pipeline.errors import ManifestError


def open_part(url: str, compression: str | None = "infer") -> Any:
    """The part's bytes as a file (any fsspec URL; ``compression`` "infer" unpacks ``.gz``)."""
    import fsspec

    return fsspec.open(url, "rb", compression=compression).open()


def _seekable(url: str) -> bool:
    return not url.lower().endswith(".gz")


def _jsonl_records(url: str, offset: int) -> Iterator[tuple[int, dict[str, Any]]]:
    with open_part(url) as f:
        if offset > 0:
            f.seek(offset)
        for at, record in read_objects(_at_offsets(f, max(offset, 0)),
                                       lambda at: f"manifest part {url}, the line at byte {at}", ManifestError):
            yield (at if _seekable(url) else -1), record


def _at_offsets(f, start: int) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` of the lines of a binary stream read from ``start``."""
    pos = start
    for line in f:
        yield pos, line
        pos += len(line)


def _csv_frame(url: str, skip: int = 0, nrows: int | None = None):
    import pandas as pd

    with open_part(url) as f:
        # Only an empty cell is missing ("NA" or "null" stay text).
        df = pd.read_csv(f, dtype={"key": str}, keep_default_na=False, na_values=[""],
                         skiprows=range(1, skip + 1) if skip else None, nrows=nrows)
    # Nullable dtypes keep an integer column integral where some rows are empty.
    return df.convert_dtypes()


def _rows_of(frame) -> Iterator[tuple[int, dict[str, Any]]]:
    columns = list(frame.columns)
    for values in frame.itertuples(index=False, name=None):
        yield -1, dict(zip(columns, values))


def _parquet_records(url: str, first_row: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    with open_part(url, None) as f:
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


def table_records(url: str, fmt: str, first_row: int = 0, offset: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset where the record starts, or -1; the record) of a jsonl, csv or parquet part,
    from ``first_row`` (csv, parquet) or from byte ``offset`` (jsonl)."""
    if fmt == "jsonl":
        return _jsonl_records(url, offset)
    if fmt == "csv":
        return _rows_of(_csv_frame(url, skip=first_row))
    return _parquet_records(url, first_row)
