"""The curation run: plan from metadata, check the cluster, then one Ray task per shard.

``run(cfg)`` is the driver. It never reads a row or a clip byte:

1. Resolve paths (relative local paths become absolute; inside a Ray job they are refused, since
   they would point into Ray's temporary copy of the working dir and vanish with it).
2. Check the cluster can run what the config asks (GPUs, custom resources) and that the caption
   model is readable where the caption stage will run.
3. Plan (``pipeline/plan.py``): scan tasks validate every manifest part on the workers and check
   keys are unique; the driver gets row counts and digests.
4. Fingerprint: ``_run.json`` in ``output_dir`` records what decides the outputs (manifest digest,
   rows, shard size, frame and caption settings). A rerun with a different fingerprint is
   refused, naming the difference, unless ``writer.overwrite`` removes the old run first; a
   rerun with the same one resumes. Nothing is written before steps 1-4 pass.
5. The caption replicas start (GPU layout, ``pipeline/caption_service.py``), then one
   ``process_shard`` task per unfinished shard (``pipeline/shard_task.py``), at most
   ``writer.max_in_flight`` at a time (``pipeline/driver.py``). Each writes its shard's files on
   its worker and returns a summary. Finished shards (marker present) are skipped;
   ``retry_failed`` reopens those with failed rows.
6. ``_summary.json`` and ``sizes.json`` from the markers; ``check_outcome`` raises when shards
   are missing or more than ``max_failed_fraction`` of the rows failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from typing import Any

from common.dicts import differences
from common.errors import UserError
from common.jsonio import config_json
from pipeline import writer as writer_mod
from pipeline.errors import CurationError, SetupError
from pipeline.lock import output_lock
from pipeline.manifest import ManifestConfig
from pipeline.caption_service import CaptionConfig
from pipeline.driver import Driver, describe_demand, free_resources
from pipeline.plan import Plan, plan_manifest
from pipeline.writer import ShardWriterConfig
from shards import format as fmt
from video.frames import FrameConfig

logger = logging.getLogger(__name__)

RUN_FORMAT = 1
# FrameConfig fields that do not change what is written (where and how fast it runs).
_FRAME_RUNTIME_FIELDS = ("decode_threads", "timeout_s")


@dataclasses.dataclass(kw_only=True, frozen=True)
class RayConfig:
    """Where to run. No address and no ``RAY_ADDRESS``: an in-process local Ray with ``num_cpus``."""

    address: str = ""
    num_cpus: int | None = None
    # Refuse to start when the cluster as it is now cannot host the requested actors and tasks.
    # Turn off on an autoscaling cluster whose nodes arrive after the job starts.
    check_resources: bool = True


@dataclasses.dataclass(kw_only=True, frozen=True)
class CurateConfig:
    """A whole curation run."""

    manifest: ManifestConfig = dataclasses.field(default_factory=ManifestConfig)
    frames: FrameConfig = dataclasses.field(default_factory=FrameConfig)
    caption: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)
    writer: ShardWriterConfig = dataclasses.field(default_factory=ShardWriterConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    progress_every_s: float = 10.0
    stall_warn_s: float = 60.0  # say what the run waits for when no row finished for this long
    # No row finished for this long: stop waiting (a caption node that never comes back, an actor
    # that cannot be placed), keep every finished shard and end non-zero; the rerun does the rest.
    # 0 waits for ever (autoscaling clusters whose nodes may take longer to arrive).
    stall_timeout_s: float = 1800.0
    max_failed_fraction: float = 0.5  # more failed rows than this fraction: the run ends non-zero

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction={self.max_failed_fraction} must be between 0 and 1")
        if not self.stall_timeout_s >= 0.0:
            raise ValueError(f"stall_timeout_s={self.stall_timeout_s} must be >= 0 (0 waits for ever)")


# ---------------------------------------------------------------------------------------------
# 1. paths


def in_ray_job() -> bool:
    """True inside ``ray job submit``: the entrypoint runs in Ray's temporary copy of the working dir."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or "working_dir_files" in os.getcwd()


def resolve_paths(cfg: CurateConfig) -> CurateConfig:
    """Absolute local paths for the manifest, the output and an ``ofa:``/``hf:`` model directory."""
    job = in_ray_job()

    def fix(value: str, setting: str) -> str:
        if not value or "://" in value or os.path.isabs(value):
            return value
        if job:
            raise SetupError(f"{setting}={value!r} is relative; inside a Ray job it would resolve in Ray's temporary "
                             "copy of the working dir and vanish with it: give an absolute path or a URL "
                             "(s3://..., gs://...)")
        return os.path.abspath(value)

    model = cfg.caption.model
    if model and ":" in model:
        backend, target = model.split(":", 1)
        if backend == "ofa" or (backend == "hf" and (target.startswith((".", "/")) or os.path.exists(target))):
            model = f"{backend}:{fix(target, 'caption.model')}"
    return dataclasses.replace(
        cfg, manifest=dataclasses.replace(cfg.manifest, path="::".join(fix(p, "manifest.path")
                                                                       for p in cfg.manifest.path.split("::"))),
        writer=dataclasses.replace(cfg.writer, output_dir=fix(cfg.writer.output_dir, "writer.output_dir")),
        caption=dataclasses.replace(cfg.caption, model=model))


# ---------------------------------------------------------------------------------------------
# 2. the cluster


def init_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` or ``RAY_ADDRESS`` (set inside ``ray job submit``), else start local Ray."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address or None, log_to_driver=True)
    else:
        # "local": always a fresh in-process Ray, never a cluster some other program started here.
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False)


def _task_demand(cfg: CurateConfig) -> dict[str, float]:
    demand = {"CPU": cfg.writer.num_cpus, **cfg.writer.resources}
    if cfg.caption.model and not cfg.caption.uses_actors and cfg.caption.num_gpus:
        demand["GPU"] = cfg.caption.num_gpus
    return {k: v for k, v in demand.items() if v}


def _fits(node: dict[str, float], demand: dict[str, float]) -> int:
    """How many of ``demand`` one node can host at once (a demand of nothing: one per CPU)."""
    if not demand:
        return int(node.get("CPU", 1))
    return int(min(node.get(k, 0.0) / v for k, v in demand.items()))


def _after_replicas(nodes: list[dict[str, float]], demand: dict[str, float], count: int) -> list[dict[str, float]]:
    """The nodes' resources once ``count`` replicas of ``demand`` are placed (first fit): shard
    tasks are counted on what is left, so they never hold the CPUs a replica needs."""
    left = [dict(n) for n in nodes]
    if not any(demand.values()):
        return left
    for _ in range(count):
        node = next((n for n in left if _fits(n, demand) >= 1), None)
        if node is None:
            break
        for k, v in demand.items():
            node[k] = node.get(k, 0.0) - v
    return left


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: CurateConfig) -> int:
    """Raise ``SetupError`` when no node can run a shard task or the caption pool cannot all start.

    Returns how many shard tasks the cluster can run at once.
    """
    nodes = alive_nodes()
    have = Counter()
    for n in nodes:
        have.update(n)
    offer = describe_demand({k: v for k, v in have.items() if not k.startswith("node:") and "memory" not in k})
    task = _task_demand(cfg)
    if cfg.caption.uses_actors:
        nodes = _after_replicas(nodes, cfg.caption.replica_demand(), cfg.caption.concurrency)
    slots = sum(_fits(n, task) for n in nodes)
    if cfg.ray.check_resources and slots == 0:
        raise SetupError(f"no node can run a shard task, which needs {describe_demand(task)} (writer.num_cpus, "
                         f"writer.resources); the cluster offers {offer}. Lower them or add nodes that offer them")
    if cfg.caption.uses_actors and cfg.ray.check_resources:
        actor = cfg.caption.replica_demand()
        room = sum(_fits(n, actor) for n in alive_nodes())
        if room < cfg.caption.concurrency:
            raise SetupError(
                f"caption.concurrency={cfg.caption.concurrency} replicas each needing {describe_demand(actor)} "
                f"(caption.num_gpus, num_cpus, resources) do not fit: the cluster has room for {room} "
                f"(it offers {offer}). Lower caption.concurrency or caption.num_gpus, or add nodes; on a "
                "CPU-only cluster set caption.num_gpus=0")
    return max(slots, 1)


def model_problem(spec: str) -> str | None:
    """Why the caption model at ``spec`` cannot be read here, or None (run on a caption node)."""
    backend, _, target = spec.partition(":")
    if backend not in ("hf", "ofa", "py") or not target:
        return (f"caption.model={spec!r} must be 'ofa:<converted checkpoint dir>', 'hf:<path or hub id>' or "
                "'py:<module>:<Class>'")
    if backend == "py":
        from caption.registry import python_class

        try:
            python_class(target)
        except ValueError as exc:
            return str(exc)
        return None
    looks_local = backend == "ofa" or target.startswith(("/", "."))
    if "://" in target:
        import fsspec

        fs, path = fsspec.core.url_to_fs(target)
        return None if fs.exists(path) else f"caption.model {target} does not exist"
    if looks_local and not os.path.isdir(target):
        return (f"caption.model directory {target} does not exist on node {os.uname().nodename}; put the model "
                "on storage every caption node can read (a shared path or a URL), outside the job's working dir")
    if looks_local and not os.access(target, os.R_OK | os.X_OK):
        return f"caption.model directory {target} is not readable by the Ray workers"
    return None


def probe_model(cfg: CurateConfig, give_up_s: float = 300.0) -> None:
    """Check the model path on a node that will caption, before any actor or shard starts.

    While no such node is free this logs what it waits for; with ``ray.check_resources`` on (the
    cluster was checked to fit) it gives up after ``give_up_s``, otherwise it waits for
    autoscaled nodes as long as it takes.
    """
    import ray

    demand = cfg.caption.replica_demand() if cfg.caption.uses_actors else _task_demand(cfg)
    probe = ray.remote(model_problem).options(num_cpus=0, num_gpus=demand.get("GPU", 0),
                                              resources={k: v for k, v in demand.items() if k not in ("CPU", "GPU")})
    ref = probe.remote(cfg.caption.model)
    t0 = time.monotonic()
    limit = give_up_s if cfg.ray.check_resources else cfg.stall_timeout_s
    while not ray.wait([ref], timeout=min(cfg.progress_every_s, cfg.stall_warn_s))[0]:
        waited = time.monotonic() - t0
        if limit and waited > limit:
            ray.cancel(ref, force=True)
            raise SetupError(f"no node could check caption.model within {limit:.0f} s (needs "
                             f"{describe_demand(demand)}); is a caption node up?")
        if waited >= cfg.stall_warn_s:
            logger.warning("0 rows in the last %.0f s; waiting for a node that can run the caption stage (needs %s) "
                           "to check caption.model; free now: %s", waited, describe_demand(demand), free_resources())
    problem = ray.get(ref)
    if problem:
        raise SetupError(problem)


# ---------------------------------------------------------------------------------------------
# 4. the fingerprint


def fingerprint(cfg: CurateConfig, plan: Plan) -> dict[str, Any]:
    """What decides this run's outputs; equal fingerprints may share an output folder."""
    frames = {k: v for k, v in dataclasses.asdict(cfg.frames).items() if k not in _FRAME_RUNTIME_FIELDS}
    caption = {"model": cfg.caption.model, "decode": dataclasses.asdict(cfg.caption.decode) if cfg.caption.model else None}
    if cfg.caption.model and cfg.caption.options:
        caption["options"] = cfg.caption.options
    return {"format": RUN_FORMAT,
            "manifest": {"parts": len(plan.parts), "rows": plan.n_rows, "digest": plan.digest},
            "samples_per_shard": cfg.writer.samples_per_shard, "prefix": cfg.writer.prefix,
            "frames": frames, "caption": caption}


def check_fingerprint(cfg: ShardWriterConfig, fp: dict[str, Any], *, setting: str = "writer.", files: str = "shards",
                      error: type[UserError] = SetupError) -> None:
    """Refuse an output folder holding a different run, or empty it first with ``overwrite``.

    The same fingerprint resumes, with or without ``overwrite``: it never throws away finished
    shards of the very run being resumed. Another job that writes its own files the same way (the
    embedding job's parts) names its settings with ``setting`` (the prefix of ``output_dir`` and
    ``overwrite``), its files with ``files`` and raises its own ``error``.
    """
    base = cfg.output_dir.rstrip("/")
    existing = writer_mod.read_json(f"{base}/{fmt.RUN_FILE}")
    if cfg.overwrite and existing != fp:
        # The old run's shards go whatever their prefix: its own is in its fingerprint.
        old_prefix = (existing or {}).get("prefix")
        removed = writer_mod.remove_run(cfg, extra_prefixes=[old_prefix] if isinstance(old_prefix, str) else [])
        if removed:
            logger.info("%soverwrite: removed %d file(s) of a different earlier run in %s", setting, removed, base)
        return
    if existing is None:
        leftovers = [p for p in writer_mod.run_files(cfg) if fmt.parse_shard_file(p.rsplit("/", 1)[-1])]
        if leftovers:
            raise error(f"{setting}output_dir {base} holds {len(leftovers)} '{cfg.prefix}-*' file(s) but no "
                        f"{fmt.RUN_FILE}, so they cannot be matched to this run; use a new {setting}output_dir or "
                        f"set {setting}overwrite=true to delete them first")
        return
    diffs = [f"{k}: {old!r} there, {new!r} now" for k, old, new in differences(existing, fp)]
    if diffs:
        raise error(f"{setting}output_dir {base} holds a different run ({'; '.join(diffs[:4])}"
                    f"{'; ...' if len(diffs) > 4 else ''}); use a new {setting}output_dir, or set "
                    f"{setting}overwrite=true to delete the old {files} first")


# ---------------------------------------------------------------------------------------------
# 5. the shards


def plan_shards(cfg: CurateConfig, n_shards: int) -> tuple[list[int], dict[int, writer_mod.ShardCounts]]:
    """(shards to process, counts of shards kept as they are). ``retry_failed`` reopens failed ones."""
    finished = writer_mod.finished_shards(cfg.writer, range(n_shards))
    if cfg.writer.retry_failed:
        for s in [s for s, st in finished.items() if st.count("failed") > 0]:
            writer_mod.reopen_shard(cfg.writer, s)
            del finished[s]
    return [s for s in range(n_shards) if s not in finished], finished


def run(cfg: CurateConfig, *, stats: dict[str, int] | None = None) -> dict[str, Any]:
    """Curate ``cfg.manifest`` into shards; returns the dataset summary (also ``_summary.json``).

    ``stats`` (optional) receives what the driver got from the cluster: ``bytes_received``,
    ``objects_received``.
    """
    stats = stats if stats is not None else {}
    cfg = resolve_paths(cfg)
    init_ray(cfg.ray)
    slots = check_cluster(cfg)
    if cfg.caption.model:
        probe_model(cfg)
    plan = plan_manifest(cfg.manifest, cfg.writer.samples_per_shard, refuse_relative_paths=in_ray_job(), stats=stats)
    logger.info("manifest %s: %d rows in %d part(s), %d shard(s)", cfg.manifest.path, plan.n_rows, len(plan.parts),
                plan.n_shards)
    fp = fingerprint(cfg, plan)
    with output_lock(cfg.writer.output_dir):  # one run at a time writes a folder (pipeline/lock.py)
        return _write(cfg, plan, fp, slots, stats)


def _write(cfg: CurateConfig, plan: Plan, fp: dict[str, Any], slots: int, stats: dict[str, int]) -> dict[str, Any]:
    """Steps 4 to 6 of :func:`run`, while the run holds the output folder."""
    check_fingerprint(cfg.writer, fp)
    # Inputs are valid: from here on the run writes.
    base = cfg.writer.output_dir.rstrip("/")
    scratch = writer_mod.scratch_dir(cfg.writer.output_dir, cfg.writer.prefix)
    stale = writer_mod.remove_stale_temp_files(cfg.writer) + clear_scratch_on_every_node(scratch)
    if stale:
        logger.info("removed %d temporary file(s) left by an interrupted run", stale)
    write_run_file(f"{base}/{fmt.RUN_FILE}", json.dumps(fp, indent=1).encode())
    write_run_file(f"{base}/config.json", config_json(cfg).encode())
    todo, kept = plan_shards(cfg, plan.n_shards)
    logger.info("%d shard(s) to process, %d already complete", len(todo), len(kept))
    t0 = time.monotonic()
    progress, failed_shards, known = None, {}, dict(kept)
    if todo:
        driver = Driver(cfg, plan, todo, slots, stats, base_dir=os.getcwd(), task_demand=_task_demand(cfg))
        progress = driver.run()
        failed_shards = driver.failed_shards
        known.update(driver.done_stats)
        logger.info("%d rows at %.1f clips/s, %d failed, %d shards written%s", progress.rows, progress.rate,
                    progress.failed, progress.shards, progress.caption_line())
    wall = time.monotonic() - t0
    # A task lost with its node can leave temporary files behind even when Ray's retry finished
    # the shard: nothing final refers to them, so they go now rather than at the next run.
    writer_mod.remove_stale_temp_files(cfg.writer)
    clear_scratch_on_every_node(scratch)
    rows = sum(progress.status.values()) if progress else 0
    try:
        return writer_mod.write_summary(cfg.writer, plan.n_shards, extra={
            "this_run": {"rows": rows, "shards": len(todo) - len(failed_shards), "skipped_shards": len(kept),
                         "failed_shards": {str(k): v for k, v in sorted(failed_shards.items())[:20]},
                         "wall_s": round(wall, 3), "clips_per_s": round(rows / wall, 3) if wall and rows else None,
                         "failures": dict(progress.errors.most_common(10)) if progress else {},
                         "caption_replicas": _replica_summary(progress)},
            "caption_model": cfg.caption.model, "max_failed_fraction": cfg.max_failed_fraction,
        }, known=known)
    except OSError as exc:
        raise CurationError(f"the shards are written, but the run's summary could not be ({_os_reason(exc)}); "
                            "free space and rerun the same command, which only rewrites the summary") from None


def _os_reason(exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def write_run_file(path: str, data: bytes) -> None:
    """A run file (fingerprint, config), whole or not at all; a full or read-only disk is one line."""
    try:
        writer_mod.write_atomic(path, data)
    except OSError as exc:
        raise CurationError(f"cannot write {path} ({_os_reason(exc)}); free space or fix the permissions of "
                            "writer.output_dir, then rerun the same command") from None


def clear_scratch_on_every_node(scratch: str, timeout_s: float = 30.0) -> int:
    """Remove this run's local scratch folder on every live node; returns the files removed.

    Shard tasks build files bound for an object store there; one killed with its raylet (the
    machine still up) leaves its partial files behind, which nothing else would ever delete.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = [ray.remote(writer_mod.clear_scratch).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)).remote(scratch)
        for n in ray.nodes() if n.get("Alive")]
    done, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in late:
        ray.cancel(ref, force=True)
    removed = 0
    for ref in done:
        try:
            removed += ray.get(ref)
        except ray.exceptions.RayError as exc:  # a node that died meanwhile: its files died with it
            logger.debug("scratch clean-up on a node failed: %s", exc)
    return removed


def _replica_summary(progress: Any) -> list[dict[str, Any]]:
    """Per caption replica: node, frames, batches, mean batch and busy seconds (for the summary file)."""
    out = []
    for r in (progress.replicas if progress else []):
        out.append({"node_id": r["node_id"], "frames": r["frames"], "batches": r["batches"],
                    "mean_batch": round(r["frames"] / max(r["batches"], 1), 2), "busy_s": round(r["busy_s"], 3),
                    "full_batches": r["full_batches"], "shared_batches": r["shared_batches"]})
    return out


def check_outcome(summary: dict[str, Any]) -> None:
    """Raise ``CurationError`` for an incomplete run or one where too many rows failed."""
    if summary["shards_complete"] != summary["shards"]:
        failed = summary.get("this_run", {}).get("failed_shards", {})
        why = f"; e.g. shard {next(iter(failed))}: {next(iter(failed.values()))}" if failed else ""
        raise CurationError(f"only {summary['shards_complete']} of {summary['shards']} shards are complete{why}; "
                            "rerun the same command to finish them")
    failed = summary["counts"].get("failed", 0)
    limit = summary.get("max_failed_fraction", 0.5)
    if summary["rows"] and failed / summary["rows"] > limit:
        reasons = summary.get("this_run", {}).get("failures", {})
        top = ", ".join(f"{k} ({v})" for k, v in list(reasons.items())[:3])
        raise CurationError(f"{failed} of {summary['rows']} rows failed, more than max_failed_fraction={limit:g}"
                            f"{f'; most common: {top}' if top else ''}; every row's reason is in the status parquet "
                            "files beside the shards")
