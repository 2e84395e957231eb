"""``clipvip evaluate``: text-video retrieval of a model on one split, every video and text encoded once.

Reports t2v and v2t R@1/5/10, MdR and MnR, with and without DSL, and writes them as JSON.

Example::

    clipvip evaluate --model runs/finetune_msrvtt_b32/best --dataset msrvtt \\
        --manifest data/msrvtt/test1ka.jsonl --video-root data/msrvtt/videos --tokenizer openai/clip-vit-base-patch32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import UserError
from jobs.common import cli_main, offline_defaults, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model dir (config.json + model.safetensors), or "
                   "clipvip:<official .pt>")
    p.add_argument("--clip-config", help="clipvip:<.pt> of an architecture other than the released B/32 and B/16: "
                   "the transformers CLIP config.json (or its folder) it was built from, which gives its head counts")
    p.add_argument("--tokenizer", required=True, help="CLIP tokenizer dir or hub id")
    p.add_argument("--dataset", required=True, choices=("msrvtt", "didemo", "activitynet", "lsmdc"))
    p.add_argument("--manifest", required=True, help="JSONL: clip_name/video + text (module train.retrieval_data)")
    p.add_argument("--video-root", default="")
    p.add_argument("--frames", type=int, default=None, help="default 32 for activitynet, else 12")
    p.add_argument("--max-text-len", type=int, default=None, help="default 70 for activitynet, else 50")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--ties", default="official", choices=("official", "optimistic"),
                   help="'official' is the official evaluation (float32 scores, every tied position counted), as "
                        "the papers' tables; 'optimistic' scores in float64 and ranks a query by the candidates "
                        "strictly better")
    p.add_argument("--out", help="write the metrics JSON here")
    args = p.parse_args(argv)
    setup_logging()
    offline_defaults()
    check(args)

    import torch
    from torch.utils.data import DataLoader

    from model.convert import HeadCountError, load_checkpoint, load_official_clipvip
    from train.evaluate import evaluate_retrieval, format_metrics
    from train.setup import check_tokenizer_fits
    from train.retrieval_data import RetrievalEvalDataset, collate_eval, load_manifest
    from model.tokenizer import load_tokenizer

    anet = args.dataset == "activitynet"
    frames = args.frames or (32 if anet else 12)
    text_len = args.max_text_len or (70 if anet else 50)
    try:
        if args.model.startswith("clipvip:"):
            model, _ = load_official_clipvip(args.model.split(":", 1)[1], clip_config=args.clip_config)
        else:
            model = load_checkpoint(args.model)
    except HeadCountError as exc:
        raise UserError(f"--model {args.model}: {exc.detail}; give --clip-config <the transformers CLIP config.json "
                        "it was built from>") from exc
    except UserError as exc:  # the loaders name the file and the fix
        raise UserError(f"--model {args.model}: {exc}") from exc
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except UserError as exc:
        raise UserError(f"--tokenizer {args.tokenizer}: {exc}") from exc
    check_tokenizer_fits(model, tokenizer, "--tokenizer")
    size = args.image_size or model.config.image_size
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model.to(device)
    entries = load_manifest(args.manifest, args.dataset, args.video_root)
    loader = DataLoader(RetrievalEvalDataset(entries, frames, size), batch_size=args.batch_size,
                        num_workers=args.workers, collate_fn=collate_eval)
    metrics = evaluate_retrieval(model, loader, tokenizer, max_text_len=text_len, image_size=size,
                                 device=device, precision=args.precision, ties=args.ties)
    print(format_metrics(metrics))
    if args.out:
        from train.log import strict_dumps

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(strict_dumps(metrics, indent=2) + "\n")
    return 0


def check(args: argparse.Namespace) -> None:
    """The inputs exist and the numbers make sense, before any model is loaded (UserError otherwise)."""
    from train.inputs import checkpoint_dir_problems, manifest_problems

    problems = []
    if args.model.startswith("clipvip:"):
        official = Path(args.model.split(":", 1)[1]).expanduser()
        if not official.is_file():
            problems.append(f"--model {args.model}: checkpoint file {official} does not exist")
    else:
        problems += checkpoint_dir_problems("--model", args.model)
        if args.clip_config:
            problems.append("--clip-config only applies to --model clipvip:<official .pt>")
    if args.clip_config and not Path(args.clip_config).expanduser().exists():
        problems.append(f"--clip-config {args.clip_config} does not exist")
    problems += manifest_problems("--manifest", args.manifest, args.dataset, args.video_root, evaluation=True)
    if args.tokenizer.startswith(("/", ".", "~")) and not Path(args.tokenizer).expanduser().is_dir():
        problems.append(f"--tokenizer {args.tokenizer}: folder does not exist; give a CLIP tokenizer folder or hub id")
    for name in ("frames", "max_text_len", "image_size", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} {value} must be at least 1")
    if args.workers < 0:
        problems.append(f"--workers {args.workers} must be 0 or more")
    if args.out and Path(args.out).is_dir():
        problems.append(f"--out {args.out} is a folder; give a file name for the metrics JSON")
    if problems:
        raise UserError("; ".join(problems))


if __name__ == "__main__":
    sys.exit(cli_main("clipvip evaluate", main))
