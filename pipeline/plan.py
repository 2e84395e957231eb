"""Plan a curation run from manifest metadata: parts, row counts, shards, keys checked unique.

The driver lists the manifest's parts and sends one ``scan_part`` Ray task per part. Each task
validates its rows and returns only a small summary (rows, digest); the row-position index and
the key hashes stay in Ray's object store as references. Key uniqueness across parts is checked
without gathering keys anywhere: each scan splits its key hashes into ``B`` buckets by hash, and
one task per bucket looks for repeats among that bucket's hashes from every part. A repeated
hash is confirmed by reading the two rows' keys (64-bit hashes can collide, rarely) before the
run is refused.

Every task's failure reaches the driver once, as one error: when a task fails, the other planning
tasks are cancelled and every error object is fetched before the error is raised. (Ray logs an
"Unhandled error" traceback for each error object freed without being fetched; a scan task has
``2 + B`` returns, so one bad manifest line used to be followed by dozens of tracebacks.)

Shard ``s`` holds global rows ``[s*S, (s+1)*S)`` over the parts in order, so a shard may span two
parts; ``Plan.slices(s)`` says which rows of which parts. Nothing here grows with the number of
rows except the object-store references, one per part.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import logging
import pickle
from typing import Any

import numpy as np

from pipeline.manifest import ManifestConfig, ManifestError, Part, list_parts, read_rows, scan_part

logger = logging.getLogger(__name__)

MAX_BUCKETS = 32


@dataclasses.dataclass(kw_only=True)
class Slice:
    """Rows ``[start, end)`` of part ``part``, which are global rows from ``first_row``."""

    part: Part
    start: int
    end: int
    first_row: int
    checkpoints: Any  # ObjectRef (or array) of the part's row-position index


@dataclasses.dataclass(kw_only=True)
class Plan:
    parts: list[Part]
    rows: list[int]  # per part
    digests: list[str]
    checkpoints: list[Any]  # ObjectRefs, one per part
    samples_per_shard: int

    def __post_init__(self) -> None:
        self.offsets = [0]
        for n in self.rows:
            self.offsets.append(self.offsets[-1] + n)

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.samples_per_shard)

    @property
    def digest(self) -> str:
        """The manifest's identity: every part's content digest, in order."""
        return hashlib.blake2b("\n".join(self.digests).encode(), digest_size=16).hexdigest()

    def shard_rows(self, shard: int) -> int:
        lo = shard * self.samples_per_shard
        return min(lo + self.samples_per_shard, self.n_rows) - lo

    def slices(self, shard: int) -> list[Slice]:
        lo = shard * self.samples_per_shard
        hi = min(lo + self.samples_per_shard, self.n_rows)
        out = []
        p = bisect.bisect_right(self.offsets, lo) - 1
        while lo < hi:
            part_end = self.offsets[p + 1]
            take = min(hi, part_end)
            out.append(Slice(part=self.parts[p], start=lo - self.offsets[p], end=take - self.offsets[p],
                             first_row=lo, checkpoints=self.checkpoints[p]))
            lo, p = take, p + 1
        return out


def _scan(part: Part, cfg: ManifestConfig, index: int, buckets: int, refuse_relative_paths: bool) -> tuple:
    """Ray task body: (summary, checkpoints, bucket_0, ..., bucket_{B-1})."""
    scan = scan_part(part, cfg, refuse_relative_paths=refuse_relative_paths)
    rows = np.arange(scan.rows, dtype=np.int64)
    which = (scan.keys % np.uint64(buckets)).astype(np.int64)
    parts = []
    for b in range(buckets):
        mask = which == b
        parts.append(np.stack([scan.keys[mask].view(np.int64), np.full(int(mask.sum()), index, np.int64),
                               rows[mask]], axis=1) if mask.any() else np.zeros((0, 3), np.int64))
    summary = {"rows": scan.rows, "digest": scan.digest, "skipped": scan.skipped}
    return (summary, scan.checkpoints, *parts)


def _repeats(*buckets: np.ndarray, limit: int = 5) -> list[list[tuple[int, int]]]:
    """Ray task body: groups of (part, row) sharing a key hash, at most ``limit`` groups."""
    table = np.concatenate(buckets) if buckets else np.zeros((0, 3), np.int64)
    if len(table) < 2:
        return []
    order = np.argsort(table[:, 0], kind="stable")
    hashes = table[order, 0]
    same = np.flatnonzero(hashes[1:] == hashes[:-1])
    groups: dict[int, list[tuple[int, int]]] = {}
    for i in same:
        for j in (i, i + 1):
            h = int(hashes[j])
            entry = (int(table[order[j], 1]), int(table[order[j], 2]))
            if entry not in groups.setdefault(h, []):
                groups[h].append(entry)
        if len(groups) > limit:
            break
    return list(groups.values())[:limit]


def _key_at(part: Part, cfg: ManifestConfig, row: int, checkpoints: np.ndarray) -> str:
    return next(read_rows(part, cfg, row, row + 1, checkpoints, 0, 0))["key"]


def plan_manifest(cfg: ManifestConfig, samples_per_shard: int, *, refuse_relative_paths: bool = False,
                  remote_options: dict[str, Any] | None = None, stats: dict[str, int] | None = None) -> Plan:
    """Scan every part on the cluster; raise ``ManifestError`` on the first bad part or repeated key.

    ``refuse_relative_paths`` (inside a Ray job): a relative clip path in a row is a
    ``ManifestError``, since it would resolve in Ray's temporary copy of the working dir.
    """
    import ray

    parts = list_parts(cfg)
    buckets = max(1, min(MAX_BUCKETS, len(parts)))
    scan_task = ray.remote(_scan).options(num_returns=2 + buckets, **(remote_options or {}))
    refs = [scan_task.remote(part, cfg, i, buckets, refuse_relative_paths) for i, part in enumerate(parts)]
    summaries = _get_tasks(refs, stats)
    plan = Plan(parts=parts, rows=[s["rows"] for s in summaries], digests=[s["digest"] for s in summaries],
                checkpoints=[r[1] for r in refs], samples_per_shard=samples_per_shard)
    skipped = sum(s["skipped"] for s in summaries)
    if skipped:
        logger.info("manifest %s: %d video2dataset sample(s) without a clip (inputs video2dataset recorded as "
                    "failed) are not rows", cfg.path, skipped)
    repeat_task = ray.remote(_repeats).options(**(remote_options or {}))
    groups = [g for gs in _get_tasks([[repeat_task.remote(*[r[2 + b] for r in refs])] for b in range(buckets)],
                                     stats) for g in gs]
    key_task = ray.remote(_key_at).options(**(remote_options or {}))
    for group in groups:
        located = [(plan.offsets[p] + row, p, row) for p, row in group]
        keys = _get_tasks([[key_task.remote(parts[p], cfg, row, plan.checkpoints[p])] for _, p, row in located],
                          stats)
        seen: dict[str, tuple[int, int, int]] = {}
        for key, where in sorted(zip(keys, located), key=lambda kv: kv[1][0]):
            if key in seen:
                first, (g, p, row) = seen[key], where
                raise ManifestError(
                    f"manifest part {parts[p].url}, row {row}, column 'key': duplicate key {key!r} (first in row "
                    f"{first[2]} of {parts[first[1]].url}; manifest rows {first[0]} and {g}); keys must be unique")
            seen[key] = where
    return plan


def _get_tasks(tasks: list[list[Any]], stats: dict[str, int] | None) -> list[Any]:
    """The first return of each task (``tasks[i]`` holds all of task i's ObjectRefs).

    When one fails, the others are cancelled and every error object among all their returns is
    fetched, so Ray has none left to log as unhandled; then the first failure is raised, as a
    one-line ``ManifestError`` when that is what the task raised.
    """
    import ray

    firsts = [refs[0] for refs in tasks]
    try:
        return _get(firsts, stats)
    except ray.exceptions.RayError as exc:
        for ref in firsts:
            ray.cancel(ref)
        for refs in tasks:
            for ref in refs:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError:
                    continue
                break  # the task succeeded: its other returns are values, left in the object store
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ManifestError):
            raise ManifestError(str(cause).splitlines()[0]) from None
        raise


def _get(refs: list[Any], stats: dict[str, int] | None) -> list[Any]:
    """``ray.get`` that counts what the driver received (the scale-out benchmark reads it)."""
    import ray

    values = ray.get(refs)
    if stats is not None:
        stats["bytes_received"] = stats.get("bytes_received", 0) + sum(len(pickle.dumps(v)) for v in values)
        stats["objects_received"] = stats.get("objects_received", 0) + len(values)
    return values
