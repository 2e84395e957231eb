"""``clipvip pretrain``: post-pretrain CLIP-ViP on curated WebDataset shards with the OCL losses.

Examples::

    clipvip pretrain --config debug data.shards='runs/curate/shards/shard-{000000..000005}.tar'
    torchrun --nproc_per_node 8 -m jobs.pretrain --config pretrain_b32 data.shards='s3://b/hdvila-{000000..009999}.tar'

The same command resumes a stopped run from the latest checkpoint in ``run_dir``.
"""

from __future__ import annotations

import sys

from jobs.common import cli_main
from jobs.train_cli import Stopped, is_rank0, parse, run

PROG = "clipvip pretrain"


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse(argv, PROG, "debug", "pretrain")
        result = run(cfg, PROG, argv)
    except Stopped as stop:
        return stop.code
    if not is_rank0():
        return 0
    print(f"done: {result['steps']} steps, run dir {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(PROG, main))
