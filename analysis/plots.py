"""Pictures of the domain-gap report: the NMI matrix as a heatmap and a 2-D projection by corpus.

Both draw with matplotlib's Agg backend (no display needed) and take plain arrays.
"""

from __future__ import annotations

import textwrap

from pathlib import Path

import numpy as np

# Twelve colours chosen to stay apart from each other on white, also at small marker sizes (after
# Sasha Trubetskoy's list of distinct colours, light tints left out). Reports with more corpora
# cycle through them, and the marker shape still tells the role.
PALETTE = ("#e6194b", "#4363d8", "#3cb44b", "#f58231", "#911eb4", "#42d4f4",
           "#f032e6", "#9a6324", "#808000", "#000075", "#469990", "#800000")
ROLE_MARKER = {"pretrain": "o", "downstream": "^", "other": "s"}
ROLE_NAME = {"pretrain": "pretraining", "downstream": "downstream", "other": "no role"}
ROLE_COLOUR = {"pretrain": "#b35806", "downstream": "#2d5aa0", "other": "0.2"}
UNSTABLE = "#d62728"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _role_label(name: str, roles: dict[str, str] | None) -> str:
    role = (roles or {}).get(name, "other")
    return {"pretrain": f"{name} (P)", "downstream": f"{name} (D)"}.get(role, name)


def nmi_heatmap(matrix: np.ndarray, names: tuple[str, ...] | list[str], path: str | Path,
                std: np.ndarray | None = None, *, roles: dict[str, str] | None = None,
                unstable: np.ndarray | None = None, n_seeds: int = 1, unstable_range: float | None = None,
                title: str = "NMI domain gap (k=2 per pair)", subtitle: str = "") -> Path:
    """Write the lower triangle of the symmetric NMI matrix as a heatmap.

    Cells show the mean and, given ``std``, ``± sd`` below it, at any number of corpora (the font
    shrinks instead). Cells of ``unstable`` pairs get a red frame and a "!" so a reader does not take
    their mean at face value. Tick labels carry the role, (P) pretraining or (D) downstream, in the
    role's colour.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    c = len(names)
    cell = 0.95 if std is not None else 0.75
    size = 2.0 + cell * c
    fig, ax = plt.subplots(figsize=(size + 1.6, size + 0.6))
    lower = np.tril(np.ones((c, c), dtype=bool), k=-1)
    shown = np.ma.masked_where(~lower | np.isnan(matrix), matrix)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(shown, vmin=0.0, vmax=1.0, cmap=cmap)
    labels = [_role_label(n, roles) for n in names]
    ax.set_xticks(range(c), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(c), labels=labels)
    for tick_set in (ax.get_xticklabels(), ax.get_yticklabels()):
        for tick, name in zip(tick_set, names):
            tick.set_color(ROLE_COLOUR.get((roles or {}).get(name, "other"), "0.2"))
    # The upper triangle only repeats the lower one; the last column and first row hold no pair.
    ax.set_xlim(-0.5, c - 1.5)
    ax.set_ylim(c - 0.5, 0.5)
    font = 9 if c <= 16 else 7  # the figure grows with the corpora, so cells keep their size
    for i in range(c):
        for j in range(i):
            if np.isnan(matrix[i, j]):
                continue
            label = f"{matrix[i, j]:.2f}"
            if std is not None and not np.isnan(std[i, j]):
                label += f"\n±{std[i, j]:.2f}"
            flagged = unstable is not None and unstable[i, j]
            if flagged:
                label += " !"
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor=UNSTABLE,
                                       linewidth=2.5))
            ax.text(j, i, label, ha="center", va="center", fontsize=font, linespacing=1.1,
                    color="black" if matrix[i, j] > 0.6 else "white", fontweight="bold" if flagged else None)
    _role_separators(ax, names, roles)
    ax.set_frame_on(False)
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="NMI (0: same domain, 1: fully separated)")
    # Wrapped to the figure's width: a small matrix makes a narrow figure that would cut a long line.
    chars = max(24, int((size + 1.6) * 10))
    wrap = textwrap.TextWrapper(chars, break_on_hyphens=False).wrap
    ax.set_title("\n".join(wrap(title) + (wrap(subtitle) if subtitle else [])),
                 fontsize=11)
    notes = []
    if std is not None:
        notes.append(f"mean ± sample sd over {n_seeds} seeds")
    else:
        notes.append("one seed: no spread")
    if unstable is not None and unstable.any() and unstable_range is not None:
        notes.append(f"red frame, !: seeds span more than {unstable_range:.2f}")
    if roles and set(roles.values()) - {"other"}:
        notes.append("(P) pretraining, (D) downstream")
    fig.text(0.01, 0.01, "; ".join(notes), fontsize=8, color="0.25", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _role_separators(ax, names, roles: dict[str, str] | None) -> None:
    """Thin white lines between the blocks of pretraining, downstream and unlabelled corpora."""
    if not roles:
        return
    kinds = [roles.get(n, "other") for n in names]
    for i in range(1, len(kinds)):
        if kinds[i] != kinds[i - 1]:
            ax.axhline(i - 0.5, color="white", linewidth=3)
            ax.axvline(i - 0.5, color="white", linewidth=3)


def projection_scatter(coords: np.ndarray, corpus: np.ndarray, names: tuple[str, ...] | list[str],
                       path: str | Path, *, roles: dict[str, str] | None = None,
                       explained: tuple[float, float] | None = None, seed: int | None = None,
                       encoder: str | None = None, title: str = "Sentence embeddings, PCA",
                       order_seed: int = 0) -> Path:
    """Write a scatter of (M, 2) points coloured by corpus, shaped by role, drawn in a random order.

    One draw call in a shuffled order means no corpus is painted over another just because it came
    later in the list. The legend sits outside the axes, so it hides no points.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.markers import MarkerStyle

    corpus = np.asarray(corpus)
    order = np.random.default_rng(order_seed).permutation(len(coords))
    kinds = [(roles or {}).get(n, "other") for n in names]
    colours = np.array([PALETTE[i % len(PALETTE)] for i in range(len(names))])
    paths = {}
    for kind in set(kinds):
        marker = MarkerStyle(ROLE_MARKER[kind])
        paths[kind] = marker.get_path().transformed(marker.get_transform())

    fig, ax = plt.subplots(figsize=(9.5, 6.5))
    sc = ax.scatter(coords[order, 0], coords[order, 1], s=20, c=colours[corpus[order]], alpha=0.6,
                    linewidths=0)
    sc.set_paths([paths[kinds[i]] for i in corpus[order]])
    xl, yl = "PC 1", "PC 2"
    if explained is not None:
        xl += f" ({100 * explained[0]:.1f}% of variance)"
        yl += f" ({100 * explained[1]:.1f}% of variance)"
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.grid(alpha=0.2)
    per = np.bincount(corpus, minlength=len(names))
    handles = [Line2D([], [], linestyle="", marker=ROLE_MARKER[kinds[i]], markersize=8, color=colours[i],
                      label=f"{name} ({per[i]})") for i, name in enumerate(names)]
    shown_roles = [k for k in ("pretrain", "downstream", "other") if k in kinds]
    if len(shown_roles) > 1 or shown_roles != ["other"]:
        handles.append(Line2D([], [], linestyle="", label=""))
        handles += [Line2D([], [], linestyle="", marker=ROLE_MARKER[k], markersize=8, color="0.35",
                           markerfacecolor="none", label=ROLE_NAME[k]) for k in shown_roles]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False,
              title="corpus (points)", title_fontsize=9, alignment="left")
    lines = [title + (f", encoder {encoder}" if encoder else "")]
    lines.append((f"seed {seed}'s sample only: " if seed is not None else "")
                 + "texts drawn uniformly from each corpus, plotted in random order")
    ax.set_title("\n".join(lines), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
