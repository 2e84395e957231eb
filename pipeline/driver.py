"""The curation driver's loop: submit shard tasks, watch them and the caption replicas, log progress.

Everything here is metadata: shard numbers, task references, row counts and the replicas' own
counters. ``Driver.run`` keeps at most ``writer.max_in_flight`` shard tasks submitted, logs a
progress line every ``progress_every_s``, says what the run waits for when no row finished for
``stall_warn_s``, and gives up after ``stall_timeout_s`` without progress (finished shards stay;
the rerun does the rest). The caption application (GPU layout) is started before the first task
and deleted when the loop ends, however it ends.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import Counter
from typing import Any

from pipeline import caption_service
from pipeline import writer as writer_mod
from pipeline.plan import Plan
from pipeline.shard_task import RunProgress, ShardJob, process_shard

logger = logging.getLogger(__name__)


def describe_demand(demand: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(demand.items())) or "no resources"


def free_resources() -> dict[str, float]:
    import ray

    return {k: round(v, 2) for k, v in ray.available_resources().items()
            if not k.startswith("node:") and "memory" not in k}


class Progress:
    """Rows, failures and shards so far; logs at a fixed cadence and says what a stalled run waits for."""

    def __init__(self, total_rows: int, total_shards: int, every_s: float, stall_s: float):
        self.total_rows, self.total_shards = total_rows, total_shards
        self.every_s, self.stall_s = every_s, stall_s
        self.t0 = self.last_log = self.last_change = time.monotonic()
        self.rows = self.failed = self.shards = 0
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.replicas: list[dict[str, Any]] = []

    @property
    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.t0, 1e-9)

    def rows_seen(self, rows: int, failed: int) -> None:
        if rows != self.rows:
            self.last_change = time.monotonic()
        self.rows, self.failed = rows, failed

    @property
    def idle_s(self) -> float:
        return time.monotonic() - self.last_change

    def shard_done(self, stats: dict[str, Any]) -> None:
        self.last_change = time.monotonic()
        self.shards += 1
        self.status.update(stats["counts"])
        self.errors.update(stats.get("failures", {}))

    def due(self) -> bool:
        return time.monotonic() - self.last_log >= self.every_s

    def caption_line(self) -> str:
        """The replicas' utilisation: frames, busy share of the wall time since each started, mean batch."""
        if not self.replicas:
            return ""
        now = time.time()
        frames = sum(r["frames"] for r in self.replicas)
        batches = sum(r["batches"] for r in self.replicas)
        busy = [r["busy_s"] / max(now - r["first_start"], 1e-9) for r in self.replicas if r["first_start"]]
        return (f"; captions: {frames} frames from {len(self.replicas)} replica(s), mean batch "
                f"{frames / max(batches, 1):.1f}, busy {100 * sum(busy) / max(len(busy), 1):.0f}%")

    def log(self, waiting: str) -> None:
        self.last_log = time.monotonic()
        logger.info("%d/%d rows, %.1f clips/s, %d failed, %d/%d shards written%s", self.rows, self.total_rows,
                    self.rate, self.failed, self.shards, self.total_shards, self.caption_line())
        if self.idle_s >= self.stall_s:
            logger.warning("0 rows in the last %.0f s; %s", self.idle_s, waiting)


class Driver:
    """The bookkeeping of one run's shard tasks and caption application."""

    def __init__(self, cfg: Any, plan: Plan, todo: list[int], slots: int, stats: dict[str, int], base_dir: str,
                 task_demand: dict[str, float]):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.cfg, self.plan, self.todo, self.stats = cfg, plan, todo, stats
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.counter = ray.remote(RunProgress).options(num_cpus=0, scheduling_strategy=here).remote()
        self.app = ""
        if cfg.caption.uses_actors:
            self.app = caption_service.app_name(cfg.writer.output_dir, cfg.writer.prefix)
            from pipeline.caption_replica import deploy  # Ray Serve is imported only for this layout

            deploy(cfg.caption, self.app, self.counter)
            logger.info("caption service %s: %d replica(s) of %s, each needing %s, batches of up to %d frames",
                        self.app, cfg.caption.concurrency, cfg.caption.model,
                        describe_demand(cfg.caption.replica_demand()), cfg.caption.batch_size)
        self.job = ShardJob(manifest=cfg.manifest, frames=cfg.frames, caption=cfg.caption, writer=cfg.writer,
                            base_dir=base_dir, service=self.app,
                            scratch=writer_mod.scratch_dir(cfg.writer.output_dir, cfg.writer.prefix),
                            log_level=logging.getLogger().getEffectiveLevel())
        self.task = ray.remote(process_shard).options(num_cpus=cfg.writer.num_cpus, resources=cfg.writer.resources,
                                                      num_gpus=task_demand.get("GPU", 0), max_retries=3)
        # Twice what can run at once keeps every slot fed without a queue of specs in the driver.
        self.max_in_flight = cfg.writer.max_in_flight or min(2 * slots, 4096)
        c = cfg.caption
        # Full batches need a batch on each GPU and the next one waiting: frames the shard tasks hold.
        # A task holds at most its window, and never more than its shard's rows.
        need, held = 2 * c.concurrency * c.batch_size, min(c.max_in_flight_per_task, cfg.writer.samples_per_shard)
        if self.app and slots * held < need:
            fix = (f"raise caption.max_in_flight_per_task to {-(-need // slots)}"
                   if held == c.max_in_flight_per_task else
                   f"write longer shards (writer.samples_per_shard={cfg.writer.samples_per_shard})")
            logger.warning("%d shard task(s) at once holding at most %d frames each cannot keep %d replica(s) in "
                           "full batches of %d: %s or run more shard tasks", slots, held, c.concurrency,
                           c.batch_size, fix)
        self.progress = Progress(sum(plan.shard_rows(s) for s in todo), len(todo), cfg.progress_every_s,
                                 cfg.stall_warn_s)
        self.failed_shards: dict[int, str] = {}
        self.done_stats: dict[int, writer_mod.ShardCounts] = {}  # of what each finished task returned
        self.service_failure = ""

    def get(self, ref: Any) -> Any:
        import ray

        value = ray.get(ref)
        self.stats["bytes_received"] = self.stats.get("bytes_received", 0) + len(pickle.dumps(value))
        self.stats["objects_received"] = self.stats.get("objects_received", 0) + 1
        return value

    def submit(self, shard: int) -> Any:
        return self.task.remote(self.job, shard, self.plan.slices(shard), self.plan.shard_rows(shard), self.counter)

    def service_line(self) -> str:
        """How the caption replicas stand, for the progress and stall lines ("" without replicas)."""
        if not self.app:
            return ""
        state = caption_service.service_state(self.app, self.cfg.caption)
        if state.failed:
            self.service_failure = f"the caption replicas cannot start: {state.reason()}"
        line = f"caption service {self.app}: {state.running} of {state.wanted} replica(s) running"
        if state.running < state.wanted:
            line += (f", {state.wanted - state.running} waiting for a node with "
                     f"{describe_demand(self.cfg.caption.replica_demand())} (caption.num_gpus, num_cpus, resources)")
        if state.running == 0:
            line += "; no frame can be captioned until one runs"
        return line

    def waiting_for(self, pending: dict[Any, int]) -> str:
        parts = [f"waiting for {len(pending)} shard task(s)", self.service_line()]
        return "; ".join(p for p in parts if p) + f"; free now: {free_resources()}"

    def poll_progress(self, pending: dict[Any, int]) -> None:
        import ray

        ref = self.counter.snapshot.remote()
        ready, _ = ray.wait([ref], timeout=5.0)
        if ready:
            rows, failed, self.progress.replicas = self.get(ref)
            self.progress.rows_seen(rows, failed)
        self.progress.log(self.waiting_for(pending))

    def give_up(self, pending: dict[Any, int], unsent: list[int], why: str) -> None:
        """Stop the run: cancel its shard tasks (their temporary files are removed at the end) and
        record why each unfinished shard is missing. Finished shards stay as they are."""
        import ray

        logger.error("giving up: %s; %d shard(s) left for the rerun", why, len(pending) + len(unsent))
        for ref, shard in pending.items():
            ray.cancel(ref, force=True)
            self.failed_shards[shard] = why
        for shard in unsent:
            self.failed_shards[shard] = why
        pending.clear()

    def run(self) -> Progress:
        try:
            progress = self._loop()
        except BaseException:
            self.close(wait=False)  # interrupted: be quick, the caller is on its way out
            raise
        self.close()
        return progress

    def _loop(self) -> Progress:
        import ray

        queue = iter(self.todo)
        pending: dict[Any, int] = {}
        more = True
        while more or pending:
            while more and len(pending) < self.max_in_flight:
                shard = next(queue, None)
                if shard is None:
                    more = False
                    break
                pending[self.submit(shard)] = shard
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(self.cfg.progress_every_s, 5.0))
            for ref in ready:
                shard = pending.pop(ref)
                try:
                    done = self.get(ref)
                    self.progress.shard_done(done)
                    self.done_stats[shard] = writer_mod.summary_fields(done)
                except (ray.exceptions.RayError, OSError) as exc:
                    # A shard whose task failed after Ray's retries: the others go on, the rerun redoes it.
                    self.failed_shards[shard] = str(exc).strip().splitlines()[-1][:300]
                    logger.error("shard %d failed: %s", shard, self.failed_shards[shard])
            if self.progress.due():
                self.poll_progress(pending)
                stalled = self.cfg.stall_timeout_s and pending and self.progress.idle_s >= self.cfg.stall_timeout_s
                if self.service_failure or stalled:
                    why = self.service_failure or (f"stalled: no row finished in {self.progress.idle_s:.0f} s "
                                                   f"(stall_timeout_s); {self.waiting_for(pending)}")
                    self.give_up(pending, list(queue), why)
                    more = False
        rows, failed, self.progress.replicas = self.get(self.counter.snapshot.remote())
        self.progress.rows_seen(rows, failed)
        return self.progress

    def close(self, wait: bool = True) -> None:
        """Delete the caption application and the progress actor (also when the loop raised)."""
        import ray

        if self.app:
            try:
                caption_service.teardown(self.app, wait)
            except Exception as exc:  # noqa: BLE001 - the run's outcome matters more than a failed clean-up
                logger.warning("could not delete the caption service %s (%s); `serve delete %s` removes it",
                               self.app, exc, self.app)
            self.app = ""
        ray.kill(self.counter)
