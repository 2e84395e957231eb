"""The shared command line of ``clipvip pretrain`` and ``clipvip finetune``: a named config, an
optional config file, ``a.b=value`` overrides (anywhere on the line) and ``--resume-changed``.

The inputs are checked here, before the run writes anything (``config.json``, a tokenizer, a
checkpoint): a path that does not exist or a value out of range is a :class:`jobs.common.UserError`,
printed as one line by ``cli_main``. A checkpoint that cannot be resumed as asked is refused by the
run itself, also before it writes anything, and reported the same way (:func:`run`).

A run whose ``run_dir`` holds a checkpoint resumes from it, so the same command continues a run
stopped by a signal (exit code :data:`train.preempt.EXIT_PREEMPTED`, after a checkpoint), a
requeued job or a ``torchrun --max-restarts`` group. A rank that stops because another failed
prints one line naming the failed rank (exit code 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from jobs import train_configs
from jobs.common import UserError, offline_defaults, setup_logging
from jobs.help import HelpFormatter
from jobs.config import load
from train.loop import TrainConfig

ABOUT = {
    "pretrain": ("post-pretrain CLIP-ViP on curated WebDataset shards with the OCL losses",
                 "clipvip pretrain --config debug data.shards='shards/train-{000000..000005}.tar' run_dir=runs/dbg\n"
                 "  torchrun --nproc_per_node 8 -m jobs.pretrain --config pretrain_b32 \\\n"
                 "      data.shards='/shared/shards/train-{000000..000999}.tar' run_dir=/shared/runs/b32\n"
                 "  clipvip pretrain --config pretrain_b32 model.init=hf:/models/clip-b32 model.tokenizer=/models/clip-b32 ..."),
    "finetune": ("fine-tune CLIP-ViP for text-video retrieval, picking the checkpoint on a validation split",
                 "clipvip finetune --config finetune_msrvtt model.init=ckpt:runs/b32/checkpoints/step_00001000/model \\\n"
                 "      model.tokenizer=/models/clip-b32 finetune.manifest=data/msrvtt/train9k.jsonl \\\n"
                 "      eval.manifest.manifest=data/msrvtt/val.jsonl"),
}


def _configs(task: str) -> list[str]:
    return sorted(n for n, make in train_configs.CONFIGS.items() if make().task == task)


def _config_lines(task: str) -> str:
    """One line per named config of ``task``: its main numbers (``--show-config`` prints all)."""
    lines = []
    for name in _configs(task):
        c = train_configs.get(name)
        d = c.data if task == "pretrain" else c.finetune
        length = f"{c.steps} steps" if c.steps else f"{c.epochs:g} epochs"
        lines.append(f"  {name:<22} {c.model.init or 'random ' + c.model.flavour}, {length}, {d.batch_size}/rank, "
                     f"lr {c.optim.lr:g}, {d.num_frames} frames, run_dir {c.run_dir}")
    return "\n".join(lines)


def parser(prog: str, default_config: str, task: str) -> argparse.ArgumentParser:
    """The command line of ``clipvip <task>`` (its help differs per task: configs, examples)."""
    about, example = ABOUT[task]
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description=f"{prog}: {about}.\n\nnamed configs (jobs/train_configs.py; --config NAME --show-config prints "
                    f"every value):\n{_config_lines(task)}\n\nOverride any value with section.field=value, anywhere "
                    "on the line.\n\nexamples:\n  " + example,
        epilog="Resuming: a run_dir that holds a checkpoint is resumed from its latest one, so the same command "
               "continues a run stopped by SIGTERM/SIGINT (which saves a checkpoint first and exits with code "
               "75), a requeued job or a torchrun --max-restarts group. Settings that change the numbers must "
               "match the checkpoint's (--resume-changed accepts a change). Several processes: torchrun "
               "--nproc_per_node N [--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT] -m jobs." + task +
               " ... with run_dir on storage every node shares (README, 'Post-pretrain on many GPUs').")
    p.add_argument("--config", default=default_config, choices=sorted(train_configs.CONFIGS), metavar="NAME",
                   help=f"a named run config (default: {default_config})")
    p.add_argument("--file", help="a TOML/YAML/JSON file whose sections override the named config")
    p.add_argument("--resume", action="store_true",
                   help="resume from <run_dir>/checkpoints/latest: the default whenever run_dir holds a checkpoint "
                        "(kept so older commands still work)")
    p.add_argument("--resume-changed", action="store_true",
                   help="resume although settings that change the numbers (batch size, lr, steps, ...) differ from "
                        "the checkpoint's")
    p.add_argument("--show-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--log-level", default="INFO", help="logging level of rank 0; other ranks log warnings only "
                   "(default: INFO)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="section.field=value, e.g. data.shards='s/t-{000000..000099}.tar' steps=100")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override, as for the other clipvip commands (same as a positional one)")
    return p


def parse(argv: list[str] | None, prog: str, default_config: str, task: str) -> TrainConfig:
    args = parser(prog, default_config, task).parse_intermixed_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    # Only rank 0 reports progress; the others say only what goes wrong, marked with their rank.
    setup_logging(args.log_level if rank == 0 else "WARNING")
    if rank:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
                                                   datefmt="%H:%M:%S"))
    offline_defaults()
    cfg = load(TrainConfig, args.file, args.overrides + args.set, base=train_configs.get(args.config))
    if cfg.task != task:
        raise UserError(f"config {args.config!r} is a {cfg.task!r} run; use 'clipvip {cfg.task}'")
    if args.resume or args.resume_changed:
        cfg = dataclasses.replace(cfg, resume=True, resume_changed=args.resume_changed)
    cfg = evaluation_switch(cfg)
    if args.show_config:
        from jobs.config import to_dict
        from train.log import strict_dumps

        print(strict_dumps(to_dict(cfg), indent=2, sort_keys=True))
        raise Stopped(0)
    check(cfg)
    logging.getLogger(__name__).info("run dir %s, config %s", cfg.run_dir, args.config)
    return cfg


def is_rank0() -> bool:
    """Whether this process is rank 0 (or the only one): the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0


def evaluation_switch(cfg: TrainConfig) -> TrainConfig:
    """``eval.every=0`` turns evaluation off, so its set is not read (nor required to exist); an
    ``eval.every`` without a set says that nothing will be evaluated."""
    log = logging.getLogger(__name__)
    given = [k for k, v in (("eval.shards", cfg.eval.shards), ("eval.manifest.manifest", cfg.eval.manifest.manifest))
             if v]
    if cfg.eval.every <= 0 and given:
        log.warning("eval.every=0 turns evaluation off: %s is not read (set eval.every=<steps> to evaluate)",
                    " and ".join(given))
        return dataclasses.replace(cfg, eval=dataclasses.replace(
            cfg.eval, shards="", manifest=dataclasses.replace(cfg.eval.manifest, manifest="")))
    if cfg.eval.every > 0 and not given:
        log.warning("eval.every=%d but no evaluation set is given (eval.shards or eval.manifest.manifest): nothing "
                    "will be evaluated%s", cfg.eval.every,
                    " and no best/ is picked" if cfg.task == "finetune" else "")
    return cfg


class Stopped(Exception):
    """The run ended without finishing, already reported; ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def resume_hint(prog: str, argv: list[str] | None) -> str:
    """How to continue: the same command (under torchrun the worker cannot know the launcher's line)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "rerun the same torchrun command to resume"
    args = sys.argv[1:] if argv is None else argv
    return f"resume with the same command: {prog} {shlex.join(a for a in args if a != '--debug')}"


def run(cfg: TrainConfig, prog: str = "clipvip train", argv: list[str] | None = None) -> dict[str, Any]:
    """:func:`train.setup.run`, with a checkpoint that cannot be resumed reported as the user's to fix.

    A run stopped by a signal (after its checkpoint) or by a failed peer prints one line on rank 0
    (the lowest surviving rank for a failed peer) and raises :class:`Stopped` with the exit code.
    """
    from train.checkpoint import CheckpointError
    from train.peers import PeerFailed
    from train.preempt import EXIT_PREEMPTED, Preempted
    from train.setup import ModelInitError, run as train

    try:
        return train(cfg)
    except (CheckpointError, ModelInitError) as exc:
        raise UserError(str(exc)) from exc
    except Preempted as stop:
        if is_rank0():
            print(f"{prog}: {stop}; {resume_hint(prog, argv)} (exit code {EXIT_PREEMPTED})", file=sys.stderr,
                  flush=True)
        raise Stopped(EXIT_PREEMPTED) from stop
    except PeerFailed as failed:
        if not failed.quiet:
            print(f"{prog}: error: {failed}", file=sys.stderr, flush=True)
        raise Stopped(1) from failed


# ---- input checks -----------------------------------------------------------------------------


def check(cfg: TrainConfig) -> None:
    """Raise :class:`UserError` listing every problem with the run's inputs (nothing is written yet)."""
    problems = value_problems(cfg) + path_problems(cfg)
    if problems:
        raise UserError("; ".join(problems))


def _range(problems: list[str], key: str, value: float, lo: float, hi: float = math.inf, *,
           lo_open: bool = False, hint: str = "") -> None:
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bound = f"> {lo}" if lo_open else f">= {lo}"
        bound += f" and <= {hi}" if hi != math.inf else ""
        problems.append(f"{key}={value!r} must be {bound}{hint}")


def value_problems(cfg: TrainConfig) -> list[str]:
    """Numbers and names out of range: each would crash deep inside the run or train nothing."""
    from model.clip_vip import ATTENTION_MODES, FLAVOURS
    from model.loss import GATHER_GRAD, TERMS
    from train.loop import SELECT_METRICS
    from train.tasks import get_task

    p: list[str] = []
    o = cfg.optim
    _range(p, "optim.lr", o.lr, 0, lo_open=True, hint=" (the paper's post-pretraining lr is 5e-6)")
    _range(p, "optim.weight_decay", o.weight_decay, 0)
    _range(p, "optim.eps", o.eps, 0, lo_open=True)
    _range(p, "optim.warmup_ratio", o.warmup_ratio, 0, 1)
    _range(p, "optim.grad_clip", o.grad_clip, 0, hint=" (0 disables clipping)")
    _range(p, "optim.lr_mul", o.lr_mul, 0, lo_open=True)
    _range(p, "optim.min_lr_ratio", o.min_lr_ratio, 0, 1)
    for i, beta in enumerate(o.betas):
        if not 0 <= beta < 1:
            p.append(f"optim.betas[{i}]={beta!r} must be in [0, 1)")
    _range(p, "steps", cfg.steps, 0, hint=" (0 derives the steps from epochs)")
    if cfg.steps == 0:
        _range(p, "epochs", cfg.epochs, 0, lo_open=True, hint=" (or set steps=<N>)")
    for key in ("checkpoint_every", "keep_checkpoints", "log_every", "eval.every"):
        _range(p, key, _get(cfg, key), 0, hint=" (0 turns it off)")
    for key, allowed in (("device", ("auto", "cpu", "cuda")), ("precision", ("bf16", "fp32")),
                         ("model.attention", ATTENTION_MODES)):
        if _get(cfg, key) not in allowed:
            p.append(f"{key}={_get(cfg, key)!r}: choose one of {', '.join(allowed)}")
    if not cfg.model.init and cfg.model.flavour not in FLAVOURS:
        p.append(f"model.flavour={cfg.model.flavour!r}: choose one of {', '.join(sorted(FLAVOURS))}")
    task = get_task(cfg)
    terms = task.loss_terms(cfg)  # fine-tuning's are fixed; only a pretraining run's come from the config
    if not terms or any(t not in TERMS for t in terms):
        p.append(f"loss_terms={list(cfg.loss_terms)!r}: give names from {', '.join(TERMS)}, e.g. loss_terms=vsc,fc")
    if cfg.gather_grad not in GATHER_GRAD:
        p.append(f"gather_grad={cfg.gather_grad!r}: choose mean (as the official code) or sum (one process's gradient)")
    if cfg.eval.split not in ("val", "test"):
        p.append(f"eval.split={cfg.eval.split!r}: choose val (picks best/) or test (reported only)")
    elif cfg.eval.split == "test" and task.name == "finetune" and cfg.eval.manifest.manifest:
        p.append("eval.split=test: fine-tuning picks its checkpoint on a validation split; give one as "
                 "eval.manifest.manifest with eval.split=val, and test the result once with 'clipvip evaluate'")
    if cfg.eval.select_metric not in SELECT_METRICS:
        p.append(f"eval.select_metric={cfg.eval.select_metric!r}: choose one of {', '.join(SELECT_METRICS)} "
                 "(higher is better)")
    data, section = task.data(cfg), task.section
    for name in ("batch_size", "num_frames", "image_size", "max_text_len"):
        _range(p, f"{section}.{name}", getattr(data, name), 1)
    _range(p, f"{section}.num_workers", data.num_workers, 0)
    return p


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser()


def _shard_problems(key: str, pattern: str, readers: int = 1) -> list[str]:
    """A shard pattern that expands to no existing local file (remote URLs are left to the loader)."""
    from shards.format import expand_pattern

    try:
        urls = expand_pattern(pattern)
    except ValueError as exc:
        return [f"{key}: {exc}"]
    local = [u for u in urls if _is_local(u)]
    found = [u for u in local if _local(u).is_file()]
    if local and not found:
        return [f"{key}={pattern!r}: no shard matches (none of its {len(local)} file(s) exists, e.g. {local[0]}); "
                f"give the brace pattern of existing shards, e.g. 'shards/train-{{000000..000009}}.tar' "
                f"(make them with 'clipvip curate')"]
    if len(found) < len(local):
        logging.getLogger(__name__).warning("%s: %d of %d shard(s) do not exist and will be skipped, e.g. %s", key,
                                            len(local) - len(found), len(local),
                                            next(u for u in local if u not in set(found)))
    if len(urls) < readers:
        return [f"{key}={pattern!r}: {len(urls)} shard(s) for {readers} readers (data.num_workers x ranks); every "
                f"reader needs its own shard: write more, smaller shards or lower data.num_workers"]
    return []


def _model_path_problems(key: str, spec: str) -> list[str]:
    kind, _, where = spec.partition(":")
    if not spec:
        return []
    if kind not in ("hf", "clipvip", "ckpt"):
        return [f"{key}={spec!r}: use '', 'hf:<CLIP dir or hub id>', 'clipvip:<official .pt>' or 'ckpt:<model dir>'"]
    if kind == "clipvip" and _is_local(where) and not _local(where).is_file():
        return [f"{key}={spec!r}: checkpoint file {where} does not exist; download the official CLIP-ViP weights "
                f"or point {key} at them"]
    if kind == "ckpt":
        return checkpoint_dir_problems(key, where)
    if kind == "hf" and where.startswith(("/", ".", "~")) and not _local(where).is_dir():
        return [f"{key}={spec!r}: {where} is not a folder; give a CLIP folder saved with save_pretrained or a hub id"]
    return []


def checkpoint_dir_problems(key: str, path: str) -> list[str]:
    """A model folder (``config.json`` + ``model.safetensors``, as written by training) that is not there."""
    from model.convert import CONFIG_FILE, WEIGHTS_FILE

    folder = _local(path)
    if not folder.is_dir():
        return [f"{key}: model folder {path} does not exist; give a folder written by training "
                f"(<run_dir>/best or <run_dir>/checkpoints/step_N/model)"]
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        return [f"{key}: {path} is not a CLIP-ViP model folder (it lacks {', '.join(missing)}); give "
                f"<run_dir>/best or <run_dir>/checkpoints/step_N/model"]
    return []


def manifest_problems(key: str, path: str, dataset: str, video_root: str, *, evaluation: bool) -> list[str]:
    """A retrieval manifest that is missing or unreadable, or whose local videos are missing, named
    with the reason.

    An evaluation set must have every video: a missing one would change the benchmark, so it is
    refused (remove it from the manifest and say so when reporting). A training set may miss some
    (downloads of ActivityNet and the like often do): they are counted in a warning and skipped, and
    only a set with none of its videos is refused.
    """
    from train.retrieval_data import load_manifest

    if _is_local(path) and not _local(path).is_file():
        return [f"{key}: manifest {path} does not exist; give a JSONL file with a video (or clip_name) and text "
                f"per row"]
    if video_root and _is_local(video_root) and not _local(video_root).is_dir():
        return [f"{key.rsplit('.', 1)[0]}.video_root: folder {video_root} does not exist"]
    try:
        entries = load_manifest(path, dataset, video_root)
    except (ValueError, OSError) as exc:
        return [f"{key}: {exc}"]
    missing = [e.video for e in entries if _is_local(e.video) and not _local(e.video).is_file()]
    if missing and (evaluation or len(missing) == len(entries)):
        return [f"{key}: {len(missing)} of {len(entries)} videos of {path} do not exist, e.g. {missing[0]}; check "
                f"video_root{' or remove them from the manifest (and say so when reporting)' if evaluation else ''}"]
    if missing:
        logging.getLogger(__name__).warning("%s: %d of %d videos do not exist (e.g. %s); training skips them", key,
                                            len(missing), len(entries), missing[0])
    return []


def path_problems(cfg: TrainConfig) -> list[str]:
    """Inputs that are not where the config says; outputs that cannot be written there."""
    p: list[str] = []
    run_dir = Path(cfg.run_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        p.append(f"run_dir={cfg.run_dir!r} is a file, not a folder; set run_dir=<a new or existing folder>")
    p += _model_path_problems("model.init", cfg.model.init)
    tok = cfg.model.tokenizer
    if tok.startswith(("/", ".", "~")) and not _local(tok).is_dir():
        p.append(f"model.tokenizer={tok!r}: folder does not exist; give a CLIP tokenizer folder or hub id")
    if cfg.task == "pretrain":
        if not cfg.data.shards:
            p.append("set data.shards=<brace pattern of the curated shards> (make them with 'clipvip synth' then "
                     "'clipvip curate')")
        else:
            readers = max(1, cfg.data.num_workers) * int(os.environ.get("WORLD_SIZE", "1"))
            p += _shard_problems("data.shards", cfg.data.shards, readers)
    else:
        f = cfg.finetune
        if not f.manifest:
            p.append("set finetune.manifest=<train JSONL>")
        else:
            p += manifest_problems("finetune.manifest", f.manifest, f.dataset, f.video_root, evaluation=False)
    if cfg.eval.shards:
        p += _shard_problems("eval.shards", cfg.eval.shards)
    elif cfg.eval.manifest.manifest:
        m = cfg.eval.manifest
        p += manifest_problems("eval.manifest.manifest", m.manifest, m.dataset, m.video_root, evaluation=True)
    return p
