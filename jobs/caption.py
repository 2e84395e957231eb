"""``clipvip caption``: caption image files, fine-tune and convert OFA, write the tiny test OFA.

    clipvip caption convert-ofa caption_large_best_clean.pt models/ofa-large --bpe-dir OFA/utils/BPE
    clipvip caption images --model ofa:models/ofa-large frame1.jpg frame2.jpg [--out captions.jsonl]
    clipvip caption finetune --model ofa:models/ofa-large --manifest pairs.jsonl --out models/ofa-large-mine
    clipvip caption finetune --model ofa:models/ofa-large --shards 'shards/train-*.tar' --text-field json.label \\
        --out models/ofa-large-mine
    clipvip caption tiny-ofa models/ofa-tiny-random

``finetune`` runs OFA's caption stage 1 (cross-entropy with label smoothing 0.1, the caption prompt)
on (image, caption) pairs: a JSON-lines manifest of {"image" or "video": path, "caption": text}
rows, or clipvip shards (jpg + a text field). The result loads as ofa:<out>. Every field of
caption.ofa.finetune.CaptionFinetuneConfig can be set with --set (e.g. --set warmup_ratio=0.1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.errors import UserError
from jobs.common import cli_main, offline_defaults, setup_logging
from jobs.help import HelpFormatter

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipvip caption", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)

    conv = sub.add_parser("convert-ofa", formatter_class=HelpFormatter,
                          help="official fairseq OFA .pt -> safetensors + config.json (+ BPE files)")
    conv.add_argument("checkpoint", type=Path, help="the official OFA checkpoint, e.g. caption_large_best_clean.pt")
    conv.add_argument("out_dir", type=Path, help="folder for the converted model (loads as ofa:<out_dir>)")
    conv.add_argument("--bpe-dir", type=Path, default=None, help="OFA's utils/BPE folder, copied into out_dir")

    img = sub.add_parser("images", formatter_class=HelpFormatter, help="caption image files, one JSON line per image")
    img.add_argument("images", nargs="+", type=Path, help="image files (jpg, png, ...)")
    img.add_argument("--model", required=True, help="ofa:<dir or .pt> or hf:<model>")
    img.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    img.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the "
                     "captioner's own)")
    img.add_argument("--beam", type=int, default=5, help="beam size (OFA's caption setting)")
    img.add_argument("--max-new-tokens", type=int, default=16, help="longest caption in tokens")
    img.add_argument("--bpe-dir", type=Path, default=None, help="for ofa:<file.pt>, the folder with the BPE files")
    img.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                     help="ofa: weights and activations (auto: fp16 on GPU as the official scripts, fp32 on CPU)")
    img.add_argument("--out", type=Path, default=None, help="also write JSON lines here")

    ft = sub.add_parser("finetune", formatter_class=HelpFormatter,
                        help="fine-tune an OFA captioner on (image, caption) pairs (OFA caption stage 1)")
    ft.add_argument("--model", required=True, help="ofa:<converted dir> or ofa:<official .pt>")
    ft.add_argument("--out", required=True, type=Path, dest="out_dir", help="folder for the fine-tuned model")
    ft.add_argument("--manifest", default="", help='JSON lines: {"image" or "video": path, "caption": text}')
    ft.add_argument("--shards", default="", help="clipvip shard pattern(s): each sample's jpg and --text-field")
    ft.add_argument("--text-field", default="caption",
                    help="manifest column; for shards caption, subtitle or json.<key> (default caption)")
    ft.add_argument("--bpe-dir", type=Path, default=None, help="for ofa:<file.pt>, the folder with the BPE files")
    ft.add_argument("--steps", type=int, default=None, help="optimizer steps (default: from --epochs)")
    ft.add_argument("--epochs", type=float, default=None, help="passes over the pairs (default: 2, as OFA's "
                    "stage-1 script)")
    ft.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: 32)")
    ft.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-5, OFA's)")
    ft.add_argument("--label-smoothing", type=float, default=None, help="(default: 0.1, OFA's)")
    ft.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    ft.add_argument("--seed", type=int, default=None, help="(default: 0)")
    ft.add_argument("--config", default=None, help="TOML/YAML/JSON file of CaptionFinetuneConfig fields")
    ft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")

    tiny = sub.add_parser("tiny-ofa", formatter_class=HelpFormatter,
                          help="write a tiny random OFA (for offline demos and tests)")
    tiny.add_argument("out_dir", type=Path, help="folder for the model (loads as ofa:<out_dir>)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def _caption_images(args: argparse.Namespace) -> int:
    from caption.ofa.preprocess import load_image
    from caption.protocol import DecodeSettings
    from caption.registry import load_captioner

    images = [load_image(p) for p in args.images]
    kwargs, names = {}, {}
    if args.model.startswith("ofa:"):
        kwargs = {k: v for k, v in (("batch_size", args.batch_size), ("bpe_dir", args.bpe_dir),
                                    ("precision", args.precision)) if v}
        names = {"names": [str(p) for p in args.images]}  # an image left without a caption is named by its file
    settings = DecodeSettings(beam=args.beam, max_new_tokens=args.max_new_tokens)
    captioner = load_captioner(args.model, device=args.device, settings=settings, **kwargs)
    captions = captioner.generate(images, **names)
    meta = captioner.describe()
    lines = [json.dumps({"path": str(p), "caption": c, "captioner": meta}) for p, c in zip(args.images, captions)]
    for p, c in zip(args.images, captions):
        print(f"{p}\t{c}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(line + "\n" for line in lines))
        logger.info("wrote %d captions to %s", len(lines), args.out)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from caption.ofa.finetune import CaptionFinetuneConfig, run
    from jobs import config as config_io

    named = {"model": args.model, "out_dir": str(args.out_dir), "data.manifest": args.manifest,
             "data.shards": args.shards, "data.text_field": args.text_field,
             "bpe_dir": str(args.bpe_dir) if args.bpe_dir else None, "steps": args.steps, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "label_smoothing": args.label_smoothing,
             "device": args.device, "seed": args.seed}
    overrides = [f"{k}={v}" for k, v in named.items() if v is not None] + list(args.set)
    cfg = config_io.load(CaptionFinetuneConfig, args.config, overrides)
    summary = run(cfg)
    print(f"fine-tuned {summary['steps']} steps on {summary['pairs']} pairs: loss {summary['losses'][0]:.3f} -> "
          f"{summary['losses'][-1]:.3f}; caption with --model ofa:{summary['out_dir']}")
    return 0


def _check(args: argparse.Namespace) -> None:
    """Paths and numbers a user can get wrong, before any model is loaded (UserError otherwise)."""
    problems = []
    out_dir = getattr(args, "out_dir", None)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        problems.append(f"output folder {out_dir} is a file; give a new or existing folder")
    if args.action == "convert-ofa" and not args.checkpoint.is_file():
        problems.append(f"checkpoint {args.checkpoint} does not exist; give the official OFA .pt file")
    bpe_dir = getattr(args, "bpe_dir", None)
    if bpe_dir is not None and not bpe_dir.is_dir():
        problems.append(f"--bpe-dir {bpe_dir} is not a folder; give OFA's utils/BPE folder")
    if args.action == "images":
        problems += [f"image {p} does not exist" for p in args.images if not p.is_file()]
        for name in ("beam", "max_new_tokens", "batch_size"):
            value = getattr(args, name)
            if value is not None and value < 1:
                problems.append(f"--{name.replace('_', '-')} {value} must be at least 1")
        if args.out is not None and args.out.is_dir():
            problems.append(f"--out {args.out} is a folder; give a file name for the JSON lines")
    if problems:
        raise UserError("; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    offline_defaults()
    _check(args)
    # The captioner and checkpoint loaders raise common.errors.UserError naming the file and the
    # problem (a corrupt image, a refused or foreign checkpoint, a model spec without a backend);
    # cli_main prints it as one line. Anything else is a bug and keeps its traceback.
    if args.action == "convert-ofa":
        from caption.ofa.checkpoint import convert_fairseq_checkpoint

        out = convert_fairseq_checkpoint(args.checkpoint, args.out_dir, args.bpe_dir)
        logger.info("converted %s -> %s", args.checkpoint, out)
        if args.bpe_dir is None:
            logger.warning("no --bpe-dir: copy encoder.json, vocab.bpe and dict.txt (or vocab.json and merges.txt) "
                           "into %s before captioning", out)
        return 0
    if args.action == "images":
        return _caption_images(args)
    if args.action == "finetune":
        return _finetune(args)
    from demo.tiny_ofa import write_tiny_ofa

    logger.info("wrote tiny OFA to %s", write_tiny_ofa(args.out_dir, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip caption", main))
