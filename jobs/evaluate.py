"""``clipvip evaluate``: text-video retrieval of a model on one split, every video and text encoded once.

Reports t2v and v2t R@1/5/10, MdR and MnR, with and without DSL, and writes them as JSON.

Example::

    clipvip evaluate --model runs/finetune_msrvtt_b32/best --dataset msrvtt \\
        --manifest data/msrvtt/test1ka.jsonl --video-root data/msrvtt/videos --tokenizer openai/clip-vit-base-patch32
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from common.errors import UserError
from jobs.common import cli_main, offline_defaults, setup_logging
from jobs.help import HelpFormatter


def default_workers() -> int:
    """Loader processes: 4, or fewer on a machine with fewer cores (PyTorch warns beyond them)."""
    return max(0, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip evaluate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="a model dir (config.json + model.safetensors: <run_dir>/best or "
                   "<run_dir>/checkpoints/step_N/model), or clipvip:<official .pt>")
    p.add_argument("--clip-config", help="clipvip:<.pt> of an architecture other than the released B/32 and B/16: "
                   "the transformers CLIP config.json (or its folder) it was built from, which gives its head counts")
    p.add_argument("--tokenizer", required=True, help="the CLIP tokenizer dir or hub id the model was trained with")
    p.add_argument("--dataset", required=True, choices=("msrvtt", "didemo", "activitynet", "lsmdc"),
                   help="how the manifest's texts are read (paragraph datasets join their sentences)")
    p.add_argument("--manifest", required=True, help="JSONL: clip_name/video + text (module train.retrieval_data)")
    p.add_argument("--video-root", default="", help="folder the manifest's clip names are relative to (default: "
                   "the manifest's own paths)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: 32 for activitynet, else 12)")
    p.add_argument("--max-text-len", type=int, default=None, help="tokens per text (default: 70 for activitynet, "
                   "else 50)")
    p.add_argument("--image-size", type=int, default=None, help="frame size in pixels (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32, help="videos per forward pass")
    p.add_argument("--workers", type=int, default=default_workers(), help="video-decoding processes (default: 4, "
                   "at most the cores available)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="autocast precision on CUDA "
                   "(the CPU computes in fp32)")
    p.add_argument("--ties", default="official", choices=("official", "optimistic"),
                   help="'official' is the official evaluation (float32 scores, every tied position counted), as "
                        "the papers' tables; 'optimistic' scores in float64 and ranks a query by the candidates "
                        "strictly better")
    p.add_argument("--out", help="write the metrics and what produced them (model, manifest, frames, tie rule, ...) "
                   "as JSON here")
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

        record = provenance(args, frames=frames, text_len=text_len, image_size=size, device=str(device))
        record.update(n_videos=metrics.pop("n_videos"), n_texts=metrics.pop("n_texts"), metrics=metrics)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(strict_dumps(record, indent=2) + "\n")
    return 0


def provenance(args: argparse.Namespace, **resolved: Any) -> dict[str, Any]:
    """What a result was computed from: enough to tell two result files apart and to rerun one."""
    import hashlib

    manifest = Path(args.manifest).expanduser()
    return {"model": args.model, "clip_config": args.clip_config, "tokenizer": args.tokenizer,
            "dataset": args.dataset, "manifest": str(manifest.resolve()),
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "video_root": args.video_root, "frames": resolved["frames"], "max_text_len": resolved["text_len"],
            "image_size": resolved["image_size"], "ties": args.ties, "precision": args.precision,
            "device": resolved["device"], "command": "clipvip evaluate " + shlex.join(_argv_of(args))}


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The options as a command line (the parsed values, so defaults are spelt out)."""
    out = []
    for key, value in vars(args).items():
        if value not in (None, ""):
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


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
