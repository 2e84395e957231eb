"""One captioner as a Ray Serve replica, and the application of them: the GPU end of the caption
stage (``pipeline/caption_service.py`` holds its config and the shard tasks' side).

Each request is a few middle frames of one shard task. Serve's ``@serve.batch`` hands the
requests waiting at this replica to ``_generate`` together, up to ``caption.batch_size`` frames
in all, after waiting at most ``caption.batch_wait_s`` when the replica is idle, or as long as the
previous batch took when it is busy; the captioner runs in a thread, so the replica keeps accepting the next
batch's frames meanwhile. The replica counts what it did (batches, frames, busy seconds, how many
shard tasks shared each batch) and reports it to the run's progress actor after every batch.
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


class CaptionReplica:
    """Load the captioner once; ``caption((task id, jpegs))`` -> [(caption, captioner seconds per frame)]."""

    def __init__(self, cfg: CaptionConfig, progress: Any = None) -> None:
        self.captioner, self.info = load(cfg)
        self._generate.set_max_batch_size(cfg.batch_size)
        self._generate.set_batch_wait_timeout_s(cfg.batch_wait_s)
        self.min_wait_s = cfg.batch_wait_s
        self.batch_size = cfg.batch_size
        self.progress = progress
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
        return await self._generate(request)

    # Batch sizes are set from the config in __init__; a batch is counted in frames, not requests.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.1, batch_size_fn=lambda reqs: sum(len(r[1]) for r in reqs))
    async def _generate(self, requests: list[tuple[str, list[bytes]]]) -> list[list[tuple[str, float]]]:
        frames = [jpg for _, jpgs in requests for jpg in jpgs]
        start = time.time()
        texts = await asyncio.to_thread(caption_jpegs, self.captioner, frames)
        end = time.time()
        # Serve forms the next batch while this one runs and closes it after the wait: with a wait
        # shorter than a batch, batches stay small however many frames queue (measured: 64-80 of
        # 128 frames with 120 requests waiting). So the next batch may fill for as long as this
        # one took: the GPU never idles while frames wait, and batches grow with the load.
        self._generate.set_batch_wait_timeout_s(max(self.min_wait_s, end - start))
        self._count(start, end, len(frames), len({task for task, _ in requests}))
        per = (end - start) / len(frames)
        out, i = [], 0
        for _, jpgs in requests:
            out.append([(text, per) for text in texts[i:i + len(jpgs)]])
            i += len(jpgs)
        return out

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
