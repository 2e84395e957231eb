"""Turn an :class:`~analysis.report.NMIReport` into files: JSON, Markdown and two pictures.

The files appear all at once or not at all: they are written into a temporary folder beside the
output folder, which is moved into place only when every file is complete. A failed run leaves no
folder behind, and a rerun into the folder of an earlier report replaces that report whole, never
leaving new files beside old ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np

from analysis.plots import nmi_heatmap, projection_scatter
from analysis.report import NMIReport, PairGap
from common.errors import UserError
from common.files import replace_dir, temp_dir_beside

TIMING_ORDER = ("read", "load_encoder", "encode", "cluster", "score", "bootstrap", "project", "total")
FILES = {"json": "report.json", "markdown": "report.md", "heatmap": "nmi_matrix.png", "projection": "projection.png"}
# Files a report folder may hold besides FILES (the CLI writes its resolved config there).
EXTRA_FILES = ("config.json",)
ROLE_MARK = {"pretrain": "P", "downstream": "D", "other": ""}


class OutputError(UserError):
    """The output folder cannot take the report; the message names the folder and the fix."""


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
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _pair_dict(p: PairGap) -> dict:
    return {"a": p.a, "b": p.b, "nmi": dataclasses.asdict(p.nmi),
            "ci": dataclasses.asdict(p.ci) if p.ci else None, "unstable": p.unstable,
            "cluster_by_corpus_first_seed": p.counts}


def report_dict(report: NMIReport) -> dict:
    """Every number, setting and version of the report as JSON-ready data."""
    proj = report.projection
    return _clean({
        "corpora": list(report.corpora),
        "roles": report.roles,
        "encoder": report.encoder,
        "settings": report.settings,
        "versions": report.versions,
        "timings_s": report.timings,
        "focus_pairs": [
            {"a": a, "b": b, **dataclasses.asdict(report.pair(a, b).nmi),
             "ci": dataclasses.asdict(report.pair(a, b).ci) if report.pair(a, b).ci else None,
             "unstable": report.pair(a, b).unstable} for a, b in report.focus
        ],
        "pairs": [_pair_dict(p) for p in report.pairs],
        "unstable_pairs": [[p.a, p.b] for p in report.unstable],
        "matrix": {"names": list(report.names), "mean": report.matrix, "std": report.matrix_std},
        "all_corpora": {"k": report.joint.k, "nmi": dataclasses.asdict(report.joint.nmi),
                        "ci": dataclasses.asdict(report.joint.ci) if report.joint.ci else None,
                        "cluster_by_corpus_first_seed": report.joint.counts},
        "projection": {"seed": proj.seed, "explained_variance": list(proj.explained),
                       "points_per_corpus": report.settings.get("project_points")},
    })


def _num(v: float, digits: int = 3) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _mean_sd(p_nmi, n_seeds: int) -> str:
    return _num(p_nmi.mean) if n_seeds < 2 else f"{_num(p_nmi.mean)} ± {_num(p_nmi.std)}"


def _ci(ci) -> str:
    return "-" if ci is None else f"{ci.low:.3f}–{ci.high:.3f}"


def _label(report: NMIReport, name: str) -> str:
    mark = ROLE_MARK.get(report.roles.get(name, "other"), "")
    return f"{name} ({mark})" if mark else name


def _encoder_phrase(report: NMIReport) -> str:
    e = report.encoder
    parts = [f"**{e.get('name') or report.settings.get('encoder')}**"]
    if e.get("dtype"):
        parts.append(f"in {e['dtype']}")
    if e.get("device"):
        parts.append(f"on {e['device']}")
    text = " ".join(parts)
    if e.get("max_length"):
        text += f", texts truncated to {e['max_length']} tokens"
    return text


def _how_to_read(report: NMIReport) -> list[str]:
    s = report.settings
    seeds = s["seeds"]
    n_seeds = len(seeds)
    level = int(round(100 * s.get("ci_level", 0.95)))
    key = "unique" if s.get("dedupe") else "non_empty"
    whole = [c["name"] for c in report.corpora if c.get(key) == s["n"]]
    if n_seeds > 1 and len(whole) == len(report.corpora):
        seed_text = (f"{n_seeds} seeds ({', '.join(str(x) for x in seeds)}), each drawing the same sentences: n is "
                     "every corpus's whole size, so the seeds differ only in K-means' starts")
    elif n_seeds > 1:
        seed_text = f"{n_seeds} seeds ({', '.join(str(x) for x in seeds)}), each drawing new sentences"
        if whole:
            seed_text += f" (all of {', '.join(whole)} every time: n is its whole size)"
    else:
        seed_text = f"one seed ({seeds[0]}); --seeds 0 1 2 shows how much the numbers move between samples"
    first = (
        f"**How to read this.** Each pair of corpora is pooled, n = {s['n']} sentences from each, and split by "
        "K-means into k = 2 clusters without the corpus labels; the number is the normalised mutual information "
        "(NMI) between cluster and corpus. Near 0: the split ignores the source, so the encoder sees one language "
        "domain. Near 1: the clusters are the corpora, a large domain gap. "
        f"Encoder: {_encoder_phrase(report)}. K-means: {s['kmeans_backend']}, best of {s['kmeans_restarts']} "
        f"{s.get('kmeans_init', 'random')} starts. Sampling: {seed_text}."
    )
    second = []
    if n_seeds > 1:
        second.append("± is the sample standard deviation over seeds.")
    if s.get("bootstrap_resamples"):
        second.append(
            f"The {level}% CI is a bootstrap over sentences ({s['bootstrap_resamples']} resamples, clusters held "
            "fixed): it covers which sentences were drawn, not K-means finding another split"
            + (f"; that shows in the seed spread, and ⚠ marks pairs whose seeds span more than "
               f"{s['unstable_range']:.2f}." if n_seeds > 1 else "."))
    elif n_seeds > 1:
        second.append(f"⚠ marks pairs whose seeds span more than {s['unstable_range']:.2f}.")
    if set(report.roles.values()) - {"other"}:
        second.append("(P) marks a pretraining corpus, (D) a downstream one.")
    return [first, "", " ".join(second), ""] if second else [first, ""]


def _pair_rows(report: NMIReport, pairs: list[PairGap], n_seeds: int) -> list[str]:
    rows = []
    for p in pairs:
        flag = "⚠ unstable" if p.unstable else ""
        values = ", ".join(f"{v:.3f}" for v in p.nmi.values)
        rows.append(f"| {_label(report, p.a)} | {_label(report, p.b)} | {_mean_sd(p.nmi, n_seeds)} | {_ci(p.ci)} | "
                    f"{p.nmi.min:.3f} | {p.nmi.max:.3f} | {values} | {flag} |")
    return rows


def _pair_table(report: NMIReport, pairs: list[PairGap], left: str, right: str) -> list[str]:
    n_seeds = len(report.settings["seeds"])
    level = int(round(100 * report.settings.get("ci_level", 0.95)))
    nmi_head = "NMI mean ± sd" if n_seeds > 1 else "NMI"
    return [f"| {left} | {right} | {nmi_head} | {level}% CI | min | max | per seed | |",
            "|---|---|---|---|---|---|---|---|", *_pair_rows(report, pairs, n_seeds)]


def _triangle(report: NMIReport) -> list[str]:
    """The matrix's lower triangle: mean NMI, columns numbered so lines stay short."""
    names = report.names
    c = len(names)
    head = "| | " + " | ".join(str(j + 1) for j in range(c - 1)) + " |"
    lines = [head, "|---" + "|---:" * (c - 1) + "|"]
    for i in range(1, c):
        cells = []
        for j in range(c - 1):
            if j >= i:
                cells.append("")
                continue
            p = report.pair(names[i], names[j])
            cells.append(f"{p.nmi.mean:.2f}" + (" ⚠" if p.unstable else ""))
        lines.append(f"| {i + 1} {_label(report, names[i])} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: NMIReport) -> str:
    """A human summary: how to read it, focus pairs, unstable pairs, the matrix, the joint view, the corpora."""
    s = report.settings
    n_seeds = len(s["seeds"])
    roles = set(report.roles.values()) - {"other"}
    left, right = ("pretraining", "downstream") if roles else ("corpus A", "corpus B")
    lines = ["# NMI domain-gap report", "", *_how_to_read(report),
             f"![NMI matrix: mean over seeds for every pair]({FILES['heatmap']})", ""]

    focus = [report.pair(a, b) for a, b in report.focus]
    title = "Pretraining vs downstream" if roles else "Pairs"
    lines += [f"## {title} (k=2)", "", *_pair_table(report, focus, left, right), ""]

    if n_seeds > 1:
        lines += ["## Unstable pairs", ""]
        if report.unstable:
            lines += [f"{len(report.unstable)} pair(s) whose seeds span more than {s['unstable_range']:.2f}. "
                      "Their mean is not a stable summary: K-means found different splits in different samples "
                      "(look at the per-seed values; a bimodal pair has seeds near two different values), so quote "
                      "the per-seed values or rerun with more seeds.", ""]
            lines += [f"- {_label(report, p.a)} / {_label(report, p.b)}: "
                      + ", ".join(f"{v:.3f}" for v in p.nmi.values)
                      + f" (range {p.nmi.range:.3f})" for p in report.unstable]
        else:
            lines += [f"None: every pair's seeds agree to within {s['unstable_range']:.2f}."]
        lines += [""]

    names = report.names
    lines += ["## Every pair (k=2)", "",
              "Mean NMI over seeds, lower triangle; column j is the corpus in row j. "
              f"Lowest {np.nanmin(report.matrix):.3f}, highest {np.nanmax(report.matrix):.3f}.", "",
              *_triangle(report), ""]
    rest = [p for p in report.pairs if (p.a, p.b) not in report.focus and (p.b, p.a) not in report.focus]
    if rest:
        lines += ["Pairs not in the table above:", "", *_pair_table(report, rest, "corpus A", "corpus B"), ""]

    j = report.joint
    level = int(round(100 * s.get("ci_level", 0.95)))
    ci = f", {level}% CI {_ci(j.ci)}" if j.ci else ""
    lines += [f"## All corpora together (k={j.k})", "",
              f"NMI {_mean_sd(j.nmi, n_seeds)}{ci} (min {j.nmi.min:.3f}, max {j.nmi.max:.3f}).", "",
              "Cluster-by-corpus counts (first seed):", "",
              "| cluster | " + " | ".join(_label(report, n) for n in names) + " |",
              "|---" + "|---:" * len(names) + "|"]
    for c, row in enumerate(j.counts):
        lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in row) + " |")

    proj = report.projection
    lines += ["", "## Projection", "",
              f"![PCA of sampled sentence embeddings]({FILES['projection']})", "",
              f"{s.get('project_points')} sentences per corpus, drawn uniformly from seed {proj.seed}'s sample "
              f"(this seed only) and plotted in random order. The two axes hold {100 * proj.explained[0]:.1f}% and "
              f"{100 * proj.explained[1]:.1f}% of the variance: corpora that overlap here may still be apart in the "
              "full embedding, where the NMI is computed.", ""]

    lines += ["## Corpora", "", "| corpus | role | source | records | empty | duplicates | unique |",
              "|---|---|---|---:|---:|---:|---:|"]
    for c in report.corpora:
        lines.append(f"| {c['name']} | {report.roles[c['name']]} | `{c['source']}` | {c['records']} | {c['empty']} | "
                     f"{c['duplicates']} | {c['unique']} |")
    note = "sampled from unique texts" if s["dedupe"] else "kept in the sampling population"
    lines += ["", f"Empty texts are never sampled; duplicates are {note}. Every number is also in "
              f"`{FILES['json']}`.", "",
              "Time (s): " + ", ".join(f"{k} {report.timings[k]:.1f}" for k in TIMING_ORDER if k in report.timings),
              ""]
    return "\n".join(lines)


def check_output_dir(out_dir: str | Path) -> Path:
    """The folder a report may be written to: new, empty, or holding an earlier report (then replaced).

    Raises:
        OutputError: the path is a file, or a folder holding files a report did not write (a typo in
            ``--out`` must not delete someone's data).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; name a folder for the report "
                          "(it is created, or an earlier report in it replaced)")
    if out.is_dir():
        ours = set(FILES.values()) | set(EXTRA_FILES)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise OutputError(f"--out {out} holds files that are not an NMI report ({shown}); name a new or empty "
                              "folder, or the folder of an earlier report to replace it")
    return out


def write_report(report: NMIReport, out_dir: str | Path, *, extra: dict[str, str] | None = None) -> dict[str, Path]:
    """Write report.json, report.md, nmi_matrix.png and projection.png (and ``extra`` name -> text files,
    e.g. the CLI's config.json) into ``out_dir``, all at once; returns the paths of FILES."""
    out = check_output_dir(out_dir)
    extra = extra or {}
    unknown = sorted(set(extra) - set(EXTRA_FILES))
    if unknown:
        raise ValueError(f"extra report files {unknown}; only {list(EXTRA_FILES)} may sit beside a report")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        paths = {key: tmp / name for key, name in FILES.items()}
        paths["json"].write_text(json.dumps(report_dict(report), indent=2) + "\n")
        paths["markdown"].write_text(markdown(report))
        for name, text in extra.items():
            (tmp / name).write_text(text)
        n_seeds = len(report.settings["seeds"])
        unstable = np.zeros(report.matrix.shape, dtype=bool)
        for p in report.unstable:
            i, j = report.names.index(p.a), report.names.index(p.b)
            unstable[i, j] = unstable[j, i] = True
        nmi_heatmap(report.matrix, report.names, paths["heatmap"],
                    std=report.matrix_std if n_seeds > 1 else None, roles=report.roles, unstable=unstable,
                    n_seeds=n_seeds, unstable_range=report.settings.get("unstable_range"),
                    subtitle=_heatmap_subtitle(report))
        proj = report.projection
        projection_scatter(proj.coords, proj.corpus, report.names, paths["projection"], roles=report.roles,
                           explained=proj.explained, seed=proj.seed, encoder=report.encoder.get("name"))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {key: out / name for key, name in FILES.items()}


def _heatmap_subtitle(report: NMIReport) -> str:
    s, e = report.settings, report.encoder
    enc = f"{e.get('name') or s.get('encoder')}" + (f", {e['dtype']}" if e.get("dtype") else "")
    seeds = len(s["seeds"])
    return f"n={s['n']} per corpus, {seeds} seed{'s' if seeds > 1 else ''}; {enc}"
