"""The stages of ``clipvip demo`` (see ``jobs/demo.py``); each calls the library that does the work."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("clipvip.demo")

TEST_FORMAT = dict(vary_format=False)  # 224x224, 6 fps, 4 s: 24 frames, one keyframe every 12


def weights_notes(cfg) -> list[str]:
    notes = []
    if not cfg.clip_model:
        notes.append("CLIP-ViP starts from a tiny randomly initialised model (no CLIP weights given): every number "
                     "below measures what that tiny model learns from a few hundred synthetic clips in minutes, "
                     "not CLIP-ViP's real accuracy. Set clip_model to a CLIP folder or hub id to use real weights.")
    if not cfg.caption_model:
        notes.append("Captions come from a tiny OFA (the real architecture at 32 channels and 64 px) that starts from "
                     "random weights and is fine-tuned here, with OFA's caption recipe, on labelled frames of other "
                     "synthetic clips: it names colour and shape, which one frame shows, and never the direction of "
                     "motion. Set caption_model to 'ofa:<checkpoint>' to start from a real OFA instead.")
    elif cfg.caption_model.startswith("ofa:") and cfg.caption_steps > 0:
        notes.append(f"Captions come from {cfg.caption_model} fine-tuned here with OFA's caption recipe "
                     "(lr 1e-5, frozen token embeddings) on labelled frames of other synthetic clips.")
    return notes


def _rows(manifest: Path) -> list[dict]:
    from common.jsonl import read_jsonl

    return read_jsonl(manifest)


def _retrieval_manifest(rows: list[dict], path: Path) -> Path:
    """The official one-row-per-video layout that ``train.retrieval_data`` reads."""
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"video": r["path"], "text": r["caption_gt"], "key": r["key"]}) + "\n")
    return path


def synthesise(cfg, out: Path, results: dict) -> dict[str, Any]:
    from demo.captioner import write_labelled
    from demo.synth import synthesize

    data = out / "data"
    palette = dict(colors=tuple(cfg.colors), shapes=tuple(cfg.shapes), workers=cfg.synth_workers)
    pre = synthesize(data / "pretrain", cfg.n_pretrain, seed=cfg.seed, prefix="pre", span_fraction=0.05,
                     subtitles=cfg.subtitles, progress=True, **palette)
    # The downstream-style sets have clean descriptions (like MSR-VTT captions) and one format.
    n_down = cfg.n_finetune + cfg.n_val + cfg.n_test
    down = synthesize(data / "downstream", n_down, seed=cfg.seed + 1000, prefix="down", progress=True,
                      **TEST_FORMAT, **palette)
    rows = _rows(down)
    ft, val, test = rows[:cfg.n_finetune], rows[cfg.n_finetune:cfg.n_finetune + cfg.n_val], rows[-cfg.n_test:]
    # The captioner's labelled clips: other clips again (own seed and keys), used only for their
    # middle frames, so one second each is enough.
    n_cap = cfg.n_caption_train + cfg.n_caption_heldout
    cap = synthesize(data / "captioner", n_cap, seed=cfg.seed + 2000, prefix="cap", seconds=1.0, progress=True,
                     **palette)
    cap_train, cap_heldout = write_labelled(_rows(cap), data, cfg.n_caption_train)
    paths = {
        "pretrain_manifest": pre,
        "finetune": _retrieval_manifest(ft, data / "finetune.jsonl"),
        "val": _retrieval_manifest(val, data / "val.jsonl"),
        "test": _retrieval_manifest(test, data / "test.jsonl"),
        # Every downstream-style description: the NMI report's downstream corpus.
        "descriptions": _retrieval_manifest(rows, data / "descriptions.jsonl"),
        "test_rows": test,
        "captioner_train": cap_train,
        "captioner_heldout": cap_heldout,
    }
    results["data"] = {"pretrain_clips": cfg.n_pretrain, "finetune_clips": len(ft), "val_clips": len(val),
                       "test_clips": len(test), "captioner_train_clips": cfg.n_caption_train,
                       "captioner_heldout_clips": cfg.n_caption_heldout, "subtitles": cfg.subtitles}
    return paths


def train_captioner(cfg, out: Path, data: dict, results: dict) -> str:
    """The caption model curation uses: the demo's OFA fine-tuned on labelled frames (``demo/captioner.py``),
    or ``caption_model`` as given when it cannot or should not be fine-tuned."""
    from demo.captioner import finetune_captioner

    if cfg.caption_model and (cfg.caption_steps <= 0 or not cfg.caption_model.startswith("ofa:")):
        results["captioner"] = {"model": cfg.caption_model, "steps": 0}
        return cfg.caption_model
    return finetune_captioner(cfg, out, data, results)


def curate(cfg, out: Path, data: dict, caption_model: str, results: dict) -> str:
    from caption.protocol import DecodeSettings
    from video.frames import FrameConfig
    from pipeline.manifest import ManifestConfig
    from pipeline.run import CurateConfig, RayConfig, run
    from pipeline.caption_service import CaptionConfig
    from pipeline.writer import ShardWriterConfig

    shard_dir = out / "shards"
    per_shard = max(8, -(-cfg.n_pretrain // 8))
    curate_cfg = CurateConfig(
        manifest=ManifestConfig(path=str(data["pretrain_manifest"])),
        frames=FrameConfig(short_side=cfg.short_side),
        caption=CaptionConfig(model=caption_model, batch_size=8, decode=DecodeSettings()),
        writer=ShardWriterConfig(output_dir=str(shard_dir), prefix="train", samples_per_shard=per_shard),
        ray=RayConfig(num_cpus=cfg.ray_num_cpus),
        progress_every_s=5.0,
    )
    summary = run(curate_cfg)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    results["curate"] = {"summary": summary, "caption_model": caption_model}
    results["commands"].append(f"clipvip curate --set manifest.path={data['pretrain_manifest']} "
                               f"--set caption.model={caption_model} --set writer.output_dir={shard_dir} "
                               f"--set writer.prefix=train --set writer.samples_per_shard={per_shard} "
                               f"--set frames.short_side={cfg.short_side}")
    # The brace pattern every reader takes (the loader, the NMI corpora, the tokenizer texts).
    pattern = str(shard_dir / f"train-{{000000..{summary['shards'] - 1:06d}}}.tar")
    from demo.captioner import example_grid, pretraining_caption_accuracy, shard_samples, subtitle_mentions

    samples = shard_samples(pattern)
    results["curate"]["caption_accuracy"] = pretraining_caption_accuracy(samples)
    results["curate"]["subtitle_mentions"] = subtitle_mentions(samples)
    (out / "report").mkdir(parents=True, exist_ok=True)
    results["curate"]["examples_png"] = str(example_grid(samples, out / "report" / "caption_examples.png"))
    return pattern


def nmi_report(cfg, out: Path, shards: str, data: dict, results: dict) -> None:
    from analysis.report import NMIConfig, run
    from analysis.render import write_report

    nmi_cfg = NMIConfig(
        pretrain=(f"subtitles={shards}:subtitle", f"captions={shards}:caption"),
        downstream=(f"descriptions={data['descriptions']}:text",),
        # Three samples: K-means on a few hundred sentences can land on another split, and the spread shows it.
        n=min(cfg.nmi_n, cfg.n_finetune + cfg.n_val + cfg.n_test, cfg.n_pretrain), seeds=(0, 1, 2), cache_dir=None,
        out_dir=str(out / "nmi"), project_points=200,
    )
    report = run(nmi_cfg)
    written = write_report(report, nmi_cfg.out_dir)
    captions = next(c for c in report.corpora if c["name"] == "captions")
    results["nmi"] = {"out_dir": nmi_cfg.out_dir, "files": {k: str(v) for k, v in written.items()},
                      "vs_descriptions": {name: report.pair(name, "descriptions").nmi.mean
                                          for name in ("subtitles", "captions")},
                      "vs_descriptions_per_seed": {name: list(report.pair(name, "descriptions").nmi.values)
                                                   for name in ("subtitles", "captions")},
                      "n": nmi_cfg.n, "seeds": list(nmi_cfg.seeds),
                      # The captioner names a colour and a shape and nothing else: a handful of distinct
                      # strings, each a description's opening words.
                      "captions_unique": captions["unique"], "captions_total": captions["non_empty"]}
    results["commands"].append("clipvip nmi --pretrain " + " --pretrain ".join(nmi_cfg.pretrain) + " --downstream "
                               + " --downstream ".join(nmi_cfg.downstream) + f" --n {nmi_cfg.n} --out {nmi_cfg.out_dir}")


def tokenizer(cfg, out: Path, shards: str, data: dict) -> str:
    """The CLIP checkpoint's tokenizer, or a small CLIP-format BPE learnt from the demo's own text."""
    if cfg.clip_model:
        return cfg.clip_model
    from model.tokenizer import train_clip_bpe
    from train.data import shard_texts

    texts = shard_texts(shards)  # subtitles and captions
    for name in ("finetune", "val"):
        texts += [r["text"] for r in _rows(data[name])]
    return str(train_clip_bpe(texts, out / "models" / "tokenizer", num_merges=300))


def _test_videos(cfg, data: dict) -> tuple[torch.Tensor, list[str]]:
    """The held-out clips decoded once, as the library's evaluation decodes them (uniform frames), for
    every model, with their descriptions."""
    from train.retrieval_data import RetrievalEvalDataset, load_manifest

    test = RetrievalEvalDataset(load_manifest(str(data["test"]), "msrvtt"), cfg.num_frames, cfg.image_size)
    items = [test[i] for i in range(len(test))]
    return torch.stack([it["video"] for it in items]), [it["texts"][0] for it in items]


def _encode(model, tok, videos: torch.Tensor, texts: list[str], max_len: int, batch: int = 32):
    """Text and video features of (video i, text i) pairs through the library's encode-once evaluation."""
    from train.evaluate import encode_eval_set

    batches = ({"video": videos[i:i + batch], "texts": [[t] for t in texts[i:i + batch]]}
               for i in range(0, len(videos), batch))
    text_feats, video_feats, _ = encode_eval_set(model, batches, tok, max_text_len=max_len,
                                                 image_size=videos.shape[-1], device=torch.device("cpu"),
                                                 text_batch_size=batch)
    return text_feats, video_feats


def top1_attributes(text_feats: np.ndarray, video_feats: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """For each test description, whether the top-ranked video has the right colour, shape and direction.

    Splits R@1 into what the model tells apart: a caption-trained model can only get colour and shape
    from its texts, the direction has to come from the subtitles (or is at chance, about 1 in 4).
    """
    top = (text_feats @ video_feats.T).argmax(1)
    return {field: float(np.mean([rows[j][field] == rows[i][field] for i, j in enumerate(top)]))
            for field in ("color", "shape", "direction")}


def score_model(cfg, model_dir: str, tokenizer_dir: str, videos: torch.Tensor, texts: list[str],
                rows: list[dict]) -> dict[str, Any]:
    """Retrieval (plain and DSL) on the test clips, the direction probe on them and their reversals, and
    which attributes the top-1 video gets right."""
    from model.convert import load_checkpoint
    from demo.direction import build_pairs, score_pairs
    from model.metrics import evaluate_all
    from model.tokenizer import load_tokenizer

    model = load_checkpoint(model_dir)
    tok = load_tokenizer(tokenizer_dir)
    # The pair set is the test clips followed by their reversals: its first half is the plain test set.
    pt, pv = _encode(model, tok, *build_pairs(videos, texts), max_len=32)
    text_feats, video_feats = pt[:len(texts)], pv[:len(texts)]
    metrics = evaluate_all(text_feats, video_feats)
    direction = score_pairs(pv, pt)
    np.savez(Path(model_dir).parent / "test_features.npz", text=text_feats, video=video_feats,
             pair_text=pt, pair_video=pv)
    return {"retrieval": metrics, "direction": dataclasses.asdict(direction),
            "top1": top1_attributes(text_feats, video_feats, rows),
            "features": str(Path(model_dir).parent / "test_features.npz")}


def evaluate_variants(cfg, out: Path, runs: dict[str, str], tokenizer_dir: str, data: dict, results: dict) -> None:
    """Score every run and test the claims.

    ``evaluation``: the first seed's run of each variant; ``seeds``: every variant's runs in seed
    order; ``finetuned``: every fine-tuned variant's runs in seed order; ``claims``: each claim's
    paired comparison (``demo/claims.py``); ``dsl``: what DSL does to each variant's t2v R@1.
    """
    from demo.claims import dsl_effect, evaluate_claims

    videos, texts = _test_videos(cfg, data)
    data["test_videos"], data["test_texts"] = videos, texts
    rows = data["test_rows"]
    scores = {name: score_model(cfg, d, tokenizer_dir, videos, texts, rows) for name, d in runs.items()}
    plan = results["pretrain"]["plan"]
    results["evaluation"] = {p["variant"]: scores[p["run"]] for p in plan if p["seed"] == cfg.seed}
    results["seeds"] = {name: [{"seed": p["seed"], **scores[p["run"]]} for p in plan if p["variant"] == name]
                        for name in dict.fromkeys(p["variant"] for p in plan)}
    ft = results["finetune"]
    for run_name, run in ft["runs"].items():
        run["evaluation"] = score_model(cfg, run["best_dir"], tokenizer_dir, videos, texts, rows)
    results["finetuned"] = {name: [{"seed": p["seed"], **ft["runs"][p["run"]]["evaluation"]} for p in ft["plan"]
                                   if p["variant"] == name]
                            for name in dict.fromkeys(p["variant"] for p in ft["plan"])}
    groups = {**results["seeds"], **{f"{name}_finetuned": r for name, r in results["finetuned"].items()}}
    results["claims"] = evaluate_claims(groups, rows)
    results["dsl"] = {name: dsl_effect(r, rows) for name, r in groups.items()}
    results["chance"] = {"r1": 100.0 / len(texts), "r5": 100.0 * min(5, len(texts)) / len(texts),
                         "medr": (len(texts) + 1) / 2, "pair_accuracy": 0.5}


def write_report(cfg, out: Path, results: dict) -> Path:
    from demo.report import write

    return write(cfg, out, results)
