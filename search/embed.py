"""``clipvip embed``: a Ray job that embeds a collection into parquet parts, with curation's guarantees.

The driver only plans and counts; the :class:`search.embed_worker.EmbedActor` pool (one model load
per actor; GPU actors with ``num_gpus``, CPU ones by default) reads each input unit where it runs
and writes its part there. The guarantees are the curation's, through its helpers:

- exactly once: a unit's part is written whole under its final name, then its ``_stats.json``
  marker; a unit without its marker is redone, overwriting the same names;
- resume after any kill: a killed actor is restarted by Ray and its unit retried; a killed driver
  costs its unfinished units, and the same command skips every marked one;
- a fingerprint (``_run.json``: model id, frame sampling, texts, input set, part size) that refuses
  a rerun into a folder holding another run, naming the difference (``overwrite`` empties it first);
  ``config.json`` beside it records the whole config (the model's path and tokenizer, which the
  index and the server load it from);
- nothing is written before every input is checked: the settings, the input units, the model
  (its config parses, its safetensors header holds exactly the tensors that config builds, the
  tokenizer fits it: ``search.model_files``), the folder's fingerprint, and the actors' own load of
  the model. Every user error is one ``UserError`` line (:class:`EmbedError`, or the
  ``EncoderError`` of a model or tokenizer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

from common.errors import UserError
from pipeline.run import RayConfig
from search import parts

logger = logging.getLogger(__name__)

RUN_FORMAT = 1


class EmbedError(UserError):
    """A problem with the run's inputs or settings; the message names the setting and the fix."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class EmbedConfig:
    """One embedding run."""

    model: str = ""  # run dir, model dir or clipvip:<official .pt>
    tokenizer: str = ""  # default: the run's
    clip_config: str = ""  # official .pt of a non-released architecture
    shards: str = ""  # curated shard pattern ('::'-joined, braces, globs), or ...
    manifest: str = ""  # ... a video manifest (key, path, optional start/end, text, other columns)
    output_dir: str = ""
    texts: tuple[str, ...] = ()  # also embed these texts: subtitle, caption
    rows_per_part: int = 1000  # manifest input: rows per unit (shard input: one unit per tar)
    batch_size: int = 16  # clips per model call
    num_frames: int = 0  # 0: the model's own (its run's evaluation setting)
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA)
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor; 1 puts one actor on each GPU
    concurrency: int = 0  # actors; 0: as many as the cluster fits
    decode_workers: int = 2  # decode threads per actor
    overwrite: bool = False  # delete another run's parts in output_dir first
    max_failed_fraction: float = 0.5
    progress_every_s: float = 10.0
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    # Filled by the driver for the workers.
    base_dir: str = ""
    manifest_config: Any = None


def _abs(value: str, setting: str) -> str:
    from pipeline.run import in_ray_job

    if not value or "://" in value or os.path.isabs(value):
        return value
    if in_ray_job():
        raise EmbedError(f"{setting}={value!r} is relative; inside a Ray job it would resolve in Ray's temporary copy "
                         "of the working dir: give an absolute path or a URL")
    return os.path.abspath(value)


def check_config(cfg: EmbedConfig) -> EmbedConfig:
    """Absolute paths and sane values, or :class:`EmbedError`; nothing is touched."""
    problems = []
    if not cfg.model:
        problems.append("model is empty: give a run dir, a model dir or clipvip:<official .pt>")
    if bool(cfg.shards) == bool(cfg.manifest):
        problems.append("give exactly one input: shards=<curated shard pattern> or manifest=<video manifest>")
    if not cfg.output_dir:
        problems.append("output_dir is empty: give the folder for the embedding parts")
    elif "://" not in cfg.output_dir and os.path.isfile(cfg.output_dir):
        problems.append(f"output_dir {cfg.output_dir} is a file; give a folder")
    bad = [t for t in cfg.texts if t not in parts.TEXT_FIELDS]
    if bad:
        problems.append(f"texts {bad}: choose from {list(parts.TEXT_FIELDS)}")
    if cfg.manifest and "caption" in cfg.texts:
        problems.append("texts=caption needs curated shards (a video manifest has no captions)")
    for name in ("rows_per_part", "batch_size", "decode_workers"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name}={getattr(cfg, name)} must be at least 1")
    if cfg.num_frames < 0 or cfg.concurrency < 0 or cfg.num_gpus < 0 or cfg.num_cpus < 0:
        problems.append("num_frames, concurrency, num_cpus and num_gpus must be >= 0")
    if cfg.precision not in ("fp32", "bf16"):
        problems.append(f"precision={cfg.precision!r}: choose fp32 or bf16")
    if problems:
        raise EmbedError("; ".join(problems))
    model = cfg.model
    if not model.startswith("clipvip:"):
        model = _abs(model, "model")
    else:
        model = "clipvip:" + _abs(model.removeprefix("clipvip:"), "model")
    tokenizer = cfg.tokenizer
    if tokenizer and (tokenizer.startswith((".", "/", "~")) or os.path.exists(tokenizer)):
        tokenizer = _abs(os.path.expanduser(tokenizer), "tokenizer")
    return dataclasses.replace(
        cfg, model=model, tokenizer=tokenizer, output_dir=_abs(cfg.output_dir, "output_dir"),
        manifest="::".join(_abs(p, "manifest") for p in cfg.manifest.split("::")) if cfg.manifest else "",
        shards="::".join(_abs(p, "shards") for p in cfg.shards.split("::")) if cfg.shards else "",
        base_dir=os.getcwd())


def describe_model(cfg: EmbedConfig) -> dict[str, Any]:
    """The model's identity and frame sampling, after proving it will load: a model dir's config and
    safetensors header are checked against each other (no weight is read), an official ``.pt`` is
    loaded, and the tokenizer must fit. Raises ``search.model_files.EncoderError`` otherwise."""
    from search import model_files as mf

    files = mf.resolve_model(cfg.model)
    settings = mf.run_settings(files)
    if files.kind == "dir":
        config = mf.check_model_dir(files.path)
    else:
        config = mf.load_model(files, cfg.clip_config or None).config
    mf.checked_tokenizer(files, config, cfg.tokenizer or settings["tokenizer"] or "")
    return {"model_id": files.model_id(),
            "num_frames": int(cfg.num_frames or settings["num_frames"] or mf.DEFAULT_FRAMES)}


def _writer_cfg(cfg: EmbedConfig):
    from pipeline.writer import ShardWriterConfig

    return ShardWriterConfig(output_dir=cfg.output_dir, prefix=parts.PREFIX, overwrite=cfg.overwrite)


def plan_units(cfg: EmbedConfig) -> tuple[list[Any], dict[str, Any]]:
    """The input units and the input set's identity for the fingerprint."""
    from search.embed_worker import Unit
    from shards.format import PatternError, expand_pattern

    if cfg.shards:
        try:
            urls = expand_pattern(cfg.shards, must_exist=True)
        except PatternError as exc:
            raise EmbedError(f"shards: {exc}") from None
        digest = hashlib.blake2b("\n".join(urls).encode(), digest_size=16).hexdigest()
        return [Unit(index=i, url=u) for i, u in enumerate(urls)], {"kind": "shards", "units": len(urls),
                                                                      "digest": digest}
    from pipeline.manifest import ManifestConfig, ManifestError
    from pipeline.plan import plan_manifest

    try:
        plan = plan_manifest(ManifestConfig(path=cfg.manifest), cfg.rows_per_part)
    except ManifestError as exc:
        raise EmbedError(f"manifest: {exc}") from None
    units = [Unit(index=i, slices=plan.slices(i)) for i in range(plan.n_shards)]
    return units, {"kind": "manifest", "rows": plan.n_rows, "digest": plan.digest, "rows_per_part": cfg.rows_per_part}


def _actor_count(cfg: EmbedConfig, n_units: int) -> int:
    import ray

    res = ray.cluster_resources()
    if cfg.concurrency:
        fits = cfg.concurrency
    elif cfg.num_gpus:
        fits = int(res.get("GPU", 0) // cfg.num_gpus)
    else:
        fits = int(res.get("CPU", 1) // max(cfg.num_cpus, 1e-9))
    if fits < 1:
        raise EmbedError(f"the cluster cannot host one embedding actor (num_cpus={cfg.num_cpus:g}, num_gpus="
                         f"{cfg.num_gpus:g}; it offers CPU={res.get('CPU', 0):g} GPU={res.get('GPU', 0):g}); lower them")
    return max(1, min(fits, n_units))


def start_actors(cfg: EmbedConfig, model: dict[str, Any], n_units: int) -> list[Any]:
    """The actor pool, once the first actor has loaded the model: a model or tokenizer the workers
    cannot load (another node that does not see the driver's files) is refused before anything is
    written. An actor that fails any other way is a bug and raises with its traceback."""
    import ray

    from search.embed_worker import EmbedActor

    n = _actor_count(cfg, n_units)
    cls = ray.remote(EmbedActor).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_restarts=-1,
                                         max_task_retries=-1)
    actors = [cls.remote(cfg) for _ in range(n)]
    described = ray.get(actors[0].describe.remote())
    if "problem" in described:
        for a in actors:
            ray.kill(a)
        raise EmbedError(f"the embedding actors cannot load the model ({described['problem']}); every node must see "
                         "the model and tokenizer at the same path")
    if described["model_id"] != model["model_id"] or described["num_frames"] != model["num_frames"]:
        raise RuntimeError(f"the actors loaded {described}, the driver planned {model}")
    return actors


def run(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed ``cfg``'s input into ``cfg.output_dir``; returns the summary (also ``_summary.json``)."""
    from common.jsonio import config_json
    from pipeline import writer as writer_mod
    from pipeline.manifest import ManifestConfig
    from pipeline.run import check_fingerprint, init_ray
    from shards import format as fmt

    cfg = check_config(cfg)
    model = describe_model(cfg)
    init_ray(cfg.ray)
    units, inputs = plan_units(cfg)
    cfg = dataclasses.replace(cfg, manifest_config=ManifestConfig(path=cfg.manifest) if cfg.manifest else None)
    fp = {"format": RUN_FORMAT, **model, "texts": sorted(cfg.texts), "inputs": inputs}
    wcfg = _writer_cfg(cfg)
    check_fingerprint(wcfg, fp, setting="", files="parts", error=EmbedError)
    done = writer_mod.finished_shards(wcfg, range(len(units)))
    todo = [u for u in units if u.index not in done]
    actors = start_actors(cfg, model, len(todo)) if todo else []
    # Every input is checked: from here on the run writes.
    base = cfg.output_dir.rstrip("/")
    writer_mod.remove_stale_temp_files(wcfg)  # also makes the folder
    writer_mod.write_atomic(f"{base}/{fmt.RUN_FILE}", json.dumps(fp, indent=1).encode())
    writer_mod.write_atomic(f"{base}/config.json", config_json(cfg).encode())
    logger.info("%d unit(s): %d to embed, %d already complete", len(units), len(todo), len(done))
    t0 = time.monotonic()
    rows, failed_units = _embed(cfg, actors, todo, done, len(units))
    wall = time.monotonic() - t0
    counts: dict[str, int] = {}
    for st in done.values():
        for k, v in st.counts:
            counts[k] = counts.get(k, 0) + int(v)
    summary = {"units": len(units), "units_complete": len(done), "counts": counts, "model_id": model["model_id"],
               "num_frames": model["num_frames"], "this_run": {"rows": rows, "wall_s": round(wall, 3),
                                                               "clips_per_s": round(rows / wall, 3) if rows else None,
                                                               "failed_units": failed_units},
               "max_failed_fraction": cfg.max_failed_fraction}
    writer_mod.write_atomic(f"{base}/{fmt.SUMMARY_FILE}", json.dumps(summary, indent=1).encode())
    return summary


def _embed(cfg: EmbedConfig, actors: list[Any], todo: list[Any], done: dict[int, writer_mod.ShardCounts],
           n_units: int) -> tuple[int, dict[int, str]]:
    """Hand ``todo`` to the actors one unit at a time; fills ``done`` with each finished unit's counts.
    Returns the clips embedded and the units that failed (unit -> the error's last line; the whole
    error, with the worker's traceback, is logged)."""
    import ray

    from pipeline import writer as writer_mod

    t0 = last_log = time.monotonic()
    rows, failed_units = 0, {}
    pending: dict[Any, tuple[int, Any]] = {}
    queue, free = list(todo), list(actors)
    try:
        while queue or pending:
            while queue and free:
                actor, unit = free.pop(), queue.pop(0)
                pending[actor.embed_unit.remote(unit)] = (unit.index, actor)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=cfg.progress_every_s)
            for ref in ready:
                index, actor = pending.pop(ref)
                free.append(actor)
                try:
                    stats = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failed_units[index] = str(exc).strip().splitlines()[-1][:300]
                    logger.error("unit %d failed: %s", index, exc)
                    continue
                done[index] = writer_mod.summary_fields(stats)
                rows += stats["rows"]
            if time.monotonic() - last_log >= cfg.progress_every_s:
                last_log = time.monotonic()
                logger.info("%d/%d units, %.1f clips/s", len(done), n_units, rows / (last_log - t0))
    finally:
        for a in actors:
            ray.kill(a)
    return rows, failed_units


def outcome_problem(summary: dict[str, Any]) -> str | None:
    """Why the run should end non-zero (missing units, too many failed clips), or None."""
    if summary["units_complete"] != summary["units"]:
        failed = summary["this_run"]["failed_units"]
        why = f"; e.g. unit {next(iter(failed))}: {next(iter(failed.values()))}" if failed else ""
        return (f"only {summary['units_complete']} of {summary['units']} units are complete{why}; rerun the same "
                "command to finish them")
    total = sum(summary["counts"].values())
    failed = summary["counts"].get("failed", 0)
    if total and failed / total > summary["max_failed_fraction"]:
        return (f"{failed} of {total} clips failed to decode, more than max_failed_fraction="
                f"{summary['max_failed_fraction']:g}; each part's _stats.json names them")
    return None
