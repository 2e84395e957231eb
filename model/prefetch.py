"""``DevicePrefetcher``: batch k+1 goes to the accelerator while the model trains on batch k.

The loader ships uint8 clips in pinned memory (``resize_on_device``). Without prefetching, the copy
and the bicubic squash of batch k are queued on the training stream in front of step k, and the host
work of queueing them (one copy per clip, the resize kernels) happens while the GPU sits idle after
the previous step's loss read-back. Here the training step calls ``prefetch()`` once its forward pass
is queued: the host prepares batch k+1 while the GPU runs the forward of step k, and the copies and
resizes run on a side stream; the training stream waits on an event only when it takes batch k+1.
Without ``prefetch()`` calls, ``next()`` prepares each batch itself (no overlap, same batches). On
CPU there are no streams, but the bookkeeping is the same, so the tests exercise it anywhere.

Checkpoints must record where the *trained* batches end, not the prefetched one: the loader state
is snapshotted with each batch and ``state_dict()`` returns the snapshot of the batch last handed
out, so a resume neither skips nor repeats a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class DevicePrefetcher:
    """Wraps a batch iterator; ``prepare(batch)`` moves one batch to the device (and squashes it).

    Errors from the loader (including the end of the data) surface on the call that would have
    returned the failing batch, after every earlier batch has been handed out.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], prepare: Callable[[dict[str, Any]], dict[str, Any]],
                 device: torch.device | str) -> None:
        self.batches, self.prepare = batches, prepare
        device = torch.device(device)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._state = self._loader_state()
        self._ahead: tuple[dict[str, Any], torch.cuda.Event | None, Any] | None = None
        self._error: BaseException | None = None

    def _loader_state(self) -> Any:
        return self.batches.state_dict() if hasattr(self.batches, "state_dict") else None

    def _fetch(self) -> None:
        try:
            raw = next(self.batches)
        except BaseException as exc:  # StopIteration included: re-raised when its turn comes
            self._ahead, self._error = None, exc
            return
        state = self._loader_state()
        if self.stream is None:
            self._ahead = (self.prepare(raw), None, state)
            return
        with torch.cuda.stream(self.stream):
            prepared = self.prepare(raw)
            event = torch.cuda.Event()
            event.record(self.stream)
        self._ahead = (prepared, event, state)

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._ahead is None and self._error is None:
            self._fetch()
        if self._ahead is None:
            error, self._error = self._error, None
            raise error  # type: ignore[misc]
        batch, event, state = self._ahead
        if event is not None:
            current = torch.cuda.current_stream(self.stream.device)
            current.wait_event(event)
            for t in _tensors(batch):
                if t.is_cuda:
                    t.record_stream(current)  # allocated on the side stream, used on this one
        self._state, self._ahead = state, None
        return batch

    def prefetch(self) -> None:
        """Prepare the next batch now (call once the current step's GPU work is queued)."""
        if self._ahead is None and self._error is None:
            self._fetch()

    def state_dict(self) -> Any:
        """The wrapped loader's state after the batch last handed out."""
        return self._state
