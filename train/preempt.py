"""Stopping a training run on a signal at a step boundary, every rank at the same step.

A scheduler that preempts a job (SLURM, Kubernetes, a spot instance going away) sends SIGTERM and
kills the job a little later; ``torchrun`` forwards SIGTERM and SIGINT to its workers and waits
``--shutdown-timeout`` seconds (30 by default) before SIGKILL. :class:`StopOnSignal` turns such a
signal into a request: the step under way finishes, the loop saves a checkpoint and raises
:class:`Preempted`, which the command line turns into one line and exit code
:data:`EXIT_PREEMPTED`. Rerunning the same command resumes from that checkpoint.

Ranks must stop at the same step, or the checkpoint's collectives would hang: a signal may reach
one rank only (``kill`` of one worker) or reach the ranks at different points of a step. So each
rank's flag is combined over all ranks (max) once per step on a small gloo group of its own, and
every rank acts on the combined value. The all-reduce of step k is waited for at step k + 1, so
the host never waits for it: the run stops one step after the signal, on every rank alike.

A second signal more than ``force_after_s`` seconds after the first stops at once (a
``KeyboardInterrupt``): a user pressing Ctrl-C again means it. One that comes sooner is taken for
the same signal delivered twice (a terminal's Ctrl-C reaches every process of its group).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": the run stopped on
# a signal after saving a checkpoint, and the same command continues it.
EXIT_PREEMPTED = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a signal. ``checkpoint`` is the folder saved at ``step`` (``None`` when the
    signal came before the first step, with nothing new to save)."""

    def __init__(self, signal_name: str, step: int, total: int, checkpoint: str | None) -> None:
        self.signal_name, self.step, self.total, self.checkpoint = signal_name, step, total, checkpoint
        where = f"after step {step} of {total}" if step else "before the first step"
        saved = f"; saved {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped by {signal_name} {where}{saved}")


@dataclasses.dataclass
class _Pending:
    work: Any
    flag: torch.Tensor


class StopOnSignal:
    """Catch SIGTERM, SIGINT and SIGUSR1 while training; ``requested()`` says, once per step and
    the same on every rank, whether to stop now.

    Use as a context manager around the loop; outside it the previous handlers are back.
    ``group`` is a gloo process group for the per-step flag (``None`` with one process).
    """

    def __init__(self, world_size: int = 1, group: Any = None, force_after_s: float = 2.0, announce: bool = True) -> None:
        self.world_size, self.group, self.force_after_s, self.announce = world_size, group, force_after_s, announce
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}
        self._pending: _Pending | None = None

    # -- the handler ------------------------------------------------------------------------

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is None:
            self.signal_name, self._first_at = signal.Signals(signum).name, time.monotonic()
            # os.write, not logging: the handler may run while the main thread holds logging's lock.
            if self.announce:
                os.write(2, f"clipvip: {self.signal_name} received: finishing this step, then saving a "
                            f"checkpoint (again after {self.force_after_s:g} s to stop at once)\n".encode())
        elif time.monotonic() - self._first_at > self.force_after_s:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if exc_type is None:
            self._drain()  # every rank issued the same all-reduces; the last one is still open
        else:
            self._pending = None  # a failed peer would fail this wait too: leave the first error standing

    # -- the per-step agreement -------------------------------------------------------------

    def requested(self) -> bool:
        """Whether every rank stops after this step (call once per step on every rank)."""
        local = self.signal_name is not None
        if self.world_size == 1:
            return local
        stop = self._drain()
        flag = torch.tensor([int(local)], dtype=torch.int32)
        self._pending = _Pending(dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flag)
        if stop and self.signal_name is None:
            self.signal_name = "a signal to another rank"
        return stop

    def _drain(self) -> bool:
        """Wait for the flag all-reduce issued last step; whether any rank had a signal then."""
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        pending.work.wait()
        return bool(pending.flag.item())


def flag_group(world_size: int) -> Any:
    """A gloo group of all ranks for the stop flag (every rank must call this, in the same order)."""
    if world_size == 1:
        return None
    return dist.new_group(backend="gloo")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of loader worker processes: the trainer decides when to stop.

    ``torchrun`` signals a worker's whole process group and a terminal's Ctrl-C reaches every
    process in the foreground group, loader workers included. A worker killed by it would make the
    trainer fail mid-step instead of finishing it; ignoring the signal leaves the decision to the
    trainer, and the workers end with it (they watch their parent).
    """
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
