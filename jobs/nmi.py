"""``clipvip nmi``: the NMI domain-gap report between text corpora (CLIP-ViP's preliminary analysis).

Examples::

    clipvip nmi --pretrain subs=asr.jsonl --pretrain caps='shards/{00000..00009}.tar:caption' \\
        --downstream msrvtt=msrvtt_test.jsonl --out report/
    clipvip nmi a=coco.jsonl b=cc3m.jsonl c=didemo.jsonl --seeds 0 1 2 --n 500     # every pair
    clipvip nmi --config nmi.yaml --set n=2000 --set encoder.spec=clip:openai/clip-vit-base-patch32

Each corpus is ``name=path[:field]``: .txt (a line each), .jsonl, .csv/.tsv, .parquet, or clipvip
WebDataset shards (.tar; field subtitle | caption | json.KEY; globs and {a..b} ranges allowed).
Writes report.json, report.md, nmi_matrix.png, projection.png and config.json to the output folder,
all at once when the report is complete: a failed run leaves no folder, and a rerun into an earlier
report's folder replaces that report whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from analysis.report import NMIConfig, check_config, run
from common.jsonio import config_json
from jobs.common import cli_main, offline_defaults, setup_logging
from jobs.config import load
from jobs.help import HelpFormatter

logger = logging.getLogger("jobs.nmi")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipvip nmi", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("corpora", nargs="*", metavar="NAME=PATH[:FIELD]", help="corpora with no role")
    p.add_argument("--pretrain", action="append", default=[], metavar="NAME=PATH[:FIELD]",
                   help="a pretraining corpus (repeatable)")
    p.add_argument("--downstream", action="append", default=[], metavar="NAME=PATH[:FIELD]",
                   help="a downstream corpus (repeatable)")
    p.add_argument("--corpus", action="append", default=[], metavar="NAME=PATH[:FIELD]",
                   help="a corpus with no role (repeatable; same as a positional one)")
    p.add_argument("--n", type=int, help="texts per corpus per seed (default 1000, as in the paper)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="seeds; each draws and encodes new samples, giving mean and spread (default 0; try 0 1 2)")
    p.add_argument("--encoder", help="minilm (offline default) | st:NAME_OR_PATH | clip:PATH_OR_HUB_ID")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="encoder precision (auto: bfloat16 where the CPU or GPU has it, else float32)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int, help="truncate texts to this many tokens (default: the encoder's max)")
    p.add_argument("--backend", choices=["auto", "numpy", "faiss", "sklearn"],
                   help="K-means backend (auto: numpy, the fastest at report sizes)")
    p.add_argument("--restarts", type=int, help="K-means restarts, best inertia kept (default 10)")
    p.add_argument("--unstable-range", type=float,
                   help="flag a pair whose NMI over seeds spans more than this (default 0.1)")
    p.add_argument("--bootstrap", type=int,
                   help="resamples of the sentence bootstrap behind each interval (default 1000; 0: none)")
    p.add_argument("--dedupe", action="store_true", help="sample from unique texts only")
    p.add_argument("--cache-dir", help="embedding cache folder (default ~/.cache/clipvip/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--out", help="output folder (default nmi_report)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--config", help="a TOML/YAML/JSON file of NMIConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> NMIConfig:
    """File, then ``--set`` overrides, then the named flags (which are the common overrides)."""
    cfg = load(NMIConfig, args.config, args.set)
    top: dict[str, object] = {}
    if args.corpora or args.corpus:
        top["corpora"] = tuple(args.corpora) + tuple(args.corpus)
    if args.pretrain:
        top["pretrain"] = tuple(args.pretrain)
    if args.downstream:
        top["downstream"] = tuple(args.downstream)
    for flag, field in (("n", "n"), ("out", "out_dir"), ("cache_dir", "cache_dir"),
                        ("unstable_range", "unstable_range"), ("bootstrap", "bootstrap")):
        if getattr(args, flag) is not None:
            top[field] = getattr(args, flag)
    if args.seeds:
        top["seeds"] = tuple(args.seeds)
    if args.dedupe:
        top["dedupe"] = True
    if args.no_cache:
        top["cache_dir"] = None
    if args.no_progress:
        top["progress"] = False
    enc = {k: v for k, v in (("spec", args.encoder), ("device", args.device), ("dtype", args.dtype), ("batch_size", args.batch_size),
                             ("max_length", args.max_length)) if v is not None}
    clu = {k: v for k, v in (("backend", args.backend), ("restarts", args.restarts)) if v is not None}
    return dataclasses.replace(cfg, **top, encoder=dataclasses.replace(cfg.encoder, **enc),
                               cluster=dataclasses.replace(cfg.cluster, **clu))


def main(argv: list[str] | None = None) -> int:
    """Run the report; bad input raises :class:`common.errors.UserError` (``cli_main`` prints it as one line)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    offline_defaults()
    from analysis.render import check_output_dir, markdown, write_report

    cfg = config_from_args(args)
    # Everything the user gave is checked before any file is written: nothing is left behind. The
    # library raises common.errors.UserError for what the user gave; anything else is a bug.
    check_config(cfg)
    check_output_dir(cfg.out_dir)
    report = run(cfg)
    paths = write_report(report, cfg.out_dir, extra={"config.json": config_json(cfg)})
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f" and {Path(cfg.out_dir) / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip nmi", main))
