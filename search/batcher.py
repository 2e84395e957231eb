"""Concurrent text queries encoded together: one model call for every query waiting at that moment.

Queries that arrive while the model is busy queue up; when it is free, up to ``max_batch`` of them
(waiting at most ``max_wait_ms`` after the first for others to join) go through one
``encode_texts`` call on the single model thread. Under load a batch is whatever accumulated
during the previous call, so throughput grows with concurrency at no cost to a lone query.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class TextBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 64, max_wait_ms: float = 2.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.encode, self.max_batch, self.max_wait = encode, max_batch, max_wait_ms / 1e3
        self.on_batch = on_batch or (lambda n: None)
        self.queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="text-encoder")  # the model runs on one thread
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.thread.shutdown(wait=False)

    async def encode_one(self, text: str) -> np.ndarray:
        """The unit vector of ``text`` (float32 [E])."""
        assert self.queue is not None, "start() the batcher first"
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((text, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    batch.append(self.queue.get_nowait() if not self.queue.empty() else
                                 await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            texts = [t for t, _ in batch]
            try:
                vectors = await loop.run_in_executor(self.thread, self.encode, texts)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which re-raises it
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.on_batch(len(batch))
            for (_, f), v in zip(batch, vectors):
                if not f.done():
                    f.set_result(v)
