"""The demo's captioner: a tiny OFA taught to see the synthetic clips (``clipvip demo``).

A tiny OFA with random weights writes word salad. Before curation the demo fine-tunes it with OFA's
caption stage 1 (``caption/ofa/finetune.py``, through the same manifest reader ``clipvip caption
finetune`` uses) on the middle frames of a labelled set of synthetic clips that shares no clip
with the pretraining or test sets. Its reference captions say only what one frame can show, the
shape and its colour, never the direction of motion. The model then
captions held-out labelled frames, and later the curated pretraining clips, whose colour and shape
are known: both accuracies go in the report, with a grid of example frames and their captions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

def frame_caption(color: str, shape: str) -> str:
    """What one still frame shows, COCO-style: the shape and its colour, nothing about motion.

    One phrasing on purpose: with five ("a picture of a ...", "... on a dark background", ...) the
    tiny OFA, learning from random weights, named the shape of held-out frames right only 60-80% of
    the time after 150 steps, against 90-100% with one.
    """
    return f"a {color} {shape}"


def caption_corpus() -> list[str]:
    """Text the tiny OFA's BPE is learnt from: its test corpus plus every frame caption the demo can ask for,
    so caption words are whole tokens, as in a real OFA's vocabulary."""
    from demo.tiny_ofa import CORPUS
    from demo.synth import COLORS, SHAPES

    return CORPUS + [frame_caption(c, s) for c in COLORS for s in SHAPES]


def write_labelled(rows: list[dict], out_dir: Path, n_train: int) -> tuple[Path, Path]:
    """The fine-tuning manifest (``video`` + ``caption``) and the held-out one (with ``color``/``shape``)."""
    paths = out_dir / "captioner_train.jsonl", out_dir / "captioner_heldout.jsonl"
    for path, part in zip(paths, (rows[:n_train], rows[n_train:])):
        with open(path, "w") as f:
            for r in part:
                f.write(json.dumps({"key": r["key"], "video": r["path"], "caption": frame_caption(r["color"], r["shape"]),
                                    "color": r["color"], "shape": r["shape"]}) + "\n")
    return paths


def attribute_accuracy(captions: list[str], colors: list[str], shapes: list[str], palette: tuple[tuple[str, ...], tuple[str, ...]],
                       ) -> dict[str, float]:
    """Share of captions naming the right colour (and no other colour of the palette), the right shape
    (and no other), and both."""
    all_colors, all_shapes = palette
    right_c = right_s = both = 0
    for text, color, shape in zip(captions, colors, shapes):
        words = set(text.lower().split())
        c = color in words and not (words & (set(all_colors) - {color}))
        s = shape in words and not (words & (set(all_shapes) - {shape}))
        right_c, right_s, both = right_c + c, right_s + s, both + (c and s)
    n = max(1, len(captions))
    return {"color": right_c / n, "shape": right_s / n, "both": both / n, "n": len(captions)}


def finetune_captioner(cfg, out: Path, data: dict, results: dict) -> str:
    """Fine-tune the demo's OFA on the labelled frames, score it on the held-out ones; returns ``ofa:<dir>``."""
    from caption.ofa.finetune import CaptionDataConfig, CaptionFinetuneConfig, load_pixels, read_manifest, run
    from common.jsonl import read_jsonl
    from demo.tiny_ofa import write_tiny_ofa
    from caption.registry import load_captioner
    from demo.synth import COLORS, SHAPES

    tiny = not cfg.caption_model
    start = (f"ofa:{write_tiny_ofa(out / 'models' / 'ofa_tiny', seed=cfg.seed, corpus=caption_corpus())}"
             if tiny else cfg.caption_model)
    finetuned = out / "models" / "ofa_finetuned"
    ft_cfg = CaptionFinetuneConfig(
        model=start, out_dir=str(finetuned), data=CaptionDataConfig(manifest=str(data["captioner_train"]), num_workers=1),
        steps=cfg.caption_steps, batch_size=cfg.caption_batch_size, seed=cfg.seed, device="cpu",
        # The official recipe (lr 1e-5, frozen token embeddings) adapts trained weights; a random tiny
        # model has nothing to keep, so it learns everything at a large lr. Dropout follows the recipe.
        **(dict(lr=cfg.caption_lr, freeze_embeddings=False, warmup_ratio=0.1) if tiny else {}),
    )
    summary = run(ft_cfg)
    spec = f"ofa:{finetuned}"
    heldout = read_manifest(data["captioner_heldout"])
    rows = read_jsonl(data["captioner_heldout"])
    captioner = load_captioner(spec, device="cpu")
    size = captioner.cfg.patch_image_size
    captions = captioner.generate([load_pixels(p, size) for p in heldout])
    accuracy = attribute_accuracy(captions, [r["color"] for r in rows], [r["shape"] for r in rows],
                                  (tuple(COLORS), tuple(SHAPES)))
    results["captioner"] = {
        "start": start, "model": spec, "steps": summary["steps"], "pairs": summary["pairs"],
        "losses": summary["losses"], "seconds": summary["seconds"], "heldout_accuracy": accuracy,
        "heldout_examples": [{"caption": c, "color": r["color"], "shape": r["shape"]} for c, r in zip(captions, rows)][:8],
    }
    args = " ".join(f"--set {k}={v}" for k, v in (("lr", ft_cfg.lr), ("freeze_embeddings", ft_cfg.freeze_embeddings),
                                                  ("warmup_ratio", ft_cfg.warmup_ratio)))
    results["commands"].append(f"clipvip caption finetune --model {start} --manifest {data['captioner_train']} "
                               f"--out {finetuned} --steps {ft_cfg.steps} --batch-size {ft_cfg.batch_size} "
                               f"--seed {ft_cfg.seed} --device cpu {args}")
    print(f"captioner: loss {summary['losses'][0]:.2f} -> {summary['losses'][-1]:.2f} in {summary['steps']} steps; "
          f"held-out frames: colour {accuracy['color']:.0%}, shape {accuracy['shape']:.0%}, both {accuracy['both']:.0%}")
    return spec


def shard_samples(shards: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The pretraining samples' middle frame, subtitle, caption and metadata, in shard order."""
    from shards.format import expand_pattern, raw_samples

    out = []
    for raw in raw_samples(expand_pattern(shards), lambda e: None,
                           wanted=lambda ext: ext in ("jpg", "subtitle.txt", "caption.txt", "json")):
        out.append({"key": raw["__key__"], "jpg": raw.get("jpg"), "subtitle": raw["subtitle.txt"].decode(),
                    "caption": raw["caption.txt"].decode(), "meta": json.loads(raw["json"])})
        if limit and len(out) >= limit:
            break
    return out


def pretraining_caption_accuracy(samples: list[dict[str, Any]]) -> dict[str, float]:
    """The curated captions against the pretraining clips' true colour and shape (carried in the metadata)."""
    from demo.synth import COLORS, SHAPES

    return attribute_accuracy([s["caption"] for s in samples], [s["meta"]["color"] for s in samples],
                              [s["meta"]["shape"] for s in samples], (tuple(COLORS), tuple(SHAPES)))


def subtitle_mentions(samples: list[dict[str, Any]]) -> dict[str, float]:
    """How often a pretraining subtitle names the clip's colour, shape and direction, word for word."""
    n = max(1, len(samples))
    out = {}
    for field in ("color", "shape", "direction"):
        out[field] = sum(s["meta"][field] in s["subtitle"].split() for s in samples) / n
    return out


def example_grid(samples: list[dict[str, Any]], out_png: Path, n: int = 8) -> Path:
    """The first ``n`` pretraining clips in shard order (no picking): each middle frame with its OFA
    caption (green when colour and shape are right, red otherwise) and the start of its subtitle."""
    import io
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from demo.synth import COLORS, SHAPES

    chosen = samples[:n]
    cols = 4
    rows = -(-len(chosen) // cols)
    fig = plt.figure(figsize=(3.3 * cols, 3.9 * rows))
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3.2, 1.0] * rows, hspace=0.05, wspace=0.08)
    for i, s in enumerate(chosen):
        r, c = divmod(i, cols)
        ax, text_ax = fig.add_subplot(grid[2 * r, c]), fig.add_subplot(grid[2 * r + 1, c])
        ax.imshow(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
        ax.set_xticks([])
        ax.set_yticks([])
        right = attribute_accuracy([s["caption"]], [s["meta"]["color"]], [s["meta"]["shape"]],
                                   (tuple(COLORS), tuple(SHAPES)))["both"] == 1.0
        ax.set_title(f"caption: {s['caption']}", fontsize=10, color="darkgreen" if right else "firebrick")
        text_ax.axis("off")
        subtitle = textwrap.shorten(s["subtitle"], 90, placeholder=" ...")
        text_ax.text(0, 1, textwrap.fill(f"subtitle: {subtitle}", 46), fontsize=7.5, va="top", color="dimgray",
                     transform=text_ax.transAxes)
    fig.suptitle("Pretraining clips in shard order: middle frame, fine-tuned OFA caption (green: colour and shape "
                 "right), ASR-like subtitle", fontsize=10)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png
