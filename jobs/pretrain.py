"""``clipvip pretrain``: post-pretrain CLIP-ViP on curated WebDataset shards with the OCL losses.

Examples::

    clipvip pretrain --config debug data.shards='runs/curate/shards/shard-{000000..000005}.tar'
    torchrun --nproc_per_node 8 -m jobs.pretrain --config pretrain_b32 data.shards='s3://b/hdvila-{000000..009999}.tar'
    torchrun --nproc_per_node 8 -m jobs.pretrain --config pretrain_b32 --resume    # after preemption
"""

from __future__ import annotations

import sys

from jobs.common import cli_main
from jobs.train_cli import parse, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv, "clipvip pretrain", "debug", "pretrain")
    result = run(cfg)
    print(f"done: {result['steps']} steps, run dir {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip pretrain", main))
