"""Training metrics out: JSON Lines (the record), TensorBoard (to watch), a loss-curve PNG at the end.

Only rank 0 writes; other ranks get a :class:`NullLogger` with the same interface.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

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


class RunLogger(NullLogger):
    """Appends ``{"step", "kind", ...metrics}`` rows to ``metrics.jsonl`` and mirrors them to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        _drop_partial_last_line(self.path)
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed; logging to %s only", self.path)

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        self.file.write(json.dumps({"step": step, "kind": kind, **metrics}) + "\n")
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
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == kind:
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def plot_losses(metrics_path: Path, out_png: Path) -> Path:
    """Every ``*loss`` series of the train rows against step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = sorted({k for r in rows for k in r if k.endswith("loss")})
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (summed CE terms)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
