"""The paper's claims as the demo tests them: which models each compares, on which metrics, and what
the comparison says once its paired bootstrap interval (:mod:`demo.stats`) is in.

Each claim compares model A with model B, both trained at every seed of the demo, on the same test
queries. Its first metric decides the verdict: reached when the interval of A - B lies above 0,
reversed when it lies below, not reached when it holds 0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from demo.stats import PairedDifference, paired_difference, rank_credit, top1_correct


@dataclasses.dataclass(frozen=True)
class Claim:
    key: str
    statement: str  # what the paper claims, as this toy can test it
    a: str  # run group: a variant name, or "<variant>_finetuned"
    b: str
    metrics: tuple[str, ...]  # the first decides
    why: str  # why these metrics test it here


CLAIMS = (
    Claim("captions_help", "adding captions to subtitles helps (OCL vs subtitles only)", "proxy_ocl",
          "proxy_subtitles", ("t2v_r1", "t2v_r5", "top1_color"),
          "captions name colour and shape, which the off-topic subtitles mostly do not"),
    Claim("subtitles_help", "subtitles add to captions (OCL vs captions only)", "proxy_ocl", "proxy_captions",
          ("t2v_r1", "t2v_r5", "top1_direction", "pair_accuracy"),
          "only the subtitles ever name the direction of motion"),
    Claim("proxy_vs_joint", "proxy-guided attention beats full joint attention", "proxy_ocl", "joint_ocl",
          ("t2v_r1", "t2v_r5"), "the same data and losses, another attention over the video tokens"),
    Claim("proxy_vs_meanpool", "proxy-guided attention sees motion that mean pooling cannot (post-pretrained)",
          "proxy_ocl", "meanpool_ocl", ("pair_accuracy", "t2v_r1", "t2v_r5"),
          "mean pooling ignores frame order, so it scores exactly 0.5 on the direction pairs"),
    Claim("proxy_vs_meanpool_finetuned", "the same after fine-tuning on clean descriptions",
          "proxy_ocl_finetuned", "meanpool_ocl_finetuned", ("pair_accuracy", "t2v_r1", "t2v_r5"),
          "the descriptions name the direction in every clip, the strongest signal for it the demo has"),
)

# metric -> (label, scale: per-query outcome to the reported unit, chance)
METRICS = {
    "t2v_r1": ("t2v R@1 (%)", 100.0), "t2v_r5": ("t2v R@5 (%)", 100.0), "dsl_t2v_r1": ("t2v R@1 with DSL (%)", 100.0),
    "top1_color": ("top-1 colour right (%)", 100.0), "top1_shape": ("top-1 shape right (%)", 100.0),
    "top1_direction": ("top-1 direction right (%)", 100.0), "pair_accuracy": ("direction pair accuracy", 1.0),
}


def per_query(features: str | Path, rows: list[dict]) -> dict[str, np.ndarray]:
    """Every metric's per-query outcome from a model's saved test features (``score_model``)."""
    from demo.direction import per_clip_scores
    from model.metrics import dsl_similarity

    f = np.load(features)
    sim = np.asarray(f["text"], dtype=np.float64) @ np.asarray(f["video"], dtype=np.float64).T
    out = {"t2v_r1": rank_credit(sim, 1), "t2v_r5": rank_credit(sim, 5), "dsl_t2v_r1": rank_credit(dsl_similarity(sim), 1),
           "pair_accuracy": per_clip_scores(f["pair_video"], f["pair_text"])}
    for field in ("color", "shape", "direction"):
        out[f"top1_{field}"] = top1_correct(sim, rows, field)
    return out


def compare(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]], metrics: tuple[str, ...],
            rows: list[dict]) -> list[PairedDifference]:
    """A - B on each metric over the seeds both ran (``runs_*``: ``{"seed", "features"}`` per seed)."""
    by_seed_b = {r["seed"]: r for r in runs_b}
    pairs = [(r, by_seed_b[r["seed"]]) for r in runs_a if r["seed"] in by_seed_b]
    seeds = [a["seed"] for a, _ in pairs]
    qa = [per_query(a["features"], rows) for a, _ in pairs]
    qb = [per_query(b["features"], rows) for _, b in pairs]
    return [paired_difference(m, seeds, [q[m] for q in qa], [q[m] for q in qb], scale=METRICS[m][1])
            for m in metrics]


def evaluate_claims(groups: dict[str, list[dict[str, Any]]], rows: list[dict]) -> list[dict[str, Any]]:
    """Every claim whose two groups ran: its comparisons and verdict, JSON-ready."""
    out = []
    for claim in CLAIMS:
        if claim.a not in groups or claim.b not in groups:
            continue
        diffs = compare(groups[claim.a], groups[claim.b], claim.metrics, rows)
        out.append({**dataclasses.asdict(claim), "verdict": diffs[0].verdict,
                    "differences": [dataclasses.asdict(d) for d in diffs]})
    return out


def dsl_effect(runs: list[dict[str, Any]], rows: list[dict]) -> dict[str, Any]:
    """t2v R@1 with DSL minus without, for one model over its seeds (same queries, paired)."""
    q = [per_query(r["features"], rows) for r in runs]
    d = paired_difference("dsl_t2v_r1", [r["seed"] for r in runs], [x["dsl_t2v_r1"] for x in q],
                          [x["t2v_r1"] for x in q])
    return dataclasses.asdict(d)
