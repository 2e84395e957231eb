"""Training metrics out: JSON Lines (the record), TensorBoard (to watch), a loss-curve PNG at the end.

Only rank 0 writes; other ranks get a :class:`NullLogger` with the same interface.
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.files import atomic_write_text
from common.jsonl import read_jsonl, read_objects
from common.jsonio import strict_dumps, strict_json  # noqa: F401 - the run's JSON files use them

logger = logging.getLogger(__name__)


class NullLogger:
    """The stand-in for non-zero ranks and disabled logging."""

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        pass

    def close(self) -> None:
        pass


def _drop_partial_last_line(path: Path) -> None:
    """A run killed mid-write can leave half a row; cut it so the resumed run appends whole rows."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    logger.warning("%s ended in a partial row (the run was killed mid-write); dropped %d bytes", path, len(data) - keep)


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep only the rows of steps <= ``step``: a resumed run replays the steps after its checkpoint."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line, row in read_objects(((line, line) for line in lines), lambda _: str(path))
            if row.get("step", 0) <= step]
    if len(kept) == len(lines):
        return
    atomic_write_text(path, "".join(kept))
    logger.info("%s: dropped %d row(s) after step %d (those steps run again)", path, len(lines) - len(kept), step)


class RunLogger(NullLogger):
    """Appends ``{"step", "kind", ...metrics}`` rows to ``metrics.jsonl`` and mirrors them to TensorBoard.

    ``keep_until``: rows (and TensorBoard events) of later steps are dropped first, so a resumed run
    leaves one row per step; ``-1`` starts both afresh, ``None`` keeps everything.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, keep_until: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        _drop_partial_last_line(self.path)
        if keep_until is not None:
            _drop_rows_after(self.path, keep_until)
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                        purge_step=keep_until + 1 if keep_until is not None else None)
            except ImportError:
                logger.warning("tensorboard is not installed; logging to %s only", self.path)

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        self.file.write(strict_dumps({"step": step, "kind": kind, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path, kind: str = "train") -> list[dict]:
    """Rows of one kind from a ``metrics.jsonl``; a resumed run's repeated steps keep the last row."""
    rows: dict[int, dict] = {}
    for row in read_jsonl(path):
        if row.get("kind") == kind:
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


Series = dict[str, tuple[list[int], list[float]]]  # label -> (steps, values)


def plot_loss_panels(panels: list[tuple[str, Series]], out_png: Path, ylabel: str = "loss", columns: int = 0) -> Path:
    """Loss against step, one panel per (title, series), saved as one PNG. Every loss picture the
    project draws goes through here: a training run's ``loss_curve.png`` and the demo report's
    ``loss_curves.png``.

    ``columns``: panels per row (0: all in one row). Within a panel each series gets its own line
    style and marker, so curves that coincide stay visible under one another.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns or len(panels)
    rows = -(-len(panels) // cols)
    width = 7 if cols == 1 else 5 * cols
    fig, axes = plt.subplots(rows, cols, figsize=(width, 4 * rows), squeeze=False)
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v", "x")
    for ax, (title, series) in zip(axes.flat, panels):
        for i, (label, (steps, values)) in enumerate(series.items()):
            ax.plot(steps, values, label=label, linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                    markersize=3, markevery=max(1, len(steps) // 12), alpha=0.85)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if series:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_losses(metrics_path: Path, out_png: Path) -> Path:
    """Every ``*loss`` series of a run's train rows against step, one PNG."""
    rows = read_metrics(metrics_path)
    keys = sorted({k for r in rows for k in r if k.endswith("loss")})
    series = {k: ([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r]) for k in keys}
    return plot_loss_panels([(Path(metrics_path).parent.name, series)], out_png, ylabel="loss (summed CE terms)")
