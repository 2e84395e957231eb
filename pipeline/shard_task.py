"""One input shard, start to finish, inside one Ray worker: read rows -> stages -> shard files.

``process_shard`` is the unit of work of a curation run. It reads its rows from the manifest
parts (``pipeline/manifest.py``), runs them through the stages in chunks of
``frames.batch_size`` rows, and streams each finished row into the shard's ``ShardWriter``,
which writes the tar, the status parquet and the ``_stats.json`` marker straight to
``output_dir``. The driver gets back a summary of a few hundred bytes.

Captioning runs in one of two places (``caption.placement``):

- actors: the task sends each chunk's keys and JPEG bytes (``CAPTION_INPUTS``, never the clips)
  to a caption actor and decodes the next chunk while the actor works, so decode and caption
  overlap. The actor is chosen by shard number, spreading shards over the pool.
- inline: the task loads the captioner once per worker process and captions its own frames
  (CPU-only clusters, where an actor would only add a copy).

If the task dies (worker or node lost), Ray runs it again from the start: the shard's files are
only final once its marker is written, so a retry simply rewrites them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Iterator

import pandas as pd

from pipeline import stages
from pipeline.frames import FrameConfig
from pipeline.manifest import ManifestConfig, read_rows, resolve_local
from pipeline.plan import Slice
from pipeline.stages import CaptionConfig
from pipeline.writer import ShardWriter, ShardWriterConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True, frozen=True)
class ShardJob:
    """Everything a shard task needs besides its slices: plain settings, no data."""

    manifest: ManifestConfig
    frames: FrameConfig
    caption: CaptionConfig
    writer: ShardWriterConfig
    base_dir: str  # relative local clip paths resolve here (the directory the run started from)


_CAPTIONERS: dict[str, stages.CaptionStage] = {}


def _inline_captioner(cfg: CaptionConfig) -> stages.CaptionStage:
    """One captioner per worker process, loaded on first use and kept for later shards."""
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    if key not in _CAPTIONERS:
        _CAPTIONERS[key] = stages.CaptionStage(cfg)
    return _CAPTIONERS[key]


def _rows(job: ShardJob, slices: list[Slice], shard: int) -> Iterator[dict[str, Any]]:
    import ray

    for sl in slices:
        checkpoints = ray.get(sl.checkpoints) if isinstance(sl.checkpoints, ray.ObjectRef) else sl.checkpoints
        for row in read_rows(sl.part, job.manifest, sl.start, sl.end, checkpoints, sl.first_row, shard):
            if not row["member"]:
                row["path"] = resolve_local(row["path"], job.base_dir)
            yield row


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[pd.DataFrame]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield pd.DataFrame(chunk)
            chunk = []
    if chunk:
        yield pd.DataFrame(chunk)


def _decode(job: ShardJob, batch: pd.DataFrame) -> pd.DataFrame:
    batch = stages.check_text(batch)
    batch = stages.decode_clips(batch, job.frames)
    return batch.drop(columns=["member"])  # the source bytes are done with once decoded


def _merge(batch: pd.DataFrame, captioned: pd.DataFrame) -> pd.DataFrame:
    return batch.assign(**{c: captioned[c].to_numpy() for c in stages.CAPTION_OUTPUTS})


def process_shard(job: ShardJob, shard: int, slices: list[Slice], expected: int,
                  caption_actor: Any = None, progress: Any = None) -> dict[str, Any]:
    """Curate one shard and write its files; returns its stats (counts, failures, who wrote it)."""
    writer = ShardWriter(job.writer, shard, expected)
    try:
        chunks = (_decode(job, b) for b in _chunks(_rows(job, slices, shard), job.frames.batch_size))
        for batch in _captioned(job, chunks, caption_actor):
            for row in batch.to_dict("records"):
                writer.write(row)
            if progress is not None:
                progress.add.remote(len(batch), int((batch["status"] != "ok").sum()))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _captioned(job: ShardJob, chunks: Iterator[pd.DataFrame], actor: Any) -> Iterator[pd.DataFrame]:
    """Each decoded chunk with its captions; with an actor, one chunk is captioned while the next decodes."""
    cfg = job.caption
    if not cfg.model:
        for batch in chunks:
            yield batch.assign(caption="", caption_info=stages.caption_off_info(), caption_s=0.0)
        return
    if actor is None:
        captioner = _inline_captioner(cfg)
        for batch in chunks:
            yield _merge(batch, captioner(batch[list(stages.CAPTION_INPUTS)]))
        return
    import ray

    pending: tuple[pd.DataFrame, Any] | None = None
    for batch in chunks:
        ref = actor.caption.remote(caption_request(batch))
        if pending is not None:
            yield _merge(pending[0], ray.get(pending[1]))
        pending = (batch, ref)
    if pending is not None:
        yield _merge(pending[0], ray.get(pending[1]))


def caption_request(batch: pd.DataFrame) -> pd.DataFrame:
    """What a caption actor is sent: its declared inputs (keys, JPEG bytes, status), nothing else."""
    return batch[list(stages.CAPTION_INPUTS)]


class CaptionActor:
    """The caption stage as a Ray actor: ``caption(batch)`` takes ``CAPTION_INPUTS`` only."""

    def __init__(self, cfg: CaptionConfig) -> None:
        self.stage = stages.CaptionStage(cfg)

    def ready(self) -> bool:
        return True

    def caption(self, batch: pd.DataFrame) -> pd.DataFrame:
        return self.stage(batch)


class ProgressCounter:
    """A tiny actor on the driver's node that shard tasks tell how many rows they finished."""

    def __init__(self) -> None:
        self.rows = 0
        self.failed = 0

    def add(self, rows: int, failed: int) -> None:
        self.rows += rows
        self.failed += failed

    def snapshot(self) -> tuple[int, int]:
        return self.rows, self.failed

