"""Training checkpoints: written atomically, holding everything needed for a bit-identical resume.

A checkpoint is a folder ``<run_dir>/checkpoints/step_<step>/`` with ``state.pt`` (model, optimizer,
scheduler, step, per-rank loader states and RNG states) and the model alone as safetensors
(``model/``, loadable with :func:`model.convert.load_checkpoint`). It is written into a temporary
sibling and renamed into place, then ``latest`` (a one-line file) is replaced atomically, so a job
killed mid-write leaves the previous checkpoint intact and ``latest`` never points at a partial one.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(ckpt_dir: Path, step: int, state: dict[str, Any], model_for_export=None, keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    if model_for_export is not None:
        from model.convert import save_checkpoint

        save_checkpoint(model_for_export, tmp / "model")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(ckpt_dir / "latest", final.name + "\n")
    old = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    pointer = ckpt_dir / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() else None


def load(path: Path) -> dict[str, Any]:
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
