"""Which rank failed, when a distributed run fails.

When one rank dies, the others learn it from a collective that fails ("Connection closed by peer"
from gloo, a ``DistBackendError`` from NCCL), a message that names an address, not the rank, and
says nothing of why. So every rank that fails leaves a note in the process group's key-value store
(the one ``torchrun`` or ``init_process_group`` already runs): its own error, or "stopped" when
the error was a failed collective. A rank whose collective failed then waits a few seconds for the
notes and raises :class:`PeerFailed`, naming the ranks that failed and why, and the ranks that
left no note (killed: out of memory, a signal, a lost node). The lowest surviving rank reports it;
the others stay quiet. A rank whose own error started it re-raises that error unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

logger = logging.getLogger(__name__)

_STOPPED = "stopped"
# How a failed collective reads: gloo raises a RuntimeError with one of these, NCCL a DistError.
_COMM_MARKERS = ("closed by peer", "connection reset", "broken pipe", "connection refused", "nccl",
                 "remote worker", "timed out", "socket")


class PeerFailed(RuntimeError):
    """Another rank failed, so this one stopped.

    Attributes:
        failed: rank -> its error, for ranks that reported one.
        silent: ranks that left no note (killed without a chance to say why).
        quiet: True on every surviving rank but the lowest, which reports for all.
    """

    def __init__(self, failed: dict[int, str], silent: list[int], rank: int, quiet: bool, checkpoint: str | None,
                 store_lost: bool = False):
        self.failed, self.silent, self.rank, self.quiet = failed, silent, rank, quiet
        parts = [f"rank {r} failed: {why}" for r, why in sorted(failed.items())]
        if silent:
            ranks = ", ".join(str(r) for r in silent)
            parts.append(f"rank{'s' if len(silent) > 1 else ''} {ranks} stopped without a word (killed: out of "
                         "memory, a signal or a lost node? its own log says more)")
        if store_lost:
            parts.append("another rank went away and the ranks' store with it, so it cannot be named (the store "
                         "lives in rank 0 without torchrun's shared store: rank 0 is the likely one)")
        elif not parts:
            parts.append("a collective failed and no rank said why")
        resume = (f"the last checkpoint is {checkpoint}; rerun the same command to resume from it" if checkpoint
                  else "no checkpoint was saved yet; rerun the same command to start again")
        super().__init__(f"{'; '.join(parts)}. Rank {rank} stopped with it; {resume}")


def is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective or store operation that failed because a peer went away."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _COMM_MARKERS)


def _store() -> Any:
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # a torch without it: the ranks cannot be named, the error still stands
        return None


def _key(rank: int) -> str:
    # One namespace per torchrun attempt: notes of a restarted group's predecessor do not count.
    return f"clipvip/failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"


def diagnose(exc: BaseException, rank: int, world_size: int, checkpoint: str | None = None,
             wait_s: float = 5.0) -> PeerFailed | None:
    """Leave this rank's note; return the :class:`PeerFailed` to raise instead of ``exc`` when ``exc``
    is a failed collective, or None when ``exc`` is this rank's own error (re-raise it)."""
    if world_size < 2:
        return None
    comm = is_comm_error(exc)
    store = _store()
    note = _STOPPED if comm else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"
    try:
        if store is not None:
            store.set(_key(rank), note)
    except Exception as err:  # the store went with the failed rank (it held it)
        logger.debug("could not leave a failure note: %s", err)
        store = None
    if not comm:
        return None
    if store is None:
        return PeerFailed({}, [], rank, quiet=False, checkpoint=checkpoint, store_lost=True)
    notes: dict[int, str] = {rank: _STOPPED}
    deadline = time.monotonic() + wait_s
    while store is not None and len(notes) < world_size and time.monotonic() < deadline:
        try:
            for r in range(world_size):
                if r not in notes and store.check([_key(r)]):
                    notes[r] = store.get(_key(r)).decode()
        except Exception:
            break
        if any(v != _STOPPED for v in notes.values()) and len(notes) == world_size:
            break
        time.sleep(0.2)
    failed = {r: v for r, v in notes.items() if v != _STOPPED}
    silent = [r for r in range(world_size) if r not in notes]
    survivors = [r for r, v in notes.items() if v == _STOPPED]
    return PeerFailed(failed, silent, rank, quiet=rank != min(survivors), checkpoint=checkpoint)
