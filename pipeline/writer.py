"""WebDataset shards, their status tables and completion markers (the pipeline's writer).

Shard format (read by the CLIP-ViP trainer; keep in sync with it)
-----------------------------------------------------------------
Input shard ``i`` (manifest rows ``[i*S, (i+1)*S)``) produces, in ``output_dir``::

    {prefix}-{i:06d}.tar          WebDataset tar: one sample per successfully processed row
    {prefix}-{i:06d}.parquet      one row per input row: key, row, status ("ok"|"failed"), error
    {prefix}-{i:06d}_stats.json   written last; its presence means the shard is complete

Each sample in a tar is five consecutive members named ``<key>.<ext>`` (``__key__`` is the
manifest key, which never holds a dot or slash), in manifest order:

    mp4           the clip span re-encoded for training: H.264, ``fps`` frames/s, short side <= 240
    jpg           the middle frame (the frame on screen at (start+end)/2), short side <= 480
    subtitle.txt  the manifest ``text`` (UTF-8)
    caption.txt   the caption of the middle frame; empty when the caption stage is off
    json          metadata: key, path, start, end (seconds in the source), middle_time, src_fps,
                  src_width, src_height, fps, width, height, n_frames (of the mp4), duration,
                  caption ({"model": ..., "settings": ..., ...} or {"model": ""} when off), and
                  every extra manifest column (e.g. caption_gt, color, shape, direction) verbatim;
                  one whose name collides with a field above is stored as ``manifest_<name>``

After the whole run: ``_summary.json`` (counts by status, shards, config) and ``sizes.json``
(``{"<prefix>-000000.tar": n_samples, ...}``, the WebDataset convention).

Every file is written to a temporary name and renamed into place, so a killed run never leaves a
partial file under a final name. A rerun deletes a shard's ``_stats.json`` before rewriting it,
so a shard is either complete (marker present) or redone.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import tarfile
import time
import uuid
from typing import Any, Iterable

import fsspec
import pandas as pd

logger = logging.getLogger(__name__)

# What the writer reads from each row.
INPUTS = ("key", "path", "text", "extra", "shard", "row", "status", "error", "jpg", "mp4", "clip", "caption",
          "caption_info")
TMP_MARK = ".tmp-"


@dataclasses.dataclass(kw_only=True, frozen=True)
class ShardWriterConfig:
    """Where shards go, how they are named and how many input rows each holds."""

    output_dir: str = "runs/curate/shards"
    prefix: str = "shard"
    samples_per_shard: int = 1000
    retry_failed: bool = False  # rerun also redoes finished shards that hold failed rows


def shard_name(prefix: str, shard: int) -> str:
    """``{prefix}-{shard:06d}``: stable across runs because shards are manifest positions."""
    return f"{prefix}-{shard:06d}"


def shard_paths(cfg: ShardWriterConfig, shard: int) -> dict[str, str]:
    """The tar, parquet and stats paths of one shard."""
    base = f"{cfg.output_dir.rstrip('/')}/{shard_name(cfg.prefix, shard)}"
    return {"tar": f"{base}.tar", "parquet": f"{base}.parquet", "stats": f"{base}_stats.json"}


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it to ``path``."""
    fs, p = _fs(path)
    tmp = f"{p}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, p)


def read_json(path: str) -> dict[str, Any] | None:
    fs, p = _fs(path)
    if not fs.exists(p):
        return None
    with fs.open(p, "rb") as f:
        return json.loads(f.read())


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Collects the rows of one input shard, then writes tar, parquet and stats (in that order).

    Rows may arrive in any order; ``close`` sorts them by manifest position so a shard's bytes do
    not depend on scheduling.
    """

    def __init__(self, cfg: ShardWriterConfig, shard: int, expected: int):
        self.cfg, self.shard, self.expected = cfg, shard, expected
        self.rows: list[dict[str, Any]] = []
        self.started = time.time()

    @property
    def complete(self) -> bool:
        return len(self.rows) >= self.expected

    def write(self, row: dict[str, Any]) -> None:
        """Add one processed row (any status)."""
        assert int(row["shard"]) == self.shard, f"row {row['key']} of shard {row['shard']} sent to shard {self.shard}"
        self.rows.append(row)

    def close(self) -> dict[str, Any]:
        """Write the shard's files atomically, the stats marker last; return the stats."""
        assert self.complete, f"shard {self.shard}: closing with {len(self.rows)} of {self.expected} rows"
        paths = shard_paths(self.cfg, self.shard)
        rows = sorted(self.rows, key=lambda r: int(r["row"]))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for r in rows:
                if r["status"] == "ok":
                    for ext, data in sample_members(r):
                        _tar_member(tar, f"{r['key']}.{ext}", data)
        write_atomic(paths["tar"], buf.getvalue())
        table = pd.DataFrame({"key": [r["key"] for r in rows], "row": [int(r["row"]) for r in rows],
                              "status": [r["status"] for r in rows], "error": [r["error"] for r in rows]})
        pbuf = io.BytesIO()
        table.to_parquet(pbuf, index=False)
        write_atomic(paths["parquet"], pbuf.getvalue())
        counts = table["status"].value_counts().to_dict()
        stats = {
            "shard": self.shard, "name": shard_name(self.cfg.prefix, self.shard), "rows": len(rows),
            "counts": {k: int(v) for k, v in counts.items()}, "samples": int(counts.get("ok", 0)),
            "timings": {"decode_s": round(sum(float(r.get("decode_s") or 0) for r in rows), 4),
                        "caption_s": round(sum(float(r.get("caption_s") or 0) for r in rows), 4),
                        "shard_wall_s": round(time.time() - self.started, 4)},
            "written_at": time.time(),
        }
        write_atomic(paths["stats"], json.dumps(stats, indent=1).encode())
        return stats


def sample_members(row: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The five tar members of one sample, in a fixed order."""
    clip = json.loads(row["clip"]) if row.get("clip") else {}
    caption_info = json.loads(row["caption_info"]) if row.get("caption_info") else {"model": ""}
    meta = {"key": row["key"], "path": row["path"], **clip,
            "duration": round(clip["end"] - clip["start"], 6) if clip else None, "caption": caption_info}
    # Manifest columns pass through; one that collides with a pipeline field keeps a prefix.
    for name, value in json.loads(row.get("extra") or "{}").items():
        meta[f"manifest_{name}" if name in meta else name] = value
    return [("mp4", bytes(row["mp4"])), ("jpg", bytes(row["jpg"])), ("subtitle.txt", row["text"].encode()),
            ("caption.txt", (row.get("caption") or "").encode()),
            ("json", json.dumps(meta, sort_keys=True).encode())]


def finished_shards(cfg: ShardWriterConfig, shards: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Stats of the shards that are complete (their ``_stats.json`` exists)."""
    fs, root = _fs(cfg.output_dir)
    if not fs.exists(root):
        return {}
    present = {p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    out = {}
    for s in shards:
        if f"{shard_name(cfg.prefix, s)}_stats.json" in present:
            stats = read_json(shard_paths(cfg, s)["stats"])
            if stats is not None:
                out[s] = stats
    return out


def reopen_shard(cfg: ShardWriterConfig, shard: int) -> None:
    """Mark a finished shard unfinished before redoing it (the marker goes first)."""
    fs, p = _fs(shard_paths(cfg, shard)["stats"])
    if fs.exists(p):
        fs.rm(p)


def remove_stale_temp_files(cfg: ShardWriterConfig) -> int:
    """Delete temporary files a killed run left behind (never visible under final names)."""
    fs, root = _fs(cfg.output_dir)
    if not fs.exists(root):
        fs.makedirs(root, exist_ok=True)
        return 0
    stale = [p for p in fs.ls(root, detail=False) if TMP_MARK in p.rsplit("/", 1)[-1]]
    for p in stale:
        fs.rm(p)
    return len(stale)


def write_summary(cfg: ShardWriterConfig, n_shards: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``_summary.json`` (counts over all shards) and ``sizes.json`` (tar name -> samples)."""
    stats = finished_shards(cfg, range(n_shards))
    counts: dict[str, int] = {}
    for st in stats.values():
        for k, v in st["counts"].items():
            counts[k] = counts.get(k, 0) + int(v)
    sizes = {f"{shard_name(cfg.prefix, s)}.tar": stats[s]["samples"] for s in sorted(stats)}
    summary = {"shards": n_shards, "shards_complete": len(stats), "rows": sum(counts.values()),
               "samples": sum(sizes.values()), "counts": counts, **(extra or {})}
    base = cfg.output_dir.rstrip("/")
    write_atomic(f"{base}/sizes.json", json.dumps(sizes, indent=1).encode())
    write_atomic(f"{base}/_summary.json", json.dumps(summary, indent=1, default=str).encode())
    return summary
