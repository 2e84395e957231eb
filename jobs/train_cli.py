"""The shared command line of ``clipvip pretrain`` and ``clipvip finetune``: a named config, an
optional config file, ``a.b=value`` overrides, ``--resume`` and ``--resume-changed``. Nothing else,
by design.

The run checks its config and inputs itself (:meth:`train.loop.TrainConfig.check`, so Python
callers get the same checks), before it writes anything (``config.json``, a tokenizer, a
checkpoint): a path that does not exist, a value out of range or a checkpoint that cannot be
resumed as asked is a :class:`common.errors.UserError`, printed as one line by ``cli_main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from common.errors import UserError
from jobs.common import offline_defaults, setup_logging
from jobs.config import load
from train import configs as train_configs
from train.loop import TrainConfig


def parse(argv: list[str] | None, prog: str, default_config: str, task: str) -> TrainConfig:
    p = argparse.ArgumentParser(prog=prog, description=f"Named configs: {', '.join(sorted(train_configs.CONFIGS))}. "
                                "Launch DDP with: torchrun --nproc_per_node N -m jobs.<name> ...")
    p.add_argument("--config", default=default_config, choices=sorted(train_configs.CONFIGS), metavar="NAME",
                   help="a named run config (train/configs.py)")
    p.add_argument("--file", help="TOML/YAML/JSON file whose sections override the named config")
    p.add_argument("--resume", action="store_true", help="continue from <run_dir>/checkpoints/latest")
    p.add_argument("--resume-changed", action="store_true",
                   help="resume although settings that change the numbers (batch size, lr, steps, ...) differ from "
                        "the checkpoint's (implies --resume)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("overrides", nargs="*", help="section.field=value, e.g. data.shards='s/t-{000000..000099}.tar'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override, as for the other clipvip commands (same as a positional one)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    offline_defaults()
    cfg = load(TrainConfig, args.file, args.overrides + args.set, base=train_configs.get(args.config))
    if cfg.task != task:
        raise UserError(f"config {args.config!r} is a {cfg.task!r} run; use 'clipvip {cfg.task}'")
    if args.resume or args.resume_changed:
        cfg = dataclasses.replace(cfg, resume=True, resume_changed=args.resume_changed)
    logging.getLogger(__name__).info("run dir %s, config %s", cfg.run_dir, args.config)
    return cfg


def run(cfg: TrainConfig) -> dict[str, Any]:
    """:func:`train.setup.run`: it checks the config and its inputs, and a checkpoint that cannot be
    resumed as asked, before it writes anything (each a :class:`common.errors.UserError`)."""
    from train.setup import run as train

    return train(cfg)
