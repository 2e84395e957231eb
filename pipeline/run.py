"""The curation run: manifest -> checks -> decode -> caption -> shards, as one Ray Data graph.

``run(cfg)`` reads and validates the manifest, decides which input shards still need work (resume),
chains the stages with their resources from config, checks that every stage's inputs are produced
upstream, then streams the results into one ``ShardWriter`` per input shard. A shard is written
as soon as all of its rows have arrived, so finished work survives a killed job.

The writer runs in the driver: rows arrive already encoded (a few tens of KB each), and one writer
per shard keeps a shard all-or-nothing without a shuffle barrier in the graph.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from typing import Any, Callable

import pandas as pd

from pipeline import manifest as manifest_mod
from pipeline import stages
from pipeline import writer as writer_mod
from pipeline.frames import FrameConfig
from pipeline.manifest import ManifestConfig, load_manifest
from pipeline.stages import CaptionConfig
from pipeline.writer import ShardWriter, ShardWriterConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True, frozen=True)
class RayConfig:
    """Where to run. No address and no ``RAY_ADDRESS``: an in-process local Ray with ``num_cpus``."""

    address: str = ""
    num_cpus: int | None = None
    progress_bars: bool = False  # Ray Data's own bars; the run logs clips/s itself
    # Ray Data holds back part of the CPUs per operator by default; in this short linear graph that
    # idles decode slots (measured: ~1.5x fewer clips/s on 2 CPUs), so it is off unless asked for.
    reserve_op_resources: bool = False


@dataclasses.dataclass(kw_only=True, frozen=True)
class CurateConfig:
    """A whole curation run."""

    manifest: ManifestConfig = dataclasses.field(default_factory=ManifestConfig)
    frames: FrameConfig = dataclasses.field(default_factory=FrameConfig)
    caption: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)
    writer: ShardWriterConfig = dataclasses.field(default_factory=ShardWriterConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    progress_every_s: float = 10.0


@dataclasses.dataclass(kw_only=True, frozen=True)
class Stage:
    """One node of the graph: a function (task) or a class (actor pool) with its resources."""

    name: str
    fn: Callable[..., Any] | type
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch_size: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | None = None  # actor pool size; None for tasks
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _no_caption(batch: pd.DataFrame) -> pd.DataFrame:
    """Caption stage off: empty captions, and metadata that says why."""
    return batch.assign(caption="", caption_info=stages.caption_off_info(), caption_s=0.0)


def build_stages(cfg: CurateConfig) -> list[Stage]:
    """The stage list for ``cfg``, in order."""
    out = [
        Stage(name="check_text", fn=stages.check_text, inputs=stages.CHECK_TEXT_INPUTS,
              outputs=stages.CHECK_TEXT_OUTPUTS, batch_size=cfg.frames.batch_size, num_cpus=cfg.frames.num_cpus),
        Stage(name="decode", fn=stages.decode_clips, inputs=stages.DECODE_INPUTS, outputs=stages.DECODE_OUTPUTS,
              batch_size=cfg.frames.batch_size, num_cpus=cfg.frames.num_cpus, kwargs={"cfg": cfg.frames}),
    ]
    if cfg.caption.model:
        c = cfg.caption
        out.append(Stage(name="caption", fn=stages.CaptionStage, inputs=stages.CAPTION_INPUTS,
                         outputs=stages.CAPTION_OUTPUTS, batch_size=c.batch_size, num_cpus=c.num_cpus,
                         num_gpus=c.num_gpus, concurrency=c.concurrency, kwargs={"cfg": c}))
    else:
        out.append(Stage(name="no_caption", fn=_no_caption, inputs=(), outputs=stages.CAPTION_OUTPUTS,
                         batch_size=cfg.frames.batch_size, num_cpus=cfg.frames.num_cpus))
    return out


def check_graph(source: tuple[str, ...], graph: list[Stage], sink: tuple[str, ...]) -> None:
    """Raise before launching anything if a stage (or the writer) reads a column nobody produced."""
    available = set(source)
    for stage in graph:
        missing = [c for c in stage.inputs if c not in available]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads column(s) {missing} that no earlier stage produces "
                             f"(available: {sorted(available)})")
        available |= set(stage.outputs)
    missing = [c for c in sink if c not in available]
    if missing:
        raise ValueError(f"the writer reads column(s) {missing} that no stage produces")


def apply_stage(ds: Any, stage: Stage) -> Any:
    """Add ``stage`` to a Ray dataset: a task for functions, an actor pool for classes."""
    common = dict(batch_size=stage.batch_size, batch_format="pandas", num_cpus=stage.num_cpus)
    if isinstance(stage.fn, type):
        # On a CPU-only run Ray Data fuses the decode tasks into this actor (equal remote args). That
        # is faster on few cores (measured on 2 CPUs: 0.56 of the bare loop fused, 0.35 kept apart,
        # bench/curate.py); with num_gpus > 0 the stages stay apart and decode scales on its own.
        return ds.map_batches(stage.fn, fn_constructor_kwargs=stage.kwargs, num_gpus=stage.num_gpus,
                              concurrency=stage.concurrency, **common)
    return ds.map_batches(stage.fn, fn_kwargs=stage.kwargs, **common)


def init_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` or ``RAY_ADDRESS`` (set inside ``ray job submit``), else start local Ray."""
    import ray

    if not ray.is_initialized():
        _connect(cfg)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress_bars
    ctx.op_resource_reservation_enabled = cfg.reserve_op_resources


def _connect(cfg: RayConfig) -> None:
    import ray

    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address or None, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False)


def plan_shards(cfg: CurateConfig, rows: pd.DataFrame) -> tuple[list[int], dict[int, dict[str, Any]]]:
    """(shards to process, stats of shards kept as they are). ``retry_failed`` reopens failed ones."""
    all_shards = sorted(int(s) for s in rows["shard"].unique())
    finished = writer_mod.finished_shards(cfg.writer, all_shards)
    if cfg.writer.retry_failed:
        for s in [s for s, st in finished.items() if st["counts"].get("failed", 0) > 0]:
            writer_mod.reopen_shard(cfg.writer, s)
            del finished[s]
    return [s for s in all_shards if s not in finished], finished


class Progress:
    """Logs clips/s, failures and shards at a fixed cadence."""

    def __init__(self, total_rows: int, total_shards: int, every_s: float):
        self.total_rows, self.total_shards, self.every_s = total_rows, total_shards, every_s
        self.t0 = self.last = time.monotonic()
        self.rows = self.shards = 0
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def update(self, batch: pd.DataFrame) -> None:
        self.rows += len(batch)
        self.status.update(batch["status"])
        self.errors.update(e.split(":")[0] for e in batch.loc[batch["status"] != "ok", "error"])
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            logger.info("%d/%d rows, %.1f clips/s, %d failed, %d/%d shards written", self.rows, self.total_rows,
                        self.rate, self.status["failed"], self.shards, self.total_shards)

    @property
    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.t0, 1e-9)


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Curate ``cfg.manifest`` into shards; returns the dataset summary (also ``_summary.json``)."""
    rows = load_manifest(cfg.manifest, cfg.writer.samples_per_shard)
    n_shards = int(rows["shard"].max()) + 1
    graph = build_stages(cfg)
    check_graph(manifest_mod.OUTPUTS, graph, writer_mod.INPUTS)
    stale = writer_mod.remove_stale_temp_files(cfg.writer)
    if stale:
        logger.info("removed %d temporary file(s) left by an interrupted run", stale)
    todo, kept = plan_shards(cfg, rows)
    logger.info("%d shard(s) to process, %d already complete", len(todo), len(kept))
    t0 = time.monotonic()
    progress = Progress(0, len(todo), cfg.progress_every_s)
    if todo:
        work = rows[rows["shard"].isin(todo)]
        progress.total_rows = len(work)
        _execute(cfg, graph, work, progress)
    wall = time.monotonic() - t0
    summary = writer_mod.write_summary(cfg.writer, n_shards, extra={
        "this_run": {"rows": progress.rows, "shards": len(todo), "skipped_shards": len(kept),
                     "wall_s": round(wall, 3), "clips_per_s": round(progress.rows / wall, 3) if wall else None,
                     "failures": dict(progress.errors.most_common(10))},
        "caption_model": cfg.caption.model,
    })
    if summary["shards_complete"] != n_shards:
        raise RuntimeError(f"only {summary['shards_complete']} of {n_shards} shards are complete; rerun to finish")
    return summary


def _execute(cfg: CurateConfig, graph: list[Stage], work: pd.DataFrame, progress: Progress) -> None:
    import ray

    init_ray(cfg.ray)
    step = max(1, cfg.frames.batch_size)
    ds = ray.data.from_pandas([work.iloc[i:i + step] for i in range(0, len(work), step)])
    for stage in graph:
        ds = apply_stage(ds, stage)
    expected = work.groupby("shard").size().to_dict()
    writers: dict[int, ShardWriter] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
        progress.update(batch)
        for row in batch.to_dict("records"):
            s = int(row["shard"])
            w = writers.setdefault(s, ShardWriter(cfg.writer, s, int(expected[s])))
            w.write(row)
            if w.complete:
                stats = w.close()
                del writers[s]
                progress.shards += 1
                logger.debug("wrote %s: %s", stats["name"], json.dumps(stats["counts"]))
    logger.info("%d rows at %.1f clips/s, %d failed, %d shards written", progress.rows, progress.rate,
                progress.status["failed"], progress.shards)
    if writers:
        raise RuntimeError(f"shards {sorted(writers)} ended incomplete; a stage dropped rows")
