"""``clipvip finetune``: fine-tune CLIP-ViP for text-video retrieval, selecting on a validation split.

The best checkpoint (by ``eval.select_metric`` on ``eval.manifest``, a validation split - never the
test split) is written to ``<run_dir>/best``; evaluate it on test once with ``clipvip evaluate``.

Example::

    torchrun --nproc_per_node 8 -m jobs.finetune --config finetune_msrvtt \\
        finetune.manifest=data/msrvtt/train9k.jsonl eval.manifest.manifest=data/msrvtt/val.jsonl
"""

from __future__ import annotations

import sys

from jobs.common import cli_main
from jobs.train_cli import parse, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv, "clipvip finetune", "finetune_msrvtt", "finetune")
    result = run(cfg)
    print(f"done: {result['steps']} steps; best {cfg.eval.select_metric} {result['best']['value']:.2f} at step "
          f"{result['best']['step']} -> {cfg.run_dir}/best")
    print(f"test it once: clipvip evaluate --model {cfg.run_dir}/best --dataset {cfg.finetune.dataset} "
          f"--manifest <test.jsonl> --video-root {cfg.finetune.video_root} --frames {cfg.finetune.num_frames} "
          f"--max-text-len {cfg.finetune.max_text_len} --tokenizer {cfg.model.tokenizer or cfg.run_dir + '/tokenizer'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip finetune", main))
