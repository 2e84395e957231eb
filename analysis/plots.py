"""Pictures of the domain-gap report: the NMI matrix as a heatmap and a 2-D projection by corpus.

Both draw with matplotlib's Agg backend (no display needed) and take plain arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def nmi_heatmap(matrix: np.ndarray, names: tuple[str, ...] | list[str], path: str | Path,
                std: np.ndarray | None = None, title: str = "NMI domain gap (k=2 per pair)") -> Path:
    """Write a heatmap of the symmetric NMI matrix; cells show mean (and +-std over seeds)."""
    plt = _pyplot()
    c = len(names)
    size = 1.2 + 0.75 * c
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    shown = np.ma.masked_invalid(matrix)
    im = ax.imshow(shown, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(c), labels=list(names), rotation=45, ha="right")
    ax.set_yticks(range(c), labels=list(names))
    for i in range(c):
        for j in range(c):
            if np.isnan(matrix[i, j]):
                ax.text(j, i, "-", ha="center", va="center", color="0.5")
                continue
            label = f"{matrix[i, j]:.2f}"
            if std is not None and c <= 8:
                label += f"\n+-{std[i, j]:.2f}"
            ax.text(j, i, label, ha="center", va="center", fontsize=8,
                    color="black" if matrix[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="NMI")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def projection_scatter(coords: np.ndarray, corpus: np.ndarray, names: tuple[str, ...] | list[str],
                       path: str | Path, title: str = "Sampled sentence embeddings, PCA") -> Path:
    """Write a scatter of (M, 2) points coloured by corpus index."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        pts = coords[corpus == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.5, color=cmap(i % cmap.N), label=f"{name} ({len(pts)})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
