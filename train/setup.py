"""Everything around the train loop: tokenizer, model, data, optimizer, resume, evaluation, saving.

Kept apart from :mod:`train.loop` so the loop itself reads top to bottom in one screen.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from common.errors import UserError
from train import checkpoint as ckpt
from train.loop import (NonFiniteError, Runtime, TrainConfig, gather_objects, log_metrics, setup_distributed,
                         train_loop)
from train.model_init import (ModelInitError, build_model, build_tokenizer, check_tokenizer_fits,  # noqa: F401
                              tokenizer_of)
from train.preempt import Preempted, StopOnSignal, ignore_stop_signals
from train.resume import check_ranks_agree, restore, resume_state  # noqa: F401

logger = logging.getLogger(__name__)


def _barrier(rt: Runtime) -> None:
    if rt.world_size > 1:
        dist.barrier()


def _eval_batches(cfg: TrainConfig, split_cfg) -> Any:
    from torch.utils.data import DataLoader

    if cfg.eval.shards:
        from train.data import HeldOutShards

        ds = HeldOutShards(cfg.eval.shards, text_field=cfg.eval.text_field, num_frames=cfg.data.num_frames,
                           image_size=cfg.data.image_size, batch_size=split_cfg.batch_size)
        return DataLoader(ds, batch_size=None, num_workers=0)
    from train.retrieval_data import RetrievalEvalDataset, collate_eval, load_manifest

    entries = load_manifest(split_cfg.manifest, split_cfg.dataset, split_cfg.video_root)
    ds = RetrievalEvalDataset(entries, split_cfg.num_frames, split_cfg.image_size)
    return DataLoader(ds, batch_size=split_cfg.batch_size, num_workers=split_cfg.num_workers, collate_fn=collate_eval,
                      worker_init_fn=ignore_stop_signals)


class TrainingRun:
    """One training run in named steps: ``prepare`` (runtime, checks, config.json), ``build``
    (tokenizer, model, loss, data, optimizer and schedule, restored on resume), then ``train``
    (the loop of :mod:`train.loop`, with ``evaluate`` and ``save`` as its hooks) and ``finish``.
    The state the hooks share lives on the instance, not in closures."""

    def __init__(self, cfg: TrainConfig) -> None:
        from train.tasks import get_task

        self.cfg, self.task = cfg, get_task(cfg)
        self.run_dir = Path(cfg.run_dir)
        self.best: dict[str, Any] = {"value": float("-inf"), "step": 0}
        self.last_metrics: dict[str, float] = {}
        self.start_step, self.loader_state = 0, None

    # -- steps ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Checks, then the runtime; nothing is written before the config, its inputs and a resume are
        known to fit (:meth:`train.loop.TrainConfig.check`, :func:`resume_state`) and the model and
        tokenizer are known to load (a configured tokenizer is loaded here, and the model with it)."""
        from common.jsonio import config_json
        from train.tasks import warn_ignored

        cfg = self.cfg
        cfg.check()
        self.rt = rt = setup_distributed(cfg.device)
        rt.precision = cfg.precision
        rt.image_size = self.task.data(cfg).image_size
        if rt.rank == 0:
            warn_ignored(cfg)
        self.state = resume_state(cfg, rt)  # refused before anything is written if the checkpoint does not fit
        self.tokenizer = self.raw_model = None
        if cfg.model.tokenizer:
            self.tokenizer = build_tokenizer(cfg, rt, self.run_dir)
            self.raw_model = self._model()
        elif cfg.model.init:
            right = tokenizer_of(cfg.model.init)
            raise ModelInitError(f"model.init={cfg.model.init!r} needs the tokenizer it was trained with, and "
                                 "model.tokenizer is empty (which trains a new one for a random model); set "
                                 + (f"model.tokenizer={right}" if right else
                                    "model.tokenizer=<its run_dir>/tokenizer, or the CLIP tokenizer it started from"))
        config = config_json(cfg)
        if rt.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(config)
        _barrier(rt)
        self._check_shared_run_dir(config)

    def _check_shared_run_dir(self, config: str) -> None:
        """Every rank must see the ``config.json`` rank 0 just wrote: checkpoints, the debug tokenizer
        and resumption all live in one ``run_dir`` that every node shares."""
        rt = self.rt
        if rt.world_size == 1:
            return
        path = self.run_dir / "config.json"
        sees = gather_objects((path.is_file() and path.read_text() == config, socket.gethostname()), rt)
        blind = [f"rank {r} ({host})" for r, (ok, host) in enumerate(sees) if not ok]
        if blind:
            raise ckpt.CheckpointError(f"{', '.join(blind)} cannot see {path}, which rank 0 ({sees[0][1]}) wrote: "
                                       "run_dir must be one folder every node shares (a network file system), not "
                                       "a folder per node")

    def _model(self):
        # The seed sets a random model's initial weights: the same on every rank and every restart.
        torch.manual_seed(self.cfg.seed)
        return build_model(self.cfg, self.tokenizer).to(self.rt.device)

    def build(self) -> None:
        """Tokenizer, model, loss, data, optimizer and schedule; on resume, their saved state."""
        from model.loss import OCLLoss
        from train.log import NullLogger, RunLogger
        from train.optim import build_optimizer, build_scheduler
        from train.tasks import steps_for

        cfg, rt, task = self.cfg, self.rt, self.task
        if self.raw_model is None:
            self.tokenizer = build_tokenizer(cfg, rt, self.run_dir)
            self.raw_model = self._model()
        self.loss_fn = OCLLoss(task.loss_terms(cfg), gather_grad=cfg.gather_grad)
        n_items, dataset = task.dataset(cfg)
        self.total = steps_for(cfg, task, n_items, rt.world_size)
        self.optimizer = build_optimizer(self.raw_model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.total, cfg.optim)
        if self.state is not None:
            self._restore()
        self.batches = task.batches(cfg, dataset, self.tokenizer, rt, self.loader_state)
        model = torch.compile(self.raw_model) if cfg.model.compile else self.raw_model
        if rt.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.model = model
        # Rows past the resumed step are replayed now, so they go (a fresh start keeps no earlier rows).
        self.run_log = RunLogger(self.run_dir, cfg.tensorboard,
                                 keep_until=self.start_step if self.state is not None else -1) \
            if rt.rank == 0 else NullLogger()

    def _restore(self) -> None:
        state, cfg = self.state, self.cfg
        if state.get("total_steps", self.total) != self.total and not cfg.resume_changed:
            raise ckpt.CheckpointError(
                f"the checkpoint's run had {state['total_steps']} steps and this one has {self.total} (the data "
                f"size changed?): the schedule would differ; pass --resume-changed if that is meant")
        restore(state, self.raw_model, self.optimizer, self.scheduler, new_hyperparameters=cfg.resume_changed)
        self.start_step, self.loader_state, self.best = state["step"], state["loader"][self.rt.rank], state["best"]
        ckpt.set_rng_state(state["rng"][self.rt.rank])
        logger.info("resumed from step %d of %s", self.start_step, self.run_dir / "checkpoints")

    def train(self) -> list[float]:
        """The loop, under :class:`train.preempt.StopOnSignal`: a signal ends it at a step boundary
        with a checkpoint (:class:`train.preempt.Preempted`)."""
        if self.start_step >= self.total:
            if self.rt.rank == 0:
                logger.info("%s already holds the final checkpoint (step %d): nothing to train",
                            self.run_dir / "checkpoints", self.total)
            return []
        try:
            with StopOnSignal(self.rt.world_size, self.rt.flag_group, announce=self.rt.rank == 0) as stop:
                if self.start_step == 0 and self.cfg.eval.at_start:
                    self.evaluate(0)
                losses = train_loop(cfg=self.cfg, rt=self.rt, per_rank=self.task.data(self.cfg).batch_size,
                                    model=self.model, raw_model=self.raw_model, loss_fn=self.loss_fn,
                                    optimizer=self.optimizer, scheduler=self.scheduler, batches=self.batches,
                                    start_step=self.start_step, total_steps=self.total, save=self.save,
                                    evaluate=self.evaluate, run_log=self.run_log, stop=stop)
        except (NonFiniteError, Preempted):
            self.run_log.close()
            raise
        if self.start_step < self.total:
            self.save(self.total)
            self.evaluate(self.total)
        return losses

    def finish(self, losses: list[float]) -> dict[str, Any]:
        from train.log import plot_losses, strict_dumps

        if self.rt.rank == 0:
            self.run_log.close()
            if (self.run_dir / "metrics.jsonl").is_file():
                plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curve.png")
            # Strict JSON: a best score never set is -inf in memory and null on disk.
            (self.run_dir / "final_metrics.json").write_text(
                strict_dumps({"metrics": self.last_metrics, "best": self.best}, indent=2) + "\n")
        return {"run_dir": str(self.run_dir), "steps": self.total, "losses": losses, "metrics": self.last_metrics,
                "best": self.best}

    # -- hooks of the loop ------------------------------------------------------------------

    def evaluate(self, step: int) -> None:
        """Held-out retrieval (rank 0); a new best on the selection metric is exported to ``best/``,
        unless the set is a test split."""
        from train.evaluate import evaluate_retrieval

        cfg, rt = self.cfg, self.rt
        if not (cfg.eval.shards or cfg.eval.manifest.manifest) or cfg.eval.every <= 0:
            return
        if rt.rank == 0:
            split = "heldout" if cfg.eval.shards else cfg.eval.split
            split_cfg = cfg.eval.manifest
            metrics = evaluate_retrieval(self.raw_model, _eval_batches(cfg, split_cfg), self.tokenizer,
                                         max_text_len=split_cfg.max_text_len, image_size=rt.image_size,
                                         device=rt.device, precision=rt.precision)
            log_metrics(self.run_log, step, metrics, split, rt.rank)
            self.last_metrics = metrics
            if split != "test" and metrics[cfg.eval.select_metric] > self.best["value"]:
                self.best.update(value=metrics[cfg.eval.select_metric], step=step)
                self._export_best(split)
        _barrier(rt)

    def _export_best(self, split: str) -> None:
        from common.files import replace_dir, temp_dir_beside
        from model.convert import save_checkpoint
        from train.log import strict_dumps

        # Built aside and moved in whole: a crash mid-export never leaves a half-written best/.
        tmp = temp_dir_beside(self.run_dir / "best")
        save_checkpoint(self.raw_model, tmp)
        (tmp / "selection.json").write_text(strict_dumps(
            {"split": split, "metric": self.cfg.eval.select_metric, **self.best}) + "\n")
        replace_dir(tmp, self.run_dir / "best")

    def save(self, step: int) -> Path:
        """A checkpoint with every rank's loader position and RNG state; returns its folder."""
        rt = self.rt
        loaders = gather_objects(self.batches.state_dict(), rt)
        rngs = gather_objects(ckpt.rng_state(), rt)
        if rt.rank == 0:
            ckpt.save(self.run_dir / "checkpoints", step, {
                "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": step, "total_steps": self.total,
                "loader": loaders, "rng": rngs, "best": self.best, "config": dataclasses.asdict(self.cfg)},
                model_for_export=self.raw_model, keep=self.cfg.keep_checkpoints)
        _barrier(rt)
        return ckpt.folder(self.run_dir / "checkpoints", step)


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Prepare, build, train, finish (see :class:`TrainingRun`).

    In a distributed run a failed collective becomes :class:`train.peers.PeerFailed`, naming the
    rank that failed; a rank's own error stands as it is (after leaving its note for the others).
    """
    from train.peers import diagnose

    run = TrainingRun(cfg)
    try:
        run.prepare()
        run.build()
        return run.finish(run.train())
    except (Exception, KeyboardInterrupt) as exc:
        rt = getattr(run, "rt", None)
        if rt is None or isinstance(exc, Preempted):
            raise
        last = ckpt.latest(run.run_dir / "checkpoints")
        # torchrun signals the survivors of a failed rank: let it not cut the report short.
        with StopOnSignal(announce=False):
            peer = diagnose(exc, rt.rank, rt.world_size, str(last) if last else None)
        if peer is None:
            raise
        raise peer from exc
    finally:
        batches = getattr(run, "batches", None)
        if batches is not None:
            batches.close()


def run(cfg: TrainConfig) -> dict[str, Any]:
    """The whole run: set-up, the loop (:mod:`train.loop`) and wrap-up. Returns final metrics and paths."""
    return run_training(cfg)
