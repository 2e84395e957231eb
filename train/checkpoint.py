"""Training checkpoints: written atomically, holding everything needed for a bit-identical resume.

A checkpoint is a folder ``<run_dir>/checkpoints/step_<step>/`` with the training state in two
files - ``state.safetensors`` (every tensor: model, optimizer moments, RNG states) and
``state.json`` (everything else: step, scheduler, per-rank loader positions, Python and NumPy RNG
states, best score, config) - and the model alone as safetensors (``model/``, loadable with
:func:`model.convert.load_checkpoint`). Neither state file can carry code: resuming reads JSON and
raw tensors, never a pickle, so a crafted checkpoint cannot run anything (``torch.load`` of the
``state.pt`` that older versions wrote could, so such a folder is refused, not loaded).

The folder is written into a temporary sibling and renamed into place, then ``latest`` (a one-line
file) is replaced atomically, so a job killed mid-write leaves the previous checkpoint intact and
``latest`` never points at a partial one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.dicts import differences, flatten
from common.errors import UserError
from common.files import atomic_write_text, replace_dir, temp_dir_beside, write_safetensors

logger = logging.getLogger(__name__)

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
LEGACY_PICKLE = "state.pt"
FORMAT = "clipvip-train-state"
VERSION = 1

# JSON has no tuples, no non-string keys, no tensors and no inf/nan: such values are written as
# one-key objects tagged with these names, and only these are turned back into Python values.
_TENSOR, _TUPLE, _DICT, _FLOAT, _NDARRAY = "__tensor__", "__tuple__", "__dict__", "__float__", "__ndarray__"
_TAGS = {_TENSOR, _TUPLE, _DICT, _FLOAT, _NDARRAY}


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from as asked; the message names it and the way out."""


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


# ---- state <-> (JSON, tensors) ----------------------------------------------------------------


def _encode(obj: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON-ready data; its tensors go into ``tensors`` under their path in the state."""
    if isinstance(obj, torch.Tensor):
        tensors[where] = obj.detach().cpu().contiguous()
        return {_TENSOR: where}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {_FLOAT: repr(obj)}  # 'inf', '-inf' or 'nan'
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: {"dtype": str(obj.dtype), "data": obj.tolist()}}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), where, tensors)
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not _TAGS & set(obj):
            return {k: _encode(v, f"{where}/{k}", tensors) for k, v in obj.items()}
        # Optimizer state is keyed by parameter index (int keys); keep the key types exactly.
        return {_DICT: [[_encode(k, f"{where}/key{i}", tensors), _encode(v, f"{where}/{k}", tensors)]
                        for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"training state at {where!r}: a {type(obj).__name__} has no pickle-free form; "
                    f"store it as numbers, strings, lists, dicts or tensors")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)) in _TAGS:
        tag, value = next(iter(obj.items()))
        if tag == _TENSOR:
            if value not in tensors:
                raise CheckpointError(f"{STATE_JSON} refers to tensor {value!r}, which {STATE_TENSORS} lacks")
            return tensors[value]
        if tag == _TUPLE:
            return tuple(_decode(v, tensors) for v in value)
        if tag == _DICT:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
        if tag == _FLOAT:
            return float(value)
        return np.asarray(value["data"], dtype=np.dtype(value["dtype"]))
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _owning(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights, views): copy all but the first."""
    seen: set[tuple[str, int]] = set()
    out = {}
    for name, t in tensors.items():
        ptr = (str(t.device), t.untyped_storage().data_ptr())
        out[name] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as ``state.json`` + ``state.safetensors`` in ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    doc = {"format": FORMAT, "version": VERSION, "state": _encode(state, "", tensors)}
    write_safetensors(_owning(tensors), folder / STATE_TENSORS)
    (folder / STATE_JSON).write_text(json.dumps(doc, allow_nan=False) + "\n")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_state(folder: Path) -> dict[str, Any]:
    """The state written by :func:`write_state`: JSON and raw tensors only, nothing executable."""
    from safetensors.torch import load_file

    if not (folder / STATE_JSON).is_file():
        if (folder / LEGACY_PICKLE).exists():
            raise CheckpointError(
                f"checkpoint {folder} holds only {LEGACY_PICKLE}, a pickle (the format of older versions), and "
                f"loading a pickle can run arbitrary code, so it is not loaded; start in a new run_dir (a run_dir "
                f"that holds a checkpoint is resumed) or move {folder.parent} away")
        raise CheckpointError(f"checkpoint {folder} has no {STATE_JSON}; it is not a training checkpoint")
    try:
        doc = json.loads((folder / STATE_JSON).read_text(), parse_constant=_refuse_constant)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if doc.get("version") != VERSION:
            raise ValueError(f"format version {doc.get('version')!r}; this code reads version {VERSION}")
        tensors = load_file(str(folder / STATE_TENSORS), device="cpu")
        return _decode(doc["state"], tensors)
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged or foreign file: say which, never a bare traceback
        raise CheckpointError(f"checkpoint {folder} cannot be read ({type(exc).__name__}: {exc}); resume from an "
                              f"older checkpoint by pointing {folder.parent / 'latest'} at it") from exc


# ---- checkpoint folders -----------------------------------------------------------------------


def folder(ckpt_dir: Path, step: int) -> Path:
    """The folder of checkpoint ``step``."""
    return ckpt_dir / f"step_{step:08d}"


def save(ckpt_dir: Path, step: int, state: dict[str, Any], model_for_export=None, keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = folder(ckpt_dir, step)
    tmp = temp_dir_beside(final)
    write_state(tmp, state)
    if model_for_export is not None:
        from model.convert import save_checkpoint

        save_checkpoint(model_for_export, tmp / "model")
    replace_dir(tmp, final)
    atomic_write_text(ckpt_dir / "latest", final.name + "\n")
    old = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def latest(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint folder, or None.

    A folder of the old pickle format is returned too, so that :func:`load` refuses it by name
    rather than the run silently starting afresh over it.
    """
    pointer = ckpt_dir / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / STATE_JSON).is_file() or (path / LEGACY_PICKLE).is_file() else None


def load(path: Path) -> dict[str, Any]:
    """The training state of checkpoint folder ``path`` (see :func:`read_state`)."""
    return read_state(path)


# Settings a resumed run may change without changing the numbers it computes: where and how often
# it reports, evaluates and saves. Any other difference breaks bit-identical resumption.
RESUME_SAFE_KEYS = ("run_dir", "resume", "resume_changed", "eval", "checkpoint_every", "keep_checkpoints",
                    "log_every", "tensorboard")


# Settings added after checkpoints were first written, with the value that reproduces what a run
# written before them did: such a checkpoint resumes exactly with that value and names it otherwise.
SETTINGS_ADDED = {"gather_grad": "sum", "model.clip_config": "", "data.exclude_keys": ""}


def changed_settings(saved: dict[str, Any], now: dict[str, Any], safe: tuple[str, ...] = RESUME_SAFE_KEYS) -> list[str]:
    """``key: old -> new`` for each setting that differs between two run configs, except ``safe`` ones."""
    old = flatten(saved)
    for key, value in SETTINGS_ADDED.items():
        old.setdefault(key, value)

    def is_safe(key: str) -> bool:
        return any(key == s or key.startswith(s + ".") for s in safe)

    return [f"{k}: {a!r} -> {b!r}" for k, a, b in differences(old, now, missing="<unset>") if not is_safe(k)]
