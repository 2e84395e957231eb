"""One input shard, start to finish, inside one Ray worker: manifest rows -> records -> shard files.

``process_shard`` is the unit of work of a curation run. Each clip travels as one
``ClipRecord`` (``pipeline/record.py``) through three steps, one record at a time, and reaches
the shard's ``ShardWriter`` in manifest order:

1. read: the shard's rows from the manifest parts (``pipeline/manifest.py``);
2. decode: empty subtitles fail; the middle frame (JPEG) and the training copy (H.264) come from a
   crash-isolated decode child (``pipeline/decode_worker.py``);
3. caption (``pipeline/caption_service.py``): each middle frame goes to the caption replicas
   shared by every shard task (GPU layout), or to the task's own captioner (CPU layout), or
   captioning is off.

The writer streams each finished record into the tar, then writes the status parquet and the
``_stats.json`` marker straight to ``output_dir``; the driver gets back a summary of a few
hundred bytes. If the task dies (worker or node lost), Ray runs it again from the start: the
shard's files are only final once its marker is written, so a retry removes the partial files of
the earlier attempt and rewrites them.

Which setting sizes what:

==================================  ===========================================================
setting                             sizes
==================================  ===========================================================
``writer.samples_per_shard``        rows per shard task
``writer.max_in_flight``            shard tasks submitted at once (0: twice the CPU slots)
``caption.batch_size``              frames per ``generate`` call, wherever the captioner runs
``caption.batch_wait_s``            how long an idle replica waits for a batch to fill
``caption.frames_per_request``      frames a shard task sends to the replicas in one request
``caption.max_in_flight_per_task``  records one shard task holds between decode and write
``caption.concurrency``             caption replicas (``max_concurrency``: the autoscaling cap)
==================================  ===========================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
import uuid
from typing import Any, Iterable, Iterator

from pipeline import caption_service
from pipeline.caption_service import CaptionConfig
from pipeline.decode_worker import DecoderProcess
from pipeline.manifest import ManifestConfig, read_rows, resolve_local
from pipeline.plan import Slice
from pipeline.record import ClipRecord
from pipeline.writer import ShardWriter, ShardWriterConfig
from video.frames import FrameConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True, frozen=True)
class ShardJob:
    """Everything a shard task needs besides its slices: plain settings, no data."""

    manifest: ManifestConfig
    frames: FrameConfig
    caption: CaptionConfig
    writer: ShardWriterConfig
    base_dir: str  # relative local clip paths resolve here (the directory the run started from)
    service: str = ""  # the caption application's name when captions go to the replicas
    scratch: str = ""  # this run's local temporary folder on every node (writer.scratch_dir)
    log_level: int = logging.INFO  # the driver's; Ray streams what workers log to the driver's output


def records(job: ShardJob, slices: list[Slice], shard: int) -> Iterator[ClipRecord]:
    """Step 1: the shard's rows, in manifest order, as records."""
    import ray

    for sl in slices:
        checkpoints = ray.get(sl.checkpoints) if isinstance(sl.checkpoints, ray.ObjectRef) else sl.checkpoints
        for row in read_rows(sl.part, job.manifest, sl.start, sl.end, checkpoints, sl.first_row, shard):
            rec = ClipRecord.from_row(row)
            if not rec.member:
                rec.path = resolve_local(rec.path, job.base_dir)
            yield rec


# One decode child per worker process, reused across tasks (started lazily, restarted after a crash).
_DECODERS: dict[FrameConfig, DecoderProcess] = {}


def decoded(job: ShardJob, recs: Iterable[ClipRecord]) -> Iterator[ClipRecord]:
    """Step 2: middle frame and training copy of every ok record; failures become the record's status."""
    if job.frames not in _DECODERS:
        _DECODERS[job.frames] = DecoderProcess(job.frames)
    decoder = _DECODERS[job.frames]
    for rec in recs:
        if rec.ok and not rec.text.strip():
            rec.fail("empty text: the manifest's subtitle text is empty for this row")
        if rec.ok:
            t0 = time.perf_counter()
            with _local_copy(rec, job.scratch) as path:
                out, reason = decoder.decode(path, rec.start, rec.end)
            rec.decode_s = time.perf_counter() - t0
            if out is None:
                rec.fail(reason)
            else:
                rec.jpg, rec.mp4, rec.clip = out.jpg, out.mp4, out.meta()
        rec.member = b""  # the source bytes are done with once decoded
        yield rec


@contextlib.contextmanager
def _local_copy(rec: ClipRecord, scratch: str):
    """The clip's path, or a temporary file holding its bytes when it came out of a tar."""
    if not rec.member:
        yield rec.path
        return
    if scratch:
        os.makedirs(scratch, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"clip-{rec.key}-", suffix=".mp4", dir=scratch or None)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(rec.member)
        yield tmp
    finally:
        os.unlink(tmp)


def captioned(job: ShardJob, recs: Iterable[ClipRecord]) -> Iterator[ClipRecord]:
    """Step 3: the caption step this run uses; records leave in the order they came."""
    if not job.caption.model:
        return caption_service.no_captions(recs)
    if job.service:
        return caption_service.service_captions(recs, job.caption, job.service)
    return caption_service.inline_captions(recs, job.caption)


def process_shard(job: ShardJob, shard: int, slices: list[Slice], expected: int,
                  progress: Any = None) -> dict[str, Any]:
    """Curate one shard and write its files; returns its stats (counts, failures, who wrote it)."""
    _worker_logging(job.log_level)
    attempt = uuid.uuid4().hex[:12]
    writer = ShardWriter(job.writer, shard, expected, scratch=job.scratch)
    reporter = _Reporter(progress, shard, attempt)
    try:
        for rec in captioned(job, decoded(job, records(job, slices, shard))):
            writer.write(rec)
            reporter.row(rec.ok)
        stats = writer.close()
        reporter.flush()
        logger.info("shard %d written: %d rows, %d failed, %.1f s", shard, stats["rows"],
                    stats["rows"] - stats["samples"], stats["timings"]["shard_wall_s"])
        return stats
    except BaseException:
        writer.abort()
        raise


def _worker_logging(level: int) -> None:
    """A Ray worker's root logger has no handler: give it one like the driver's, once per process."""
    root = logging.getLogger()
    if not any(getattr(h, "_clipvip", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._clipvip = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


class _Reporter:
    """Tells the run's progress actor how many rows this attempt at the shard has finished, at most
    once a second (the counts are cumulative, so a retried shard replaces its earlier attempt's)."""

    def __init__(self, progress: Any, shard: int, attempt: str) -> None:
        self.progress, self.shard, self.attempt = progress, shard, attempt
        self.rows = self.failed = 0
        self.sent = time.monotonic()

    def row(self, ok: bool) -> None:
        self.rows += 1
        self.failed += not ok
        if time.monotonic() - self.sent >= 1.0:
            self.flush()

    def flush(self) -> None:
        if self.progress is not None:
            self.progress.report.remote(self.shard, self.attempt, self.rows, self.failed)
        self.sent = time.monotonic()


class RunProgress:
    """A tiny actor on the driver's node: rows finished per shard (each shard counted once, however
    many attempts it took) and the caption replicas' own counters."""

    def __init__(self) -> None:
        self.shards: dict[int, tuple[str, int, int]] = {}  # shard -> (attempt, rows, failed)
        self.replicas: dict[str, dict[str, Any]] = {}

    def report(self, shard: int, attempt: str, rows: int, failed: int) -> None:
        self.shards[shard] = (attempt, rows, failed)

    def replica(self, stats: dict[str, Any]) -> None:
        self.replicas[stats["replica"]] = stats

    def snapshot(self) -> tuple[int, int, list[dict[str, Any]]]:
        """(rows, failed rows, each replica's latest counters)."""
        return (sum(r for _, r, _ in self.shards.values()), sum(f for _, _, f in self.shards.values()),
                list(self.replicas.values()))
