"""Post-pretraining and retrieval fine-tuning of CLIP-ViP: the config tree and the one train loop.

``run(cfg)`` is the whole run: set up (distributed, tokenizer, model, data, optimizer, resume),
then :func:`train_loop`, then the final checkpoint, evaluation and loss plot. Launch with
``torchrun --nproc_per_node N -m jobs.pretrain ...`` for DDP (NCCL on CUDA, gloo on CPU) or as a
plain process.

What N ranks compute: the contrastive loss all-gathers features, so every rank computes the loss
of the global batch, the ranks' batches side by side. One N-rank step therefore equals one
process's step on that combined batch: exactly with ``gather_grad=sum``, and with each tower's
gradient 1/N of it with ``mean`` (the official code's). Which samples form the global batch
depends on the task. Fine-tuning splits each global batch of ``batch_size x N`` videos among the
ranks, so N ranks see the batches that one process with ``batch_size x N`` sees. Pretraining
reads shards: each rank's readers own their shards, so the global batch is made of N readers'
samples and an N-rank run sees other batches than a one-process run; the two are alike in
distribution, not step for step (and a checkpoint resumes only with the world size it was
written with).

A SIGTERM, SIGINT or SIGUSR1 stops the loop at a step boundary on every rank, after a checkpoint
(:mod:`train.preempt`); the same command resumes from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import torch
import torch.distributed as dist

from train.checks import not_one_of, out_of_range
from train.data import ShardDataConfig
from train.evaluate import autocast_for, format_metrics
from train.optim import OptimConfig
from train.preempt import Preempted, StopOnSignal, flag_group
from train.retrieval_data import RetrievalDataConfig
from train.video import preprocess_on_device

logger = logging.getLogger(__name__)


# model.init's sources: "" (random weights of model.flavour) or one of these prefixes.
INIT_KINDS = ("hf", "clipvip", "ckpt")


@dataclasses.dataclass(kw_only=True)
class ModelSection:
    flavour: str = "debug"  # model.clip_vip.FLAVOURS
    init: str = ""  # "" random | "hf:<CLIP dir or hub id>" | "clipvip:<official .pt>" | "ckpt:<model dir>"
    tokenizer: str = ""  # CLIP tokenizer dir or hub id; "" trains a tiny BPE on the shard texts (debug only)
    # init=clipvip:<.pt> of an architecture other than the released B/32 and B/16: the transformers CLIP
    # config.json it was built from (its head counts cannot be read from the weights' shapes).
    clip_config: str = ""
    attention: str = "proxy"
    # Random-init only: None keeps the spec's 4.60; models trained from scratch (the demo) may start
    # at CLIP's from-scratch value ln(1/0.07) = 2.66, since 4.60 assumes already-aligned features.
    logit_scale_init: float | None = None
    temporal_init_std: float = 0.0  # random-init only: see CLIPViPConfig.temporal_init_std
    gradient_checkpointing: bool = False
    compile: bool = False

    def init_source(self) -> tuple[str, str]:
        """``model.init`` split into its kind (``""``, ``hf``, ``clipvip``, ``ckpt``) and its path or id."""
        kind, _, where = self.init.partition(":")
        return kind, where

    def init_problem(self) -> str | None:
        """Why ``model.init`` names no source this code knows, or None."""
        if self.init and self.init_source()[0] not in INIT_KINDS:
            return (f"model.init={self.init!r}: use '' (random weights of model.flavour), 'hf:<CLIP dir or hub id>', "
                    "'clipvip:<official .pt>' or 'ckpt:<model dir>'")
        return None

    def problems(self) -> list[str]:
        """Names this code does not know, each named with the choices; empty when none."""
        from model.clip_vip import ATTENTION_MODES, FLAVOURS

        p = not_one_of("model.attention", self.attention, ATTENTION_MODES)
        if not self.init:
            p += not_one_of("model.flavour", self.flavour, sorted(FLAVOURS))
        return p + ([self.init_problem()] if self.init_problem() else [])


@dataclasses.dataclass(kw_only=True)
class EvalSection:
    """Held-out retrieval evaluation during training (shards for pretraining, a manifest otherwise)."""

    every: int = 1000  # steps, and at the end of training; 0 turns evaluation off (the set is not read)
    at_start: bool = True
    shards: str = ""  # held-out shards
    text_field: str = "caption.txt"  # see train.data.HeldOutShards
    manifest: RetrievalDataConfig = dataclasses.field(default_factory=lambda: RetrievalDataConfig(num_workers=0))
    # What the manifest is. "val": a validation split; each new best of ``select_metric`` on it is
    # exported to ``best/``. "test": a test split (zero-shot monitoring in pretraining, as the paper
    # reports MSR-VTT 1k-A); its numbers are logged and never pick a checkpoint.
    split: str = "val"
    select_metric: str = "t2v_r1"  # higher is better: one of SELECT_METRICS

    def problems(self) -> list[str]:
        """Settings that would evaluate nothing or pick the wrong checkpoint, each named; empty when none."""
        p = out_of_range("eval.every", self.every, 0, hint=" (0 turns it off)")
        if self.split not in ("val", "test"):
            p.append(f"eval.split={self.split!r}: choose val (picks best/) or test (reported only)")
        p += not_one_of("eval.select_metric", self.select_metric, SELECT_METRICS, " (higher is better)")
        return p + self.manifest.problems("eval.manifest")


# Metrics that can pick a checkpoint: recalls, where higher is better (ranks are lower-better).
SELECT_METRICS = tuple(f"{dsl}{d}_r{k}" for dsl in ("", "dsl_") for d in ("t2v", "v2t") for k in (1, 5, 10))


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    task: str = "pretrain"  # pretrain (shards, OCL) | finetune (retrieval manifest, loss 'vs')
    run_dir: str = "runs/debug"
    seed: int = 42
    steps: int = 0  # total optimizer steps; 0 derives them from epochs and the data size
    epochs: float = 1.0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 autocast on CUDA | fp32
    loss_terms: tuple[str, ...] = ("vsc", "fc")
    # How the ranks' gradients of the all-gathered features combine (model/loss.py): "mean" as the
    # official code (the towers' gradients are 1/ranks of one process's on the global batch), "sum"
    # for exactly one process's gradient. One process: no difference.
    gather_grad: str = "mean"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: ShardDataConfig = dataclasses.field(default_factory=ShardDataConfig)
    finetune: RetrievalDataConfig = dataclasses.field(default_factory=RetrievalDataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True
    # Continue from run_dir's latest checkpoint when it holds one, so the same command restarts a
    # preempted or requeued run where it stopped; false refuses a run_dir that holds a checkpoint.
    resume: bool = True
    # Resume although settings that change the numbers (batch size, lr, steps, ...) differ from the
    # checkpoint's; without it such a resume is refused, naming the differences.
    resume_changed: bool = False

    def data_section(self) -> tuple[str, ShardDataConfig | RetrievalDataConfig]:
        """The data section this run's task reads, with its name: ``data`` (shards) or ``finetune``."""
        return ("finetune", self.finetune) if self.task == "finetune" else ("data", self.data)

    def problems(self) -> list[str]:
        """Every value out of range and every unknown name in the tree, each named with what is
        allowed (empty when none). Files are :meth:`check`'s business too, but not this method's."""
        from model.loss import GATHER_GRAD, TERMS

        p = not_one_of("task", self.task, ("pretrain", "finetune"))
        p += self.optim.problems()
        p += out_of_range("steps", self.steps, 0, hint=" (0 derives the steps from epochs)")
        if self.steps == 0:
            p += out_of_range("epochs", self.epochs, 0, lo_open=True, hint=" (or set steps=<N>)")
        for key in ("checkpoint_every", "keep_checkpoints", "log_every"):
            p += out_of_range(key, getattr(self, key), 0, hint=" (0 turns it off)")
        p += not_one_of("device", self.device, ("auto", "cpu", "cuda"))
        p += not_one_of("precision", self.precision, ("bf16", "fp32"))
        p += self.model.problems() + self.eval.problems()
        # Only a pretraining run's loss terms come from the config; fine-tuning always trains "vs".
        if self.task == "pretrain" and (not self.loss_terms or any(t not in TERMS for t in self.loss_terms)):
            p.append(f"loss_terms={list(self.loss_terms)!r}: give names from {', '.join(TERMS)}, e.g. loss_terms=vsc,fc")
        if self.gather_grad not in GATHER_GRAD:
            p.append(f"gather_grad={self.gather_grad!r}: choose mean (as the official code) or sum (one process's "
                     "gradient)")
        if self.eval.split == "test" and self.task == "finetune" and self.eval.manifest.manifest:
            p.append("eval.split=test: fine-tuning picks its checkpoint on a validation split; give one as "
                     "eval.manifest.manifest with eval.split=val, and test the result once with 'clipvip evaluate'")
        name, section = self.data_section()
        return p + section.problems(name)

    def check(self, world_size: int | None = None) -> None:
        """Raise :class:`common.errors.UserError` listing every problem with the values
        (:meth:`problems`) and the inputs (files that are not where the config says, fewer shards than
        readers: :func:`train.inputs.input_problems`). Every run calls it before it writes anything.

        Args:
            world_size: ranks sharing the shards (default: ``WORLD_SIZE``, 1 outside torchrun).
        """
        from common.errors import UserError
        from train.inputs import input_problems

        problems = self.problems()
        problems += input_problems(self, int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size)
        if problems:
            raise UserError("; ".join(problems))


class NonFiniteError(RuntimeError):
    """The loss or the gradient of a step is NaN/inf; the optimizer step was not taken."""


@dataclasses.dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    precision: str
    image_size: int
    flag_group: Any = None  # a gloo group for the per-step stop flag (train.preempt); None with one process


def setup_distributed(device: str) -> Runtime:
    """Init the process group under torchrun (env RANK/WORLD_SIZE); a single process otherwise."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Runtime(rank, world, dev, "fp32", 224, flag_group(world))


class FiniteGuard:
    """Finiteness of every step, kept on the device and read only when the loop asks.

    A non-finite loss or gradient norm must never reach the weights, but checking it on the host
    every step would stall the accelerator queue (a device-to-host copy per step). With the fused
    AdamW that ``build_optimizer`` returns, ``train_step`` instead hands the optimizer a device
    flag (``found_inf``, the mechanism mixed-precision scaling uses) and the fused kernel skips
    the update on the device. This guard counts skipped steps and remembers the first; ``check``
    (called on logging, evaluation and checkpoint steps) raises ``NonFiniteError`` if any.
    """

    LOSS, GRAD = 1, 2

    def __init__(self, device: torch.device) -> None:
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.first_step = torch.zeros((), dtype=torch.long, device=device)
        self.first_kind = torch.zeros((), dtype=torch.long, device=device)

    def record(self, step: int, loss_ok: torch.Tensor, grad_ok: torch.Tensor) -> None:
        bad = ~(loss_ok & grad_ok)
        first = bad & (self.skipped == 0)
        self.first_step = torch.where(first, step, self.first_step)
        self.first_kind = torch.where(first, torch.where(loss_ok, self.GRAD, self.LOSS), self.first_kind)
        self.skipped += bad.long()

    def check(self) -> None:
        skipped, step, kind = (int(v) for v in torch.stack([self.skipped, self.first_step, self.first_kind]).tolist())
        if skipped:
            what = "loss" if kind == self.LOSS else "gradient norm"
            raise NonFiniteError(f"step {step}: non-finite {what}; {skipped} optimizer step(s) skipped, so the weights "
                                 "hold no non-finite update. Resume from the last checkpoint with a lower lr.")


def _fused(optimizer) -> bool:
    return bool(getattr(optimizer, "defaults", {}).get("fused"))


def train_step(model, raw_model, loss_fn, batch: dict[str, Any], optimizer, *, step: int, grad_clip: float,
               rt: Runtime, guard: FiniteGuard | None = None) -> dict[str, torch.Tensor]:
    """Forward, backward, clip, optimizer step; returns the step's scalars as device tensors.

    With a fused optimizer and a ``guard`` nothing here waits for the device: a non-finite step
    is skipped on the device and reported by ``guard.check()``. Without a guard (or with an
    optimizer that cannot skip on the device) finiteness is checked on the host before the
    update, and a non-finite step raises ``NonFiniteError`` at once.
    """
    from model.loss import clamp_logit_scale_

    clamp_logit_scale_(raw_model.logit_scale)  # [0, ln 200] before the forward, as the official pretraining
    inputs = model_inputs(batch, rt)
    with autocast_for(rt.device, rt.precision):
        out = model(**inputs)
    losses = loss_fn(out, out["logit_scale"])
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    params = [p for p in raw_model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    loss_ok = torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()]).all()
    grad_ok = torch.isfinite(grad_norm)
    on_device = guard is not None and _fused(optimizer)
    if on_device:
        guard.record(step, loss_ok, grad_ok)
        optimizer.found_inf = (~(loss_ok & grad_ok)).float()  # the fused kernel skips the update when 1
        optimizer.grad_scale = None
    else:
        now = FiniteGuard(grad_norm.device)
        now.record(step, loss_ok, grad_ok)
        now.check()
    optimizer.step()
    scalars = {k: v.detach() for k, v in losses.items()}
    scalars.update(grad_norm=grad_norm.detach(), logit_scale=raw_model.logit_scale.detach().clone())
    return scalars


def model_inputs(batch: dict[str, Any], rt: Runtime) -> dict[str, torch.Tensor]:
    """The model's forward arguments on the device; uint8 clips are squashed there when shipped raw."""
    names = ("video", "frames", "subtitle_ids", "subtitle_mask", "caption_ids", "caption_mask")
    out = {}
    for k in names:
        if k not in batch:
            continue
        v = batch[k]
        if isinstance(v, list):  # resize_on_device: uint8 [T,H,W,C] clips or [1,H,W,C] frames
            v = preprocess_on_device(v, rt.image_size, rt.device)
            v = v[:, 0] if k == "frames" else v
        out[k] = v.to(rt.device, non_blocking=True)
    return out


class Every:
    """``Every(n)(step)`` is true on multiples of n (never when n <= 0)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, step: int) -> bool:
        return self.n > 0 and step % self.n == 0


def train_loop(*, cfg: TrainConfig, rt: Runtime, per_rank: int, model, raw_model, loss_fn, optimizer, scheduler,
               batches, start_step: int, total_steps: int, save, evaluate, run_log,
               stop: StopOnSignal | None = None) -> list[float]:
    """Steps ``start_step+1 .. total_steps``; returns the per-step total losses of this invocation.

    ``stop`` (optional): asked after every step but the last; when it says so, the step just done
    is saved (``save(step)`` returns the checkpoint folder) and :class:`train.preempt.Preempted` is
    raised.
    """
    should_log, should_eval, should_save = Every(cfg.log_every), Every(cfg.eval.every), Every(cfg.checkpoint_every)
    losses, window_start, window_steps, wait = [], time.perf_counter(), 0, 0.0
    guard = FiniteGuard(rt.device)
    model.train()
    for step in range(start_step + 1, total_steps + 1):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        scalars = train_step(model, raw_model, loss_fn, batch, optimizer, step=step, grad_clip=cfg.optim.grad_clip,
                             rt=rt, guard=guard)
        scheduler.step()
        losses.append(scalars["loss"])  # a device tensor: read once, at the end
        window_steps += 1
        logging, evaluating, saving = should_log(step) or step == total_steps, should_eval(step), should_save(step)
        if logging or evaluating or saving:
            guard.check()  # the only host reads of the step: nothing non-finite is logged, evaluated or saved
        if logging:
            scalars = {k: float(v) for k, v in scalars.items()}
            elapsed = time.perf_counter() - window_start
            scalars.update(lr=scheduler.get_last_lr()[0], clips_per_s_per_gpu=per_rank * window_steps / elapsed,
                           data_wait_frac=wait / elapsed)
            run_log.log(step, scalars)
            if rt.rank == 0:
                logger.info("step %d/%d loss %.4f grad %.3f %.1f clips/s/gpu", step, total_steps, scalars["loss"],
                            scalars["grad_norm"], scalars["clips_per_s_per_gpu"])
            window_start, window_steps, wait = time.perf_counter(), 0, 0.0
        if evaluating and step != total_steps:
            evaluate(step)
        if saving and step != total_steps:
            saved = save(step)
        if stop is not None and step != total_steps and stop.requested():
            guard.check()  # never save a step the guard would refuse
            folder = saved if saving else save(step)
            raise Preempted(stop.signal_name or "a signal", step, total_steps, str(folder) if folder else None)
    return [float(v) for v in torch.stack(losses).tolist()] if losses else []


def gather_objects(obj: Any, rt: Runtime) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without distributed)."""
    if rt.world_size == 1:
        return [obj]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def log_metrics(run_log, step: int, metrics: dict[str, float], split: str, rank: int) -> None:
    run_log.log(step, metrics, kind=split)
    if rank == 0:
        logger.info("eval %s at step %d:\n%s", split, step, format_metrics(metrics))
