"""Writing a dedup result: the exclusion list the trainer reads, the pairs, and a report to choose
the threshold by (the distribution of each clip's highest within-cluster similarity, and how many
clips each threshold drops)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from search.dedup import DedupResult

DROP_FILE, PAIRS_FILE, REPORT_FILE, JSON_FILE, PLOT_FILE = (
    "drop_keys.txt", "pairs.parquet", "report.md", "dedup.json", "similarity.png")


def read_threshold(folder: str | Path) -> float:
    """The threshold a ``clipvip dedup`` folder was written with (its ``dedup.json``), refused in one
    line naming the file when it is missing, unreadable or not such a report."""
    file = Path(folder) / JSON_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{file}: {exc.strerror or exc}; give the output folder of clipvip dedup") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON ({exc}); run clipvip dedup again") from None
    threshold = data.get("threshold") if isinstance(data, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise UserError(f"{file} holds no threshold; give the output folder of clipvip dedup")
    return float(threshold)


def write(result: DedupResult, out: str | Path, source: dict[str, Any]) -> dict[str, Any]:
    """Write the folder ``out`` (replaced whole) and return what ``dedup.json`` holds."""
    import pandas as pd

    from common.files import built_aside
    from shards.keys import write_key_list

    dropped = result.dropped
    keys = result.keys
    pairs = pd.DataFrame({"key": [keys[i] for i in dropped], "kept": [keys[result.nearest[i]] for i in dropped],
                          "similarity": result.max_similarity[dropped].astype(float),
                          "cluster": result.cluster[dropped].astype(int)}).sort_values("similarity", ascending=False)
    compared = result.max_similarity[result.max_similarity > -1]
    summary = {"threshold": result.threshold, "clips": len(keys), "dropped": int(len(dropped)),
               "clusters": result.n_clusters, "drops_by_threshold": result.drop_counts(),
               "similarity_quantiles": {f"p{q}": round(float(np.percentile(compared, q)), 4)
                                        for q in (1, 10, 50, 90, 99, 99.9)} if len(compared) else {},
               **source}
    with built_aside(Path(out)) as tmp:
        write_key_list(str(tmp / DROP_FILE), sorted(keys[i] for i in dropped))
        pairs.to_parquet(tmp / PAIRS_FILE, index=False)
        (tmp / JSON_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        _plot(compared, result.threshold, tmp / PLOT_FILE)
        (tmp / REPORT_FILE).write_text(_markdown(summary, pairs.head(20)))
    return summary


def _plot(sims: np.ndarray, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    if len(sims):
        ax.hist(sims, bins=100, range=(min(0.0, float(sims.min())), 1.0), color="#4472c4")
        ax.set_yscale("log")
    ax.axvline(threshold, color="#c00000", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("highest cosine with an earlier member of the same cluster")
    ax.set_ylabel("clips (log)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(summary: dict[str, Any], top) -> str:
    lines = [
        "# Semantic de-duplication", "",
        f"{summary['clips']} clips in {summary['clusters']} clusters; at threshold {summary['threshold']:g}, "
        f"**{summary['dropped']}** are near-duplicates of a clip that is kept ({DROP_FILE}, one key a line; the "
        f"trainer skips them with `data.exclude_keys`).", "",
        "Each clip's score is its highest cosine with a more typical clip of its own K-means cluster. Real "
        "duplicates (re-encodes, re-uploads, crops) sit in a separate bump near 1; pick the threshold in the gap "
        "below it.", "", f"![similarity distribution]({PLOT_FILE})", "",
        "| threshold | clips dropped |", "|---|---|",
        *[f"| {t} | {n} |" for t, n in summary["drops_by_threshold"].items()], "",
        "Quantiles of the score: " + ", ".join(f"{k} {v}" for k, v in summary["similarity_quantiles"].items()), "",
        "## Most similar dropped pairs", "", "| dropped | kept | cosine |", "|---|---|---|",
        *[f"| {r.key} | {r.kept} | {r.similarity:.4f} |" for r in top.itertuples()], ""]
    return "\n".join(lines)

