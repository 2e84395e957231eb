"""What an embedding run reads: curated shard tars (with each member's byte range) or a video manifest.

A curated shard yields its samples with the clip bytes to decode and where the clip (``mp4``) and
its middle frame (``jpg``) lie inside the tar, which the server later streams by byte range. A
video manifest (the curation's manifest format: ``key``, ``path``, optional ``start``/``end``,
``text`` and any other column) is read through the curation's planner and row reader, so it gets
the same validation (unique keys, well-formed spans) and the same row numbering.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from shards import format as fmt


def tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """Samples of one curated tar, in order: ``{"key", "mp4": bytes, "subtitle", "caption", "meta",
    "mp4_offset", "mp4_size", "jpg_offset", "jpg_size", ...}``. A damaged tar raises
    ``fmt.ShardReadError`` (after its last, incomplete sample)."""
    for sample in fmt.iter_tar_samples(url, wanted=lambda ext: ext != fmt.JPG, offsets=True):
        mp4_at = sample["__offsets__"].get(fmt.MP4, (None, None))
        jpg_at = sample["__offsets__"].get(fmt.JPG, (None, None))
        meta = json.loads(sample[fmt.META]) if sample.get(fmt.META) else {}
        yield {"key": sample["__key__"], "mp4": sample.get(fmt.MP4), "subtitle": _text(sample, fmt.SUBTITLE),
               "caption": _text(sample, fmt.CAPTION), "meta": meta, "start": meta.get("start"),
               "end": meta.get("end"), "duration": meta.get("duration"), "path": meta.get("path"),
               "mp4_offset": mp4_at[0], "mp4_size": mp4_at[1], "jpg_offset": jpg_at[0], "jpg_size": jpg_at[1]}


def _text(sample: dict[str, Any], ext: str) -> str:
    return sample[ext].decode("utf-8", "replace").strip() if sample.get(ext) is not None else ""


def manifest_rows(slices: list[Any], manifest_cfg: Any, unit: int, base_dir: str) -> Iterator[dict[str, Any]]:
    """Rows of one manifest unit (its ``pipeline.plan`` slices), with absolute local paths."""
    import ray

    from pipeline.manifest import read_rows, resolve_local

    for sl in slices:
        checkpoints = ray.get(sl.checkpoints) if isinstance(sl.checkpoints, ray.ObjectRef) else sl.checkpoints
        for row in read_rows(sl.part, manifest_cfg, sl.start, sl.end, checkpoints, sl.first_row, unit):
            extra = row.get("extra") or {}
            extra = json.loads(extra) if isinstance(extra, str) else dict(extra)
            start, end = row.get("start"), row.get("end")
            duration = round(end - start, 6) if start is not None and end is not None else None
            yield {"key": row["key"], "path": resolve_local(row["path"], base_dir), "start": start, "end": end,
                   "duration": duration, "subtitle": (row.get("text") or "").strip(), "caption": "",
                   "meta": {**extra, "path": row["path"], "start": start, "end": end, "duration": duration}}
