"""Resuming a run: the latest checkpoint of ``run_dir``, checked to fit this run on every rank
alike, and its state put back into the model, optimizer and schedule."""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path
from typing import Any

from train import checkpoint as ckpt
from train.loop import Runtime, TrainConfig, gather_objects

logger = logging.getLogger(__name__)


def resume_state(cfg: TrainConfig, rt: Runtime) -> dict[str, Any] | None:
    """The latest checkpoint's state when ``run_dir`` holds one, once it is known to fit this run; else None.

    A run whose ``run_dir`` holds a checkpoint continues from it (``resume``, the default), so the
    same command restarts a preempted run, a requeued job or a ``torchrun --max-restarts`` group
    where it stopped. Every rank reads the checkpoint itself, and the ranks compare what they found
    and the settings they were started with before any uses it.

    Refused (:class:`train.checkpoint.CheckpointError`), on every rank alike: ranks that disagree
    (``run_dir`` not shared by all nodes, different commands), a checkpoint of another world size,
    a checkpoint of a run whose settings differ in anything that changes the numbers (batch size,
    lr, steps, ...) unless ``cfg.resume_changed`` says the change is meant, and ``resume=false``
    with a checkpoint present.
    """
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    last = ckpt.latest(ckpt_dir)
    state, problem = None, ""
    if last is not None:
        try:
            state = ckpt.load(last)
        except ckpt.CheckpointError as exc:
            problem = str(exc)
    found = {"step": state["step"] if state else None, "checkpoint": str(last) if last else "", "problem": problem,
             "config": dataclasses.asdict(cfg), "host": socket.gethostname()}
    check_ranks_agree(gather_objects(found, rt), ckpt_dir)
    if problem:
        raise ckpt.CheckpointError(problem)
    if state is None:
        return None
    if not cfg.resume:
        raise ckpt.CheckpointError(f"resume=false but {ckpt_dir} holds a checkpoint of an earlier run (step "
                                   f"{state['step']}); resume it (drop resume=false), give a new run_dir, or delete "
                                   f"{ckpt_dir} to start over")
    if len(state["loader"]) != rt.world_size:
        raise ckpt.CheckpointError(f"checkpoint {last} was written by {len(state['loader'])} rank(s); resume with "
                                   f"the same number (now {rt.world_size})")
    changes = ckpt.changed_settings(state.get("config", {}), dataclasses.asdict(cfg))
    if changes and not cfg.resume_changed:
        raise ckpt.CheckpointError(f"checkpoint {last} was written with other settings, so the run would not "
                                   f"continue exactly: {'; '.join(changes)}. Resume with the original values, or "
                                   f"pass --resume-changed if the change is meant (a new run_dir starts afresh)")
    if changes:
        logger.warning("resuming %s with changed settings (--resume-changed): %s", last, "; ".join(changes))
    if rt.rank == 0:
        logger.info("run_dir holds checkpoint %s: resuming from step %d", last, state["step"])
    return state


def check_ranks_agree(found: list[dict[str, Any]], ckpt_dir: Path) -> None:
    """Refuse ranks that would start from different places or with different settings.

    ``found``: per rank (in rank order) the step of the checkpoint it found (``None``: none), its
    path, a problem reading it, its settings and its host. Every rank runs this on the same list,
    so every rank refuses alike.
    """
    first = found[0]
    for rank, other in enumerate(found[1:], start=1):
        changes = ckpt.changed_settings(first["config"], other["config"], safe=())
        if changes:
            raise ckpt.CheckpointError(f"rank {rank} was started with other settings than rank 0 ({'; '.join(changes)}); "
                                       "start every rank with the same command")
    where = [(f["step"], f["checkpoint"], bool(f["problem"])) for f in found]
    if len(set(where)) > 1:
        def says(rank: int, f: dict[str, Any]) -> str:
            if f["problem"]:
                return f"rank {rank} ({f['host']}) cannot read {f['checkpoint']}"
            if f["step"] is None:
                return f"rank {rank} ({f['host']}) finds no checkpoint"
            return f"rank {rank} ({f['host']}) finds step {f['step']} ({f['checkpoint']})"

        raise ckpt.CheckpointError(
            f"the ranks disagree on where to start in {ckpt_dir}: "
            + "; ".join(says(r, f) for r, f in enumerate(found))
            + ". run_dir must be one folder every node shares (a network file system), not a folder per node")


def restore(state: dict[str, Any], raw_model, optimizer, scheduler, *, new_hyperparameters: bool = False) -> None:
    """Load model, optimizer and scheduler state from a checkpoint.

    Loading puts the checkpoint's lr, betas, eps and weight decay back into the optimizer; with
    ``new_hyperparameters`` (a deliberate change, ``--resume-changed``) the configured ones replace
    them again, and the lr follows the new schedule from the resumed step.
    """
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ckpt.CheckpointError(f"the checkpoint does not fit this model or optimizer: {exc}".replace("\n", " "))
    if not new_hyperparameters:
        return
    for group, new in zip(optimizer.param_groups, fresh):
        group.update({k: new[k] for k in ("weight_decay", "betas", "eps", "initial_lr") if k in new})
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
