"""The shared command line of ``clipvip pretrain`` and ``clipvip finetune``: a named config, an
optional config file, ``a.b=value`` overrides (anywhere on the line) and ``--resume-changed``.

The run checks its config and inputs itself (:meth:`train.loop.TrainConfig.check`, so Python
callers get the same checks), before it writes anything (``config.json``, a tokenizer, a
checkpoint): a path that does not exist, a value out of range or a checkpoint that cannot be
resumed as asked is a :class:`common.errors.UserError`, printed as one line by ``cli_main``.

A run whose ``run_dir`` holds a checkpoint resumes from it, so the same command continues a run
stopped by a signal (exit code :data:`train.preempt.EXIT_PREEMPTED`, after a checkpoint), a
requeued job or a ``torchrun --max-restarts`` group. A rank that stops because another failed
prints one line naming the failed rank (exit code 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from typing import Any

from common.errors import UserError
from jobs.common import offline_defaults, setup_logging
from jobs.config import load
from jobs.help import HelpFormatter
from train import configs as train_configs
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
        description=f"{prog}: {about}.\n\nnamed configs (train/configs.py; --config NAME --show-config prints "
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
    """:func:`train.setup.run`: it checks the config and its inputs, and a checkpoint that cannot be
    resumed as asked, before it writes anything (each a :class:`common.errors.UserError`).

    A run stopped by a signal (after its checkpoint) or by a failed peer prints one line on rank 0
    (the lowest surviving rank for a failed peer) and raises :class:`Stopped` with the exit code.
    """
    from train.peers import PeerFailed
    from train.preempt import EXIT_PREEMPTED, Preempted
    from train.setup import run as train

    try:
        return train(cfg)
    except Preempted as stop:
        if is_rank0():
            print(f"{prog}: {stop}; {resume_hint(prog, argv)} (exit code {EXIT_PREEMPTED})", file=sys.stderr,
                  flush=True)
        raise Stopped(EXIT_PREEMPTED) from stop
    except PeerFailed as failed:
        if not failed.quiet:
            print(f"{prog}: error: {failed}", file=sys.stderr, flush=True)
        raise Stopped(1) from failed
