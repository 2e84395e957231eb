"""What a model spec points at, and whether it will load, found from its files alone.

A spec is a training run dir (its ``config.json`` beside ``best/`` or ``checkpoints/``), a model
dir (``config.json`` + ``model.safetensors``, as ``model.convert.save_checkpoint`` writes it) or
``clipvip:<official .pt>``. :func:`resolve_model` says which and where the weights are;
:func:`run_settings` reads the tokenizer, frame count and text length the run evaluated with; and
:func:`check_model_dir` proves a model dir will load without reading its weights: the config
parses into a ``CLIPViPConfig`` and the safetensors header holds exactly the tensors, with exactly
the shapes, that config builds. The embedding job's driver runs these checks before it writes
anything; the encoder runs them before it loads.

Every problem is an :class:`EncoderError` (a ``UserError``) naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from common.errors import UserError

DEFAULT_FRAMES, DEFAULT_TEXT_LEN = 12, 70
OFFICIAL_PREFIX = "clipvip:"


class EncoderError(UserError):
    """A model or tokenizer that cannot be loaded as asked; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """Where a spec's weights are: ``kind`` "dir" (our format: ``folder``) or "official" (the ``.pt``)."""

    spec: str
    kind: str
    path: Path  # the model folder, or the .pt file
    run_dir: Path | None  # the training run it belongs to, when there is one

    @property
    def weights(self) -> Path:
        from model.convert import WEIGHTS_FILE

        return self.path if self.kind == "official" else self.path / WEIGHTS_FILE

    def model_id(self) -> str:
        """``sha256:<16 hex>`` of the weights file: what parts and indices record and compare."""
        from common.files import sha256_file

        return f"sha256:{sha256_file(self.weights)[:16]}"


def _run_config(folder: Path) -> dict[str, Any] | None:
    """The training run config in ``folder`` (a dict with ``task`` and a ``model`` section), or None
    when there is none; a ``config.json`` that is not JSON is no run's."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and "task" in data and isinstance(data.get("model"), dict) else None


def find_run_dir(model_dir: Path) -> Path | None:
    """The training run a model dir belongs to (``<run>/best``, ``<run>/checkpoints/step_N/model``)."""
    for parent in list(model_dir.parents)[:4]:
        if _run_config(parent) is not None:
            return parent
    return None


def run_settings(files: ModelFiles) -> dict[str, Any]:
    """The tokenizer, frame count and text length the model's run evaluated with (each None when
    unknown, as for a model outside a run or an official checkpoint)."""
    from train.model_init import tokenizer_of

    cfg = _run_config(files.run_dir) if files.run_dir is not None else None
    if cfg is None:
        return {"tokenizer": None, "num_frames": None, "max_text_len": None}
    if cfg.get("task") == "finetune":
        ev = (cfg.get("eval") or {}).get("manifest") or {}
        split = ev if ev.get("manifest") else (cfg.get("finetune") or {})
    else:
        split = cfg.get("data") or {}
    return {"tokenizer": tokenizer_of(f"ckpt:{files.path}") or None, "num_frames": split.get("num_frames"),
            "max_text_len": split.get("max_text_len")}


def resolve_model(spec: str) -> ModelFiles:
    """The files of ``spec`` (see the module docstring); refuses a spec that names none."""
    from model.convert import CONFIG_FILE, WEIGHTS_FILE

    if spec.startswith(OFFICIAL_PREFIX) or spec.endswith(".pt"):
        path = Path(spec.removeprefix(OFFICIAL_PREFIX)).expanduser()
        if not path.is_file():
            raise EncoderError(f"model {spec}: {path} is not a file; give an official CLIP-ViP .pt")
        return ModelFiles(spec, "official", path, None)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise EncoderError(f"model {spec}: no such folder; give a run dir, a model dir (config.json + "
                           f"model.safetensors) or clipvip:<official .pt>")
    if _run_config(path) is not None:
        from train import checkpoint as ckpt

        if (path / "best" / WEIGHTS_FILE).is_file():
            return ModelFiles(spec, "dir", path / "best", path)
        last = ckpt.latest(path / "checkpoints")
        if last is not None and (last / "model" / WEIGHTS_FILE).is_file():
            return ModelFiles(spec, "dir", last / "model", path)
        raise EncoderError(f"model {spec}: this run has no best/ and no checkpoint with a model yet; train it first "
                           "or give a model dir")
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return ModelFiles(spec, "dir", path, find_run_dir(path))
    raise EncoderError(f"model {spec}: {path} holds neither a run (config.json of a training run) nor a model "
                       f"({CONFIG_FILE} + {WEIGHTS_FILE})")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a config field of type ``hint`` (int, float, str, X | None)."""
    for t in typing.get_args(hint) or (hint,):
        if t is type(None) and value is None:
            return True
        if isinstance(value, bool):
            continue  # JSON true/false is no number here
        if (t is int and isinstance(value, int)) or (t is float and isinstance(value, (int, float))) \
                or (t is str and isinstance(value, str)):
            return True
    return False


def read_config(folder: Path):
    """The ``CLIPViPConfig`` of a model dir's ``config.json``, refused naming the file and each bad field."""
    from model.clip_vip import CLIPViPConfig
    from model.convert import CONFIG_FILE

    file = folder / CONFIG_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EncoderError(f"{file} is not valid JSON ({exc}); give a model dir written by clipvip") from None
    if not isinstance(data, dict):
        raise EncoderError(f"{file} holds a {type(data).__name__}, not the object of a CLIP-ViP config")
    hints = typing.get_type_hints(CLIPViPConfig)
    unknown = sorted(set(data) - set(hints))
    wrong = sorted(k for k, v in data.items() if k in hints and not _fits(v, hints[k]))
    if unknown or wrong:
        raise EncoderError(f"{file} is not a CLIP-ViP config: " + "; ".join(
            ([f"unknown field(s) {unknown}"] if unknown else [])
            + [f"{k}={data[k]!r} is not {hints[k]}" for k in wrong]))
    try:
        return CLIPViPConfig(**data)
    except ValueError as exc:  # __post_init__'s refusals of a value
        raise EncoderError(f"{file}: {exc}") from None


def check_model_dir(folder: Path):
    """The config of a model dir whose weights file holds exactly the tensors its config builds, with
    the same shapes; refused naming the file and the first differences. No weight is read."""
    import torch
    from safetensors import SafetensorError, safe_open

    from model.clip_vip import CLIPViP
    from model.convert import WEIGHTS_FILE

    cfg = read_config(folder)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in CLIPViP(cfg).state_dict().items()}
    file = folder / WEIGHTS_FILE
    try:
        with safe_open(str(file), "pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as exc:
        raise EncoderError(f"{file} is not a readable safetensors file ({exc}); write the model again") from None
    problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
    problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    problems += [f"{k} is {list(have[k])}, the config needs {list(want[k])}" for k in sorted(set(want) & set(have))
                 if have[k] != want[k]]
    if problems:
        raise EncoderError(f"{file} does not match {folder / 'config.json'} ({len(problems)} difference(s): "
                           f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}); give the config the "
                           "weights were saved with")
    return cfg


def load_model(files: ModelFiles, clip_config: str | None = None):
    """The model of ``files``, on CPU, after :func:`check_model_dir` for a model dir; an official
    ``.pt`` through the restricted unpickler. Every refusal names the spec."""
    from model.convert import HeadCountError, load_checkpoint, load_official_clipvip

    try:
        if files.kind == "official":
            return load_official_clipvip(files.path, clip_config=clip_config)[0]
        check_model_dir(files.path)
        return load_checkpoint(files.path)
    except HeadCountError as exc:
        raise EncoderError(f"model {files.spec}: {exc.detail}; give clip_config (--clip-config)") from None
    except EncoderError:
        raise
    except UserError as exc:
        raise EncoderError(f"model {files.spec}: {exc}") from None


def checked_tokenizer(files: ModelFiles, config, tokenizer: str):
    """The tokenizer ``tokenizer`` (a folder or hub id), loaded, whose ids fit ``config`` (the model's),
    or :class:`EncoderError` naming both."""
    import types

    from model.tokenizer import load_tokenizer
    from train.model_init import check_tokenizer_fits

    if not tokenizer:
        raise EncoderError(f"model {files.spec}: no tokenizer is recorded for it; give tokenizer= (--tokenizer), the "
                           "CLIP tokenizer folder or hub id it was trained with")
    try:
        tok = load_tokenizer(tokenizer)
        check_tokenizer_fits(types.SimpleNamespace(config=config), tok, "tokenizer")
    except UserError as exc:
        raise EncoderError(f"model {files.spec}: tokenizer {tokenizer}: {exc}") from None
    return tok
