"""What an embedding run reads: curated shard tars (with each member's byte range) or a video manifest.

A curated shard yields its samples with the clip bytes to decode and where the clip (``mp4``) and
its middle frame (``jpg``) lie inside the tar, which the server later streams by byte range. A
video manifest (the curation's manifest format: ``key``, ``path``, optional ``start``/``end``,
``text`` and any other column) is read through the curation's planner and row reader, so it gets
the same validation (unique keys, well-formed spans) and the same row numbering.
"""

from __future__ import annotations

import json
import tarfile
from typing import Any, Iterator

from shards import format as fmt


def tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """Samples of one curated tar, in order: ``{"key", "mp4": bytes, "subtitle", "caption", "meta",
    "mp4_offset", "mp4_size", "jpg_offset", "jpg_size"}``. A damaged tar raises ``fmt.ShardReadError``."""
    current: dict[str, Any] | None = None
    try:
        with fmt.open_url(url) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                parts = fmt.split_member(info.name) if info.isfile() else None
                if parts is None:
                    continue
                key, ext = parts
                if current is None or current["key"] != key:
                    if current is not None:
                        yield _finish(current)
                    current = {"key": key, "members": {}}
                data = tar.extractfile(info).read()
                current["members"][ext] = data
                if ext in (fmt.MP4, fmt.JPG):
                    current[f"{ext}_offset"], current[f"{ext}_size"] = int(info.offset_data), int(info.size)
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise fmt.ShardReadError(url, exc) from exc
    if current is not None:
        yield _finish(current)


def _finish(sample: dict[str, Any]) -> dict[str, Any]:
    members = sample.pop("members")

    def text(ext: str) -> str:
        return members[ext].decode("utf-8", "replace").strip() if members.get(ext) is not None else ""

    meta = json.loads(members[fmt.META]) if members.get(fmt.META) else {}
    sample.update(mp4=members.get(fmt.MP4), subtitle=text(fmt.SUBTITLE), caption=text(fmt.CAPTION), meta=meta,
                  start=meta.get("start"), end=meta.get("end"), duration=meta.get("duration"),
                  path=meta.get("path"))
    return sample


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
