"""Shard files, run files and completion markers (the pipeline's writer; runs on the workers).

The layout and member names are the shared shard format (``shards/format.py``). This module adds
how they reach storage so that a shard is all-or-nothing:

- Local folders: each file is written under a temporary name (``.tmp-`` in it) in the output
  folder and renamed into place, which is atomic.
- Object stores (``s3://``, ``gs://``, ...): there is no rename (``mv`` is copy + delete). Each
  file is built in a local temporary file and uploaded once under its final name; an object
  appears whole or not at all (a multipart upload is only visible once completed).

Either way the shard's ``_stats.json`` is written last: it is the completion marker. A shard
without it is unfinished, whatever else of it exists, and is redone (overwritten) by the next run.
A rerun that reopens a finished shard (``retry_failed``) deletes the marker first.

``ShardWriter`` streams samples into the tar as they are ready, so a worker holds at most a few
rows' bytes, never a whole shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from typing import Any, Iterable, NamedTuple

import fsspec

from pipeline.record import ClipRecord
from shards import format as fmt

logger = logging.getLogger(__name__)

TMP_MARK = fmt.TMP_MARK


@dataclasses.dataclass(kw_only=True, frozen=True)
class ShardWriterConfig:
    """Where shards go, how they are named and how many input rows each holds."""

    output_dir: str = "runs/curate/shards"  # local folder or any fsspec URL
    prefix: str = "shard"
    samples_per_shard: int = 1000
    retry_failed: bool = False  # rerun also redoes finished shards that hold failed rows
    overwrite: bool = False  # delete an earlier, different run's files in output_dir before starting
    num_cpus: float = 1.0  # per shard task (it reads rows, runs the decode child and writes)
    # Custom Ray resources a node must offer to run shard tasks, e.g. {"curate_writer": 1}.
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    max_in_flight: int = 0  # shard tasks submitted at once; 0: twice the slots the cluster has

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"writer.samples_per_shard={self.samples_per_shard} must be >= 1")
        if not self.prefix or "/" in self.prefix:
            raise ValueError(f"writer.prefix={self.prefix!r} must be a non-empty name without '/'")


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    # No listings cache: shard tasks in other processes write this folder while the driver lists
    # it, and a cached listing (s3fs, gcsfs) would hide their files for the life of the process.
    return fsspec.core.url_to_fs(path, use_listings_cache=False)


def is_local(path: str) -> bool:
    fs, _ = _fs(path)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def put_file(local_path: str, path: str) -> None:
    """Move a finished local file to ``path``: a rename on local storage, one upload elsewhere."""
    fs, p = _fs(path)
    if is_local(path):
        fs.makedirs(os.path.dirname(p), exist_ok=True)
        os.replace(local_path, p)  # atomic within one file system
    else:
        fs.put_file(local_path, p)
        os.unlink(local_path)


def local_temp(path: str, scratch: str = "") -> str:
    """Where to build a file bound for ``path``: beside it when local (same file system, so the
    rename is atomic), else in ``scratch`` (this run's local temporary folder, see
    :func:`scratch_dir`) or the local temporary folder. The name starts with the final file's
    name, so a retry can find and remove what an earlier attempt left."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    if is_local(path):
        _, p = _fs(path)
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
        return f"{p}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    if scratch:
        os.makedirs(scratch, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{base}{TMP_MARK}", dir=scratch or None)
    os.close(fd)
    return tmp


def scratch_dir(output_dir: str, prefix: str) -> str:
    """The local temporary folder, on every node, of the run writing ``output_dir``: shard tasks
    build files bound for an object store there, and the run clears it on every node at its start
    and end (a task killed with its node leaves its partial files there, not in the output)."""
    import hashlib

    run = hashlib.blake2b(f"{output_dir.rstrip('/')}\n{prefix}".encode(), digest_size=6).hexdigest()
    return os.path.join(tempfile.gettempdir(), f"clipvip-run-{run}")


def remove_partial_shard(cfg: ShardWriterConfig, shard: int, scratch: str = "") -> int:
    """Delete what an earlier attempt at ``shard`` left half-written (here, in the output folder or
    this node's scratch folder); returns how many files went."""
    import glob as globlib

    name = fmt.shard_name(cfg.prefix, shard)
    places = [globlib.escape(os.path.join(scratch, name)) + "*"] if scratch else []
    if is_local(cfg.output_dir):
        _, root = _fs(cfg.output_dir)
        places.append(globlib.escape(os.path.join(root, name)) + f"*{TMP_MARK}*")
    removed = 0
    for pattern in places:
        for path in globlib.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
    return removed


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` appears whole or not at all."""
    tmp = local_temp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(path: str) -> dict[str, Any] | None:
    fs, p = _fs(path)
    try:
        with fs.open(p, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def sample_members(rec: ClipRecord) -> list[tuple[str, bytes]]:
    """The members of one ok record's sample, in the shard format's order."""
    clip = rec.clip or {}
    meta = {"key": rec.key, "path": rec.path, **clip,
            "duration": round(clip["end"] - clip["start"], 6) if clip else None,
            "caption": rec.caption_info or {"model": ""}}
    meta = fmt.merge_passthrough(meta, rec.extra or {})
    return fmt.sample_members(rec.key, mp4=rec.mp4, jpg=rec.jpg, subtitle=rec.text, caption=rec.caption, meta=meta)


def worker_identity() -> dict[str, Any]:
    """Which process wrote a file: Ray node id (when in Ray), host name and process id."""
    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - identity is informative; never fail a shard over it
        node = None
    return {"node_id": node, "host": socket.gethostname(), "pid": os.getpid()}


class ShardWriter:
    """Streams the rows of one input shard into its tar, then writes parquet and stats (marker last).

    Rows must arrive in manifest order (``row`` increasing), which makes a shard's bytes
    independent of scheduling. ``abort`` removes the temporary files of an unfinished shard.
    """

    def __init__(self, cfg: ShardWriterConfig, shard: int, expected: int, scratch: str = ""):
        self.cfg, self.shard, self.expected, self.scratch = cfg, shard, expected, scratch
        self.paths = fmt.shard_files(cfg.output_dir, cfg.prefix, shard)
        removed = remove_partial_shard(cfg, shard, scratch)
        if removed:
            logger.info("shard %d: removed %d partial file(s) of an earlier attempt", shard, removed)
        self.started = time.time()
        self.status: list[tuple[str, int, str, str]] = []
        self.timings = Counter()
        self.tmp = local_temp(self.paths["tar"], scratch)
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        self.bytes_written = 0

    @property
    def complete(self) -> bool:
        return len(self.status) >= self.expected

    def write(self, rec: ClipRecord) -> None:
        """Add one finished record (any status); ok records become a sample."""
        if rec.shard != self.shard:
            raise ValueError(f"row {rec.key} of shard {rec.shard} sent to shard {self.shard}")
        if self.status and rec.row <= self.status[-1][1]:
            raise ValueError(f"shard {self.shard}: row {rec.row} arrived after row {self.status[-1][1]}")
        if rec.ok:
            for name, data in sample_members(rec):
                fmt.add_member(self._tar, name, data)
                self.bytes_written += len(data)
        self.status.append((rec.key, rec.row, rec.status, rec.error))
        self.timings["decode_s"] += rec.decode_s
        self.timings["caption_s"] += rec.caption_s

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the tar, write the status parquet, then the stats marker; return the stats."""
        import pandas as pd

        if not self.complete:
            raise ValueError(f"shard {self.shard}: closing with {len(self.status)} of {self.expected} rows")
        self._tar.close()
        self._file.close()
        put_file(self.tmp, self.paths["tar"])
        table = pd.DataFrame(self.status, columns=list(fmt.STATUS_COLUMNS))
        tmp = local_temp(self.paths["parquet"], self.scratch)
        table.to_parquet(tmp, index=False)
        put_file(tmp, self.paths["parquet"])
        counts = {k: int(v) for k, v in table["status"].value_counts().items()}
        failures = Counter(e.split(":")[0] for e in table.loc[table["status"] != fmt.STATUS_OK, "error"])
        stats = {
            "shard": self.shard, "name": fmt.shard_name(self.cfg.prefix, self.shard), "rows": len(table),
            "counts": counts, "samples": counts.get(fmt.STATUS_OK, 0), "failures": dict(failures.most_common(20)),
            "timings": {"decode_s": round(self.timings["decode_s"], 4), "caption_s": round(self.timings["caption_s"], 4),
                        "shard_wall_s": round(time.time() - self.started, 4)},
            "tar_bytes": self.bytes_written, "written_by": worker_identity(), "written_at": time.time(),
            **(extra or {}),
        }
        write_atomic(self.paths["stats"], json.dumps(stats, indent=1).encode())
        return stats

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def finished_shards(cfg: ShardWriterConfig, shards: Iterable[int],
                    known: dict[int, ShardCounts] | None = None) -> dict[int, ShardCounts]:
    """Counts of the shards that are complete (their ``_stats.json`` exists).

    One listing finds the markers; they are read concurrently (on an object store each is a
    request) and only what the run's summary needs is kept (:class:`ShardCounts`).
    ``known``: counts the caller already holds (of what a shard task returned, of what the start
    of the run read), used for the shards whose marker the listing finds instead of reading it again.
    """
    from concurrent.futures import ThreadPoolExecutor

    fs, root = _fs(cfg.output_dir)
    if not fs.exists(root):
        return {}
    wanted = set(shards)
    done = []
    for p in fs.ls(root, detail=False):
        parsed = fmt.parse_shard_file(p.rsplit("/", 1)[-1])
        if parsed and parsed[0] == cfg.prefix and parsed[2] == "_stats.json" and parsed[1] in wanted:
            done.append(parsed[1])

    def read(shard: int) -> tuple[int, ShardCounts | None]:
        stats = read_json(fmt.shard_files(cfg.output_dir, cfg.prefix, shard)["stats"])
        return shard, None if stats is None else summary_fields(stats)

    known = known or {}
    out = {s: known[s] for s in done if s in known}
    unread = sorted(s for s in done if s not in known)
    with ThreadPoolExecutor(max_workers=16) as pool:
        # A few hundred at a time: pool.map submits everything at once, and a million pending
        # futures would cost the driver a GB.
        for i in range(0, len(unread), 256):
            out.update({s: st for s, st in pool.map(read, unread[i:i + 256]) if st is not None})
    return dict(sorted(out.items()))


class ShardCounts(NamedTuple):
    """What the run's summary needs of one finished shard: the samples in its tar and its rows by
    status, as ``(status, rows)`` pairs. The driver holds one per finished shard, so it is a tuple
    with interned status names (about 200 bytes; the marker's dicts took about 600)."""

    samples: int
    counts: tuple[tuple[str, int], ...]

    def count(self, status: str) -> int:
        return next((n for s, n in self.counts if s == status), 0)


def summary_fields(stats: dict[str, Any]) -> ShardCounts:
    """The part of a shard's ``_stats.json`` (or of what its task returned) the run's summary needs."""
    return ShardCounts(int(stats["samples"]),
                       tuple(sorted((sys.intern(str(k)), int(v)) for k, v in stats["counts"].items())))


def reopen_shard(cfg: ShardWriterConfig, shard: int) -> None:
    """Mark a finished shard unfinished before redoing it (the marker goes first)."""
    fs, p = _fs(fmt.shard_files(cfg.output_dir, cfg.prefix, shard)["stats"])
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


def run_files(cfg: ShardWriterConfig, extra_prefixes: Iterable[str] = ()) -> list[str]:
    """Every file a run put in ``output_dir``: run files, temporary files and the shards of
    ``cfg.prefix`` and of ``extra_prefixes`` (an earlier run's own prefix)."""
    fs, root = _fs(cfg.output_dir)
    if not fs.exists(root):
        return []
    names = {fmt.RUN_FILE, fmt.SUMMARY_FILE, fmt.SIZES_FILE, "config.json"}
    prefixes = {cfg.prefix, *extra_prefixes}
    out = []
    for p in fs.ls(root, detail=False):
        base = p.rsplit("/", 1)[-1]
        parsed = fmt.parse_shard_file(base)
        if base in names or TMP_MARK in base or (parsed and parsed[0] in prefixes):
            out.append(p)
    return out


def remove_run(cfg: ShardWriterConfig, extra_prefixes: Iterable[str] = ()) -> int:
    """Delete an earlier run's shards and run files (``writer.overwrite``); returns how many."""
    fs, _ = _fs(cfg.output_dir)
    files = run_files(cfg, extra_prefixes)
    for p in files:
        fs.rm(p)
    return len(files)


def clear_scratch(scratch: str) -> int:
    """Delete a run's local scratch folder (see :func:`scratch_dir`); returns the files it held."""
    import shutil

    if not os.path.isdir(scratch):
        return 0
    n = sum(len(files) for _, _, files in os.walk(scratch))
    shutil.rmtree(scratch, ignore_errors=True)
    return n


def write_summary(cfg: ShardWriterConfig, n_shards: int, extra: dict[str, Any] | None = None,
                  known: dict[int, ShardCounts] | None = None) -> dict[str, Any]:
    """``_summary.json`` (counts over all shards) and ``sizes.json`` (tar name -> samples).

    The complete shards are those whose marker a listing finds now; ``known`` spares reading the
    markers whose stats the run already holds (see :func:`finished_shards`).
    """
    stats = finished_shards(cfg, range(n_shards), known)
    counts: dict[str, int] = {}
    for st in stats.values():
        for k, v in st.counts:
            counts[k] = counts.get(k, 0) + v
    sizes = {f"{fmt.shard_name(cfg.prefix, s)}.tar": stats[s].samples for s in sorted(stats)}
    summary = {"shards": n_shards, "shards_complete": len(stats), "rows": sum(counts.values()),
               "samples": sum(sizes.values()), "counts": counts, **(extra or {})}
    base = cfg.output_dir.rstrip("/")
    # The old summary goes first: a failure between the two writes then leaves no summary rather
    # than one that disagrees with sizes.json.
    fs, p = _fs(f"{base}/{fmt.SUMMARY_FILE}")
    if fs.exists(p):
        fs.rm(p)
    write_atomic(f"{base}/{fmt.SIZES_FILE}", json.dumps(sizes, indent=1).encode())
    write_atomic(f"{base}/{fmt.SUMMARY_FILE}", json.dumps(summary, indent=1, default=str).encode())
    return summary
