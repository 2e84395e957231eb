"""``clipvip finetune``: fine-tune CLIP-ViP for text-video retrieval, selecting on a validation split.

The best checkpoint (by ``eval.select_metric`` on ``eval.manifest``, a validation split - never the
test split) is written to ``<run_dir>/best``; evaluate it on test once with ``clipvip evaluate``.

Example::

    torchrun --nproc_per_node 8 -m jobs.finetune --config finetune_msrvtt \\
        finetune.manifest=data/msrvtt/train9k.jsonl eval.manifest.manifest=data/msrvtt/val.jsonl
"""

from __future__ import annotations

import shlex
import sys

from jobs.common import cli_main
from jobs.train_cli import Stopped, is_rank0, parse, run

PROG = "clipvip finetune"


def evaluate_command(cfg) -> str:
    """The ``clipvip evaluate`` line that tests the run's ``best/`` once (the test manifest left to fill in)."""
    f = cfg.finetune
    args = ["--model", f"{cfg.run_dir}/best", "--dataset", f.dataset, "--manifest", "<test.jsonl>"]
    if f.video_root:
        args += ["--video-root", f.video_root]
    args += ["--frames", str(f.num_frames), "--max-text-len", str(f.max_text_len),
             "--tokenizer", cfg.model.tokenizer or f"{cfg.run_dir}/tokenizer"]
    return "clipvip evaluate " + " ".join(a if a == "<test.jsonl>" else shlex.quote(a) for a in args)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse(argv, PROG, "finetune_msrvtt", "finetune")
        result = run(cfg, PROG, argv)
    except Stopped as stop:
        return stop.code
    if not is_rank0():
        return 0
    best = result["best"]
    if best["step"] or best["value"] != float("-inf"):
        print(f"done: {result['steps']} steps; best {cfg.eval.select_metric} {best['value']:.2f} at step "
              f"{best['step']} -> {cfg.run_dir}/best")
        print(f"test it once: {evaluate_command(cfg)}")
    else:
        print(f"done: {result['steps']} steps, run dir {cfg.run_dir} (no validation set, so no best/: the final "
              f"model is {cfg.run_dir}/checkpoints/step_{result['steps']:08d}/model)")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(PROG, main))
