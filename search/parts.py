"""The embedding parts: one contract shared by the embed job (writer), the index and dedup (readers).

An embedding run is a folder holding, for input unit ``i`` (the i-th shard tar of the input, or
rows ``[i*R, (i+1)*R)`` of a video manifest)::

    embed-{i:06d}.parquet        one row per embedded clip (columns below)
    embed-{i:06d}_stats.json     written last; its presence means the part is complete

and ``_run.json`` (the run's fingerprint: model, frame sampling, texts, input set), plus
``_summary.json`` at the end. Every key appears in exactly one part.

Columns: ``key``; ``vector`` (float16 [E], unit norm before the cast); ``subtitle_vector`` and
``caption_vector`` (float16 [E], present when the run embeds those texts); ``model_id``;
``subtitle`` and ``caption`` text; ``start``/``end``/``duration`` seconds; ``path`` (the source
video); ``shard`` (the tar URL for shard input, else null) and ``mp4_offset``/``mp4_size``/
``jpg_offset``/``jpg_size`` (where the clip and its middle frame lie inside that tar, for byte-range
serving); ``meta`` (every metadata field as JSON, manifest columns included).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from common.errors import UserError

PREFIX = "embed"
VECTOR, TEXT_VECTORS = "vector", ("subtitle_vector", "caption_vector")
TEXT_FIELDS = ("subtitle", "caption")  # what ``texts`` may name
STRING_COLUMNS = ("key", "model_id", "subtitle", "caption", "path", "shard", "meta")
FLOAT_COLUMNS = ("start", "end", "duration")
INT_COLUMNS = ("mp4_offset", "mp4_size", "jpg_offset", "jpg_size")
METADATA_COLUMNS = ("key", "subtitle", "caption", *FLOAT_COLUMNS, "path", "shard", *INT_COLUMNS, "meta")


def part_name(i: int) -> str:
    return f"{PREFIX}-{i:06d}"


def schema(dim: int, texts: Iterable[str] = ()):
    """The Arrow schema of a part: vectors as fixed-size lists of float16."""
    import pyarrow as pa

    vec = pa.list_(pa.float16(), dim)
    fields = [pa.field("key", pa.string()), pa.field(VECTOR, vec)]
    fields += [pa.field(f"{t}_vector", vec) for t in texts]
    fields += [pa.field(c, pa.string()) for c in STRING_COLUMNS if c != "key"]
    fields += [pa.field(c, pa.float64()) for c in FLOAT_COLUMNS]
    fields += [pa.field(c, pa.int64()) for c in INT_COLUMNS]
    return pa.schema(fields)


def vector_array(vectors: np.ndarray):
    """float [N, E] -> an Arrow fixed-size-list array of float16."""
    import pyarrow as pa

    v = np.ascontiguousarray(vectors, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), type=pa.float16()), v.shape[1])


def to_numpy(column) -> np.ndarray:
    """An Arrow fixed-size-list column -> float16 numpy [N, E] (no copy where Arrow allows)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def build_table(rows: list[dict[str, Any]], vectors: np.ndarray, text_vectors: dict[str, np.ndarray],
                model_id: str, dim: int):
    """The Arrow table of one part from metadata rows and their vectors (row order kept)."""
    import pyarrow as pa

    sch = schema(dim, [name.removesuffix("_vector") for name in text_vectors])
    cols: dict[str, Any] = {"key": pa.array([r["key"] for r in rows], pa.string()), VECTOR: vector_array(vectors)}
    for name, v in text_vectors.items():
        cols[name] = vector_array(v)
    for c in STRING_COLUMNS:
        if c == "key":
            continue
        if c == "model_id":
            cols[c] = pa.array([model_id] * len(rows), pa.string())
        elif c == "meta":
            cols[c] = pa.array([json.dumps(r.get("meta") or {}, sort_keys=True, default=str) for r in rows], pa.string())
        else:
            cols[c] = pa.array([r.get(c) for r in rows], pa.string())
    for c in FLOAT_COLUMNS:
        cols[c] = pa.array([r.get(c) for r in rows], pa.float64())
    for c in INT_COLUMNS:
        cols[c] = pa.array([r.get(c) for r in rows], pa.int64())
    if not rows:
        return sch.empty_table()
    return pa.table([cols[f.name] for f in sch], schema=sch)


def complete_parts(embeddings: str) -> dict[str, int]:
    """Part name -> rows, for every part of the embedding run in ``embeddings`` whose marker exists,
    in part order; a folder holding no embedding run is refused naming it."""
    from pipeline.writer import ShardWriterConfig, finished_shards, read_json
    from shards import format as fmt

    root = embeddings.rstrip("/")
    if read_json(f"{root}/{fmt.RUN_FILE}") is None:
        raise UserError(f"--embeddings {embeddings} holds no embedding run ({fmt.RUN_FILE} is missing); give the "
                        "output folder of clipvip embed")
    done = finished_shards(ShardWriterConfig(output_dir=root, prefix=PREFIX), range(10**7))
    return {part_name(i): st.samples for i, st in sorted(done.items())}


def read_parts(embeddings: str, names: list[str]):
    """The Arrow table of the parts ``names`` with a ``part`` column (row order: part order, then row
    order within each part)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = embeddings.rstrip("/")
    tables = []
    for name in names:
        t = pq.read_table(f"{root}/{name}.parquet")
        tables.append(t.append_column("part", pa.array([name] * t.num_rows, pa.string())))
    return pa.concat_tables(tables, promote_options="default") if tables else None
