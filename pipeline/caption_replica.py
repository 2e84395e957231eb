"""One captioner as a Ray Serve replica, and the application of them: the GPU end of the caption
stage (``pipeline/caption_service.py`` holds its config and the shard tasks' side).

Each request is a few middle frames of one shard task. The replica batches them continuously: the
moment the captioner is free it takes every waiting frame, up to ``caption.batch_size``, from any
number of requests and shard tasks; an idle replica that gets a first request waits at most
``caption.batch_wait_s`` for a batch to fill. The captioner runs in a thread, so requests keep
arriving while it works.

Serve's own ``@serve.batch`` was used first and measured short: it forms the next batch while the
current one runs and closes it after its wait, so with a wait shorter than a batch, batches stayed
at 4-5 requests of the 8 that fit with 120 waiting at the replica; with a wait as long as a batch,
a replica whose next batch began filling late sat idle for up to that long (gaps of 4-8 s between
3-5 s batches, 0.68-0.79 busy). Everything else (routing, health checks, restarts, autoscaling)
is Serve's.

The replica counts what it did (batches, frames, busy seconds, how many shard tasks shared each
batch) and reports it to the run's progress actor after every batch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import ray
from ray import serve

from pipeline.caption_service import DEPLOYMENT, CaptionConfig, caption_jpegs, load

_Waiting = tuple[str, list[bytes], "asyncio.Future[list[tuple[str, float]]]"]


class CaptionReplica:
    """Load the captioner once; ``caption((task id, jpegs))`` -> [(caption, captioner seconds per frame)]."""

    def __init__(self, cfg: CaptionConfig, progress: Any = None) -> None:
        self.captioner, self.info = load(cfg)
        self.batch_size, self.wait_s = cfg.batch_size, cfg.batch_wait_s
        self.progress = progress
        self.waiting: collections.deque[_Waiting] = collections.deque()
        self.frames_waiting = 0
        self.arrived = asyncio.Event()
        self.batcher: asyncio.Task | None = None
        ctx = ray.get_runtime_context()
        self.stats: dict[str, Any] = {
            "replica": ctx.get_actor_id(), "node_id": ctx.get_node_id(), "batches": 0, "frames": 0, "busy_s": 0.0,
            "first_start": None, "last_end": None, "full_batches": 0, "shared_batches": 0}
        self.recent: collections.deque[tuple[int, int]] = collections.deque(maxlen=64)  # (frames, tasks) per batch

    def describe(self) -> dict[str, Any]:
        """The ``caption_info`` every sample records (model, checkpoint hash, decode settings)."""
        return self.info

    async def caption(self, request: tuple[str, list[bytes]]) -> list[tuple[str, float]]:
        """(sending task id, JPEG frames) -> (caption, captioner seconds per frame) for each frame."""
        task, jpgs = request
        if len(jpgs) > self.batch_size:
            raise ValueError(f"a request of {len(jpgs)} frames is larger than caption.batch_size={self.batch_size}")
        if self.batcher is None or self.batcher.done():
            self.batcher = asyncio.get_running_loop().create_task(self._batches())
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiting.append((task, jpgs, answer))
        self.frames_waiting += len(jpgs)
        self.arrived.set()
        return await answer

    async def _batches(self) -> None:
        """Forever: wait for frames, take up to a batch of them, caption them, answer their requests."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
                # Idle until now: give the batch a moment to fill, unless it is full already.
                deadline = loop.time() + self.wait_s
                while self.frames_waiting < self.batch_size and loop.time() < deadline:
                    self.arrived.clear()
                    try:
                        await asyncio.wait_for(self.arrived.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
            batch: list[_Waiting] = []
            frames = 0
            while self.waiting and frames + len(self.waiting[0][1]) <= self.batch_size:
                item = self.waiting.popleft()
                batch.append(item)
                frames += len(item[1])
            self.frames_waiting -= frames
            await self._run(batch, frames)

    async def _run(self, batch: list[_Waiting], frames: int) -> None:
        start = time.time()
        try:
            texts = await asyncio.to_thread(caption_jpegs, self.captioner, [j for _, jpgs, _ in batch for j in jpgs])
        except Exception as exc:  # noqa: BLE001 - the callers get the captioner's own error
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        end = time.time()
        self._count(start, end, frames, len({task for task, _, _ in batch}))
        per, i = (end - start) / frames, 0
        for _, jpgs, answer in batch:
            if not answer.done():  # a caller that went away cancels its request
                answer.set_result([(text, per) for text in texts[i:i + len(jpgs)]])
            i += len(jpgs)

    def _count(self, start: float, end: float, frames: int, tasks: int) -> None:
        st = self.stats
        st["batches"] += 1
        st["frames"] += frames
        st["busy_s"] += end - start
        st["first_start"] = st["first_start"] or start
        st["last_end"] = end
        st["full_batches"] += frames >= self.batch_size
        st["shared_batches"] += tasks > 1
        self.recent.append((frames, tasks))
        if self.progress is not None:  # one small fire-and-forget call per batch
            self.progress.replica.remote({**st, "recent": list(self.recent)})


# Serve logs every request at INFO; a run of 100M frames would log 100M lines.
_QUIET = {"log_level": "WARNING", "enable_access_log": False}


def deploy(cfg: CaptionConfig, app: str, progress: Any = None) -> None:
    """Start (or update in place) the caption application ``app``.

    The call returns at once, while replicas start: a cluster still growing (autoscaling, a GPU
    node that joins later) places them when it can, and shard tasks start decoding meanwhile.
    Serve runs without its HTTP proxy: shard tasks call the replicas through deployment handles.
    """
    from ray.serve.api import _run  # serve.run waits for every replica; a growing cluster cannot promise that

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(proxy_location="Disabled", logging_config=_QUIET)
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "resources": dict(cfg.resources)},
        # Serve counts requests here, not frames: batch_size requests always fill a batch, and bound
        # a replica's frames to batch_size * frames_per_request. Further requests wait in the callers.
        "max_ongoing_requests": cfg.batch_size,
        "graceful_shutdown_timeout_s": 5.0,
    }
    if cfg.max_concurrency > cfg.concurrency:
        options["autoscaling_config"] = {"min_replicas": cfg.concurrency, "initial_replicas": cfg.concurrency,
                                         "max_replicas": cfg.max_concurrency,
                                         "target_ongoing_requests": 2 * -(-cfg.batch_size // cfg.frames_per_request)}
    else:
        options["num_replicas"] = cfg.concurrency
    _run(serve.deployment(CaptionReplica, **options).bind(cfg, progress), name=app, route_prefix=None,
         logging_config=_QUIET, _blocking=False)
