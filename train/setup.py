"""Everything around the train loop: tokenizer, model, data, optimizer, resume, evaluation, saving.

Kept apart from :mod:`train.loop` so the loop itself reads top to bottom in one screen.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train import checkpoint as ckpt
from train.loop import (NonFiniteError, Runtime, TrainConfig, gather_objects, log_metrics, setup_distributed,
                         train_loop)

logger = logging.getLogger(__name__)


def _barrier(rt: Runtime) -> None:
    if rt.world_size > 1:
        dist.barrier()


def build_tokenizer(cfg: TrainConfig, rt: Runtime, run_dir: Path):
    """The configured tokenizer; with none configured, a small BPE learnt from the training texts."""
    from model.tokenizer import load_tokenizer, train_clip_bpe

    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer)
    out = run_dir / "tokenizer"
    if rt.rank == 0 and not (out / "vocab.json").is_file():
        logger.warning("model.tokenizer is empty: training a small BPE on the training texts (debug runs only; "
                       "real runs use the CLIP checkpoint's tokenizer)")
        from train.tasks import get_task

        train_clip_bpe(get_task(cfg).texts(cfg), out, num_merges=300)
    _barrier(rt)
    return load_tokenizer(str(out))


def build_model(cfg: TrainConfig, tokenizer):
    """Random (flavour), HF CLIP, official CLIP-ViP or our own checkpoint, per ``model.init``."""
    from model.clip_vip import CLIPViP, get_config
    from model.convert import from_hf_clip, load_checkpoint, load_official_clipvip

    init, m = cfg.model.init, cfg.model
    kind, _, where = init.partition(":")
    if not init:
        extra = {"temporal_init_std": m.temporal_init_std}
        if m.logit_scale_init is not None:
            extra["logit_scale_init"] = m.logit_scale_init
        model = CLIPViP(get_config(m.flavour, vocab_size=len(tokenizer), eot_token_id=tokenizer.eos_token_id,
                                   attention=m.attention, **extra))
    elif kind == "hf":
        model = from_hf_clip(where, attention=m.attention)
    elif kind == "clipvip":
        model, _ = load_official_clipvip(where)
    elif kind == "ckpt":
        model = load_checkpoint(where)
    else:
        raise ValueError(f"model.init={init!r}: use '', 'hf:<path>', 'clipvip:<file.pt>' or 'ckpt:<model dir>'")
    if model.config.eot_token_id != tokenizer.eos_token_id or model.config.vocab_size < len(tokenizer):
        raise ValueError(f"tokenizer (eos {tokenizer.eos_token_id}, {len(tokenizer)} tokens) does not fit the model "
                         f"(eot {model.config.eot_token_id}, vocab {model.config.vocab_size}); set model.tokenizer "
                         f"to the checkpoint's tokenizer")
    model.gradient_checkpointing = m.gradient_checkpointing
    return model


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
    return DataLoader(ds, batch_size=split_cfg.batch_size, num_workers=split_cfg.num_workers, collate_fn=collate_eval)


def resume_state(cfg: TrainConfig, rt: Runtime) -> dict[str, Any] | None:
    """The latest checkpoint's state when resuming, once it is known to fit this run; else None.

    Refused (:class:`train.checkpoint.CheckpointError`): a checkpoint of another world size, or of
    a run whose settings differ in anything that changes the numbers (batch size, lr, steps, ...)
    unless ``cfg.resume_changed`` says the change is meant.
    """
    if not cfg.resume:
        return None
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    last = ckpt.latest(ckpt_dir)
    if last is None:
        logger.warning("resume requested but %s holds no checkpoint: starting fresh", ckpt_dir)
        return None
    state = ckpt.load(last)
    if len(state["loader"]) != rt.world_size:
        raise ckpt.CheckpointError(f"checkpoint {last} was written by {len(state['loader'])} rank(s); resume with "
                                   f"the same number (now {rt.world_size})")
    changes = ckpt.changed_settings(state.get("config", {}), dataclasses.asdict(cfg))
    if changes and not cfg.resume_changed:
        raise ckpt.CheckpointError(f"checkpoint {last} was written with other settings, so the run would not "
                                   f"continue exactly: {'; '.join(changes)}. Resume with the original values, or "
                                   f"pass --resume-changed if the change is meant")
    if changes:
        logger.warning("resuming %s with changed settings (--resume-changed): %s", last, "; ".join(changes))
    logger.info("resuming from %s", last)
    return state


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


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    from train.evaluate import evaluate_retrieval
    from model.loss import OCLLoss
    from train.optim import build_optimizer, build_scheduler
    from train.log import NullLogger, RunLogger, plot_losses, strict_dumps

    from train.tasks import get_task, steps_for, warn_ignored

    task = get_task(cfg)
    rt = setup_distributed(cfg.device)
    rt.precision = cfg.precision
    rt.image_size = task.data(cfg).image_size
    if rt.rank == 0:
        warn_ignored(cfg)
    run_dir = Path(cfg.run_dir)
    state = resume_state(cfg, rt)  # refused before anything is written if the checkpoint does not fit
    if rt.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(strict_dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n")
    _barrier(rt)
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg, rt, run_dir)
    raw_model = build_model(cfg, tokenizer).to(rt.device)
    loss_fn = OCLLoss(task.loss_terms(cfg))
    n_items, dataset = task.dataset(cfg)
    total = steps_for(cfg, task, n_items, rt.world_size)
    optimizer = build_optimizer(raw_model, cfg.optim)
    scheduler = build_scheduler(optimizer, total, cfg.optim)

    start_step, loader_state, best = 0, None, {"value": float("-inf"), "step": 0}
    if state is not None:
        if state.get("total_steps", total) != total and not cfg.resume_changed:
            raise ckpt.CheckpointError(
                f"the checkpoint's run had {state['total_steps']} steps and this one has {total} (the data size "
                f"changed?): the schedule would differ; pass --resume-changed if that is meant")
        restore(state, raw_model, optimizer, scheduler, new_hyperparameters=cfg.resume_changed)
        start_step, loader_state, best = state["step"], state["loader"][rt.rank], state["best"]
        ckpt.set_rng_state(state["rng"][rt.rank])
        logger.info("resumed from step %d of %s", start_step, run_dir / "checkpoints")

    batches = task.batches(cfg, dataset, tokenizer, rt, loader_state)

    model = torch.compile(raw_model) if cfg.model.compile else raw_model
    if rt.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    # Rows past the resumed step are replayed now, so they go (a fresh start keeps no earlier rows).
    run_log = RunLogger(run_dir, cfg.tensorboard, keep_until=start_step if state is not None else -1) \
        if rt.rank == 0 else NullLogger()
    has_eval = bool(cfg.eval.shards or cfg.eval.manifest.manifest)
    split = "heldout" if cfg.eval.shards else "val"
    last_metrics: dict[str, float] = {}

    def evaluate(step: int) -> None:
        nonlocal last_metrics
        if not has_eval:
            return
        if rt.rank == 0:
            split_cfg = cfg.eval.manifest
            metrics = evaluate_retrieval(raw_model, _eval_batches(cfg, split_cfg), tokenizer,
                                         max_text_len=split_cfg.max_text_len, image_size=rt.image_size,
                                         device=rt.device, precision=rt.precision)
            log_metrics(run_log, step, metrics, split, rt.rank)
            last_metrics = metrics
            value = metrics[cfg.eval.select_metric]
            if value > best["value"]:
                from model.convert import save_checkpoint

                from common.files import replace_dir, temp_dir_beside

                best.update(value=value, step=step)
                # Built aside and moved in whole: a crash mid-export never leaves a half-written best/.
                tmp = temp_dir_beside(run_dir / "best")
                save_checkpoint(raw_model, tmp)
                (tmp / "selection.json").write_text(strict_dumps(
                    {"split": split, "metric": cfg.eval.select_metric, **best}) + "\n")
                replace_dir(tmp, run_dir / "best")
        _barrier(rt)

    def save(step: int) -> None:
        loaders = gather_objects(batches.state_dict(), rt)
        rngs = gather_objects(ckpt.rng_state(), rt)
        if rt.rank == 0:
            ckpt.save(run_dir / "checkpoints", step, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "total_steps": total, "loader": loaders,
                "rng": rngs, "best": best, "config": dataclasses.asdict(cfg)},
                model_for_export=raw_model, keep=cfg.keep_checkpoints)
        _barrier(rt)

    if start_step == 0 and cfg.eval.at_start:
        evaluate(0)
    try:
        losses = train_loop(cfg=cfg, rt=rt, per_rank=task.data(cfg).batch_size, model=model, raw_model=raw_model, loss_fn=loss_fn, optimizer=optimizer,
                            scheduler=scheduler, batches=batches, start_step=start_step, total_steps=total,
                            save=save, evaluate=evaluate, run_log=run_log)
    except NonFiniteError:
        run_log.close()
        raise
    if start_step < total:
        save(total)
        evaluate(total)
    result = {"run_dir": str(run_dir), "steps": total, "losses": losses, "metrics": last_metrics, "best": best}
    if rt.rank == 0:
        run_log.close()
        if (run_dir / "metrics.jsonl").is_file():
            plot_losses(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
        # Strict JSON: a best score never set is -inf in memory and null on disk.
        (run_dir / "final_metrics.json").write_text(strict_dumps({"metrics": last_metrics, "best": best}, indent=2)
                                                    + "\n")
    return result


def run(cfg: TrainConfig) -> dict[str, Any]:
    """The whole run: set-up, the loop (:mod:`train.loop`) and wrap-up. Returns final metrics and paths."""
    return run_training(cfg)
