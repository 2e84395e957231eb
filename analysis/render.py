"""Turn an :class:`~analysis.report.NMIReport` into files: JSON, Markdown and two pictures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from analysis.plots import nmi_heatmap, projection_scatter
from analysis.report import NMIReport

TIMING_ORDER = ("read", "load_encoder", "encode", "cluster", "score", "total")
FILES = {"json": "report.json", "markdown": "report.md", "heatmap": "nmi_matrix.png", "projection": "projection.png"}


def _clean(value):
    """numpy and NaN -> plain JSON (NaN becomes null)."""
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def report_dict(report: NMIReport) -> dict:
    """Every number, setting and version of the report as JSON-ready data."""
    return _clean({
        "corpora": list(report.corpora),
        "roles": report.roles,
        "settings": report.settings,
        "versions": report.versions,
        "timings_s": report.timings,
        "focus_pairs": [
            {"a": a, "b": b, **dataclasses.asdict(report.pair(a, b).nmi)} for a, b in report.focus
        ],
        "pairs": [
            {"a": p.a, "b": p.b, "nmi": dataclasses.asdict(p.nmi), "cluster_by_corpus_first_seed": p.counts}
            for p in report.pairs
        ],
        "matrix": {"names": list(report.names), "mean": report.matrix, "std": report.matrix_std},
        "all_corpora": {"k": report.joint.k, "nmi": dataclasses.asdict(report.joint.nmi),
                        "cluster_by_corpus_first_seed": report.joint.counts},
    })


def _fmt(mean: float, std: float, n_seeds: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if n_seeds < 2 else f"{mean:.3f} +- {std:.3f}"


def markdown(report: NMIReport) -> str:
    """A human summary: focus pairs, the full matrix, the joint view and the corpus counts."""
    s = report.settings
    seeds = ", ".join(str(x) for x in s["seeds"])
    n_seeds = len(s["seeds"])
    spread_note = ("Values are mean +- std over seeds (each seed draws new samples)." if n_seeds > 1 else
                   "One seed: no spread; pass --seeds 0 1 2 for mean +- std over new samples.")
    lines = [
        "# NMI domain-gap report", "",
        f"Encoder `{s['encoder']}`, {s['n']} texts per corpus, seeds {seeds}, K-means ({s['kmeans_backend']}, "
        f"{s['kmeans_restarts']} restarts). NMI near 1: the corpora are easy to tell apart (a large domain gap); "
        f"near 0: same domain. {spread_note}", "",
    ]
    roles = set(report.roles.values()) - {"other"}
    left, right = ("pretraining", "downstream") if roles else ("corpus A", "corpus B")
    lines += ["## Pairs", "", f"| {left} | {right} | NMI | min | max |", "|---|---|---|---|---|"]
    for a, b in report.focus:
        nmi = report.pair(a, b).nmi
        lines.append(f"| {a} | {b} | {_fmt(nmi.mean, nmi.std, n_seeds)} | {nmi.min:.3f} | {nmi.max:.3f} |")
    names = report.names
    lines += ["", "## Full matrix (k=2 per pair)", "", "| | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for i, a in enumerate(names):
        cells = [_fmt(report.matrix[i, j], report.matrix_std[i, j], n_seeds) for j in range(len(names))]
        lines.append(f"| **{a}** | " + " | ".join(cells) + " |")
    j = report.joint
    lines += ["", f"## All corpora together (k={j.k})", "", f"NMI {_fmt(j.nmi.mean, j.nmi.std, n_seeds)}.", "",
              "Cluster-by-corpus counts (first seed):", "",
              "| cluster | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c, row in enumerate(j.counts):
        lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in row) + " |")
    lines += ["", "## Corpora", "", "| corpus | role | source | records | empty | duplicates | unique |",
              "|---|---|---|---|---|---|---|"]
    for c in report.corpora:
        lines.append(f"| {c['name']} | {report.roles[c['name']]} | `{c['source']}` | {c['records']} | {c['empty']} | "
                     f"{c['duplicates']} | {c['unique']} |")
    note = "sampled from unique texts" if s["dedupe"] else "kept in the sampling population"
    lines += ["", f"Empty texts are never sampled; duplicates are {note}.", "",
              "Time (s): " + ", ".join(f"{k} {report.timings[k]:.1f}" for k in TIMING_ORDER if k in report.timings),
              ""]
    return "\n".join(lines)


def write_report(report: NMIReport, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, nmi_matrix.png and projection.png; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in FILES.items()}
    paths["json"].write_text(json.dumps(report_dict(report), indent=2) + "\n")
    paths["markdown"].write_text(markdown(report))
    multi = len(report.settings["seeds"]) > 1
    nmi_heatmap(report.matrix, report.names, paths["heatmap"], std=report.matrix_std if multi else None)
    projection_scatter(report.projection, report.projection_corpus, report.names, paths["projection"])
    return paths
