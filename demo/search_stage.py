"""The demo's last stage: put the fine-tuned model to work on the curated clips.

Embeds the shards with the Ray job (``clipvip embed``), builds the index (``clipvip index``), runs
a few text queries through the library search call and draws ``search_examples.png``: each query
with its top-5 middle frames, each frame marked by whether its clip has the query's colour, shape
and direction. It prints the ``clipvip search`` and ``clipvip serve`` commands for the same index.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("clipvip.demo")

DIRECTIONS = ("left", "right", "up", "down")


def queries(cfg) -> list[tuple[str, dict[str, str]]]:
    """Four descriptions in the synthetic clips' own words, cycling through the palette."""
    out = []
    for i in range(4):
        attrs = {"color": cfg.colors[i % len(cfg.colors)], "shape": cfg.shapes[i % len(cfg.shapes)],
                 "direction": DIRECTIONS[i % len(DIRECTIONS)]}
        out.append((f"a {attrs['color']} {attrs['shape']} moving {attrs['direction']}", attrs))
    return out


def _frame(row: dict[str, Any]):
    from PIL import Image

    with open(row["shard"], "rb") as f:
        f.seek(row["jpg_offset"])
        return Image.open(io.BytesIO(f.read(row["jpg_size"]))).convert("RGB")


def draw(examples: list[dict[str, Any]], store, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(e["hits"]) for e in examples)
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.9 * cols, 2.1 * len(examples)), squeeze=False)
    for r, ex in enumerate(examples):
        rows = store.rows([h["row"] for h in ex["hits"]])
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(rows):
                ax.axis("off")
                continue
            ax.imshow(_frame(rows[c]))
            right = ex["hits"][c]["right"]
            for side in ax.spines.values():
                side.set_color("#2e7d32" if right else "#c62828")
                side.set_linewidth(3)
            meta = rows[c]["meta"]
            ax.set_xlabel(f"{'match' if right else 'no'}: {meta.get('color')} {meta.get('shape')} "
                          f"{meta.get('direction')}\n{ex['hits'][c]['score']:.3f}", fontsize=7)
        first = "right clip first" if ex["hits"] and ex["hits"][0]["right"] else "right clip NOT first"
        axes[r][0].set_ylabel(f"{ex['query']}\n({first})", fontsize=8)
    fig.suptitle("Text queries over the curated clips: top-5 middle frames (green: colour, shape and direction "
                 "all match)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def search_stage(cfg, out: Path, shards: str, model_dir: str, results: dict) -> None:
    """Embed, index and search the curated clips with ``model_dir``; fill ``results["search"]``."""
    import ray

    from pipeline.run import RayConfig
    from search.embed import EmbedConfig, run as embed
    from search.index import IndexConfig, build
    from search.query import Searcher

    root = out / "search"
    summary = embed(EmbedConfig(model=model_dir, shards=shards, output_dir=str(root / "embeddings"),
                                texts=("subtitle", "caption"), batch_size=16, device="cpu",
                                ray=RayConfig(num_cpus=cfg.ray_num_cpus), progress_every_s=5.0))
    if ray.is_initialized():
        ray.shutdown()
    info = build(IndexConfig(embeddings=str(root / "embeddings"), out=str(root / "index"), queries=200))
    searcher = Searcher.open([f"demo={root / 'index'}"], device="cpu")
    store = searcher.stores["demo"]
    examples = []
    for text, attrs in queries(cfg):
        page = searcher.search("demo", text=text, k=5)
        hits = [{"key": h.key, "row": h.row, "score": h.score,
                 "right": all(str(h.meta.get(k)) == v for k, v in attrs.items())} for h in page.hits]
        examples.append({"query": text, "hits": hits})
    png = draw(examples, store, out / "report" / "search_examples.png")
    first_right = sum(bool(e["hits"]) and e["hits"][0]["right"] for e in examples)
    search_cmd = ["--index", str(root / "index"), "--text", examples[0]["query"], "-k", "5", "--device", "cpu"]
    serve_cmd = f"clipvip serve --index demo={root / 'index'}"
    embed_cmd = (f"clipvip embed --model {model_dir} --shards '{shards}' --out {root / 'embeddings'} "
                 "--texts subtitle caption --device cpu")
    index_cmd = f"clipvip index --embeddings {root / 'embeddings'} --out {root / 'index'}"
    results["commands"] += [embed_cmd, index_cmd, "clipvip search " + " ".join(
        f"'{a}'" if " " in a else a for a in search_cmd), serve_cmd]
    results["search"] = {"model": model_dir, "embed": summary, "index": {k: info[k] for k in ("index_key", "count")},
                         "examples": [{"query": e["query"], "top5": [h["key"] for h in e["hits"]],
                                       "right_first": bool(e["hits"] and e["hits"][0]["right"])} for e in examples],
                         "right_first": f"{first_right}/{len(examples)}", "examples_png": str(png)}
    print(f"\nsearch: {info['count']} clips indexed ({info['index_key']}); the right clip came first for "
          f"{first_right} of {len(examples)} queries ({png})")
    print("$ clipvip search " + " ".join(f"'{a}'" if " " in a else a for a in search_cmd), flush=True)
    # The command itself, as a user runs it (the demo imports no entry point: jobs/ sits above it).
    subprocess.run([sys.executable, "-m", "jobs.cli", "search", *search_cmd], check=True)
    print(f"$ {serve_cmd}    # then open http://127.0.0.1:8080/")
    (out / "search" / "examples.json").write_text(json.dumps(results["search"], indent=1, default=str))
