"""One-call encoding with a trained CLIP-ViP: load it once, then encode texts and videos.

``Encoder.load`` takes what training leaves behind, or a released checkpoint:

- a run dir (``config.json`` of the run beside ``best/`` or ``checkpoints/``): its selected model
  (``best/``, else the latest checkpoint), its tokenizer (``model.tokenizer``, or the BPE the run
  learnt in ``tokenizer/``) and its evaluation's frame count and text length;
- a model dir (``config.json`` + ``model.safetensors``), whose run, when it sits inside one, gives
  the tokenizer and frame count the same way;
- ``clipvip:<official .pt>`` (or a path ending in ``.pt``), read with the restricted unpickler; it
  needs ``tokenizer=`` (the CLIP tokenizer it was trained with).

Videos are sampled and preprocessed exactly as retrieval evaluation does (``train.video``), so a
vector from here equals the evaluation's for the same clip. Every vector comes back L2-normalised
as float32 numpy, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from search.video import VideoSpec, decode_spec

logger = logging.getLogger(__name__)

DEFAULT_FRAMES, DEFAULT_TEXT_LEN = 12, 70


class EncoderError(ValueError):
    """A model or tokenizer that cannot be loaded as asked; the message names it and the fix."""


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_run_config(cfg: dict[str, Any] | None) -> bool:
    return bool(cfg) and "task" in cfg and isinstance(cfg.get("model"), dict)


def find_run_dir(model_dir: Path) -> Path | None:
    """The training run a model dir belongs to (``<run>/best``, ``<run>/checkpoints/step_N/model``)."""
    for parent in list(model_dir.parents)[:4]:
        if _is_run_config(_read_json(parent / "config.json")):
            return parent
    return None


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The tokenizer, frame count and text length a run evaluated with."""
    cfg = _read_json(run_dir / "config.json") or {}
    if cfg.get("task") == "finetune":
        ev = (cfg.get("eval") or {}).get("manifest") or {}
        split = ev if ev.get("manifest") else (cfg.get("finetune") or {})
    else:
        split = cfg.get("data") or {}
    tokenizer = (cfg.get("model") or {}).get("tokenizer") or ""
    if not tokenizer and (run_dir / "tokenizer" / "vocab.json").is_file():
        tokenizer = str(run_dir / "tokenizer")
    return {"tokenizer": tokenizer, "num_frames": split.get("num_frames"), "max_text_len": split.get("max_text_len")}


def resolve_model(spec: str) -> tuple[str, Path, Path | None]:
    """``(kind, weights location, run dir)``: kind is "official" (a .pt file) or "dir" (our format)."""
    from model.convert import CONFIG_FILE, WEIGHTS_FILE

    if spec.startswith("clipvip:") or spec.endswith(".pt"):
        path = Path(spec.removeprefix("clipvip:")).expanduser()
        if not path.is_file():
            raise EncoderError(f"model {spec}: {path} is not a file; give an official CLIP-ViP .pt")
        return "official", path, None
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise EncoderError(f"model {spec}: no such folder; give a run dir, a model dir (config.json + "
                           f"model.safetensors) or clipvip:<official .pt>")
    if _is_run_config(_read_json(path / CONFIG_FILE)):
        from train import checkpoint as ckpt

        if (path / "best" / WEIGHTS_FILE).is_file():
            return "dir", path / "best", path
        last = ckpt.latest(path / "checkpoints")
        if last is not None and (last / "model" / WEIGHTS_FILE).is_file():
            return "dir", last / "model", path
        raise EncoderError(f"model {spec}: this run has no best/ and no checkpoint with a model yet; train it first "
                           "or give a model dir")
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return "dir", path, find_run_dir(path)
    raise EncoderError(f"model {spec}: {path} holds neither a run (config.json of a training run) nor a model "
                       f"({CONFIG_FILE} + {WEIGHTS_FILE})")


@dataclasses.dataclass
class Encoder:
    """A loaded model with its tokenizer and frame sampling; see the module docstring."""

    model: Any
    tokenizer: Any
    num_frames: int
    max_text_len: int
    device: torch.device
    model_id: str  # "sha256:<16 hex>" of the weights file: what an index records and checks
    model_name: str  # where it was loaded from, for people
    precision: str = "fp32"
    decode_workers: int = 2

    @classmethod
    def load(cls, spec: str, *, tokenizer: str | None = None, device: str = "auto", num_frames: int | None = None,
             max_text_len: int | None = None, clip_config: str | None = None, precision: str = "fp32",
             decode_workers: int = 2) -> Encoder:
        """Load ``spec`` (a run dir, a model dir or ``clipvip:<.pt>``); see the module docstring."""
        from common.device import resolve_device
        from model.convert import HeadCountError, WEIGHTS_FILE, load_checkpoint, load_official_clipvip
        from model.tokenizer import load_tokenizer
        from train.setup import ModelInitError, check_tokenizer_fits

        kind, where, run_dir = resolve_model(spec)
        settings = run_settings(run_dir) if run_dir is not None else {}
        try:
            if kind == "official":
                model, _ = load_official_clipvip(where, clip_config=clip_config)
                weights = where
            else:
                model, weights = load_checkpoint(where), where / WEIGHTS_FILE
        except HeadCountError as exc:
            raise EncoderError(f"model {spec}: {exc.detail}; give clip_config (--clip-config)") from exc
        except (ValueError, OSError, RuntimeError) as exc:
            raise EncoderError(f"model {spec}: {exc}") from exc
        tok_spec = tokenizer or settings.get("tokenizer") or ""
        if not tok_spec:
            raise EncoderError(f"model {spec}: no tokenizer is recorded for it; give tokenizer= (--tokenizer), the "
                               "CLIP tokenizer folder or hub id it was trained with")
        try:
            tok = load_tokenizer(tok_spec)
            check_tokenizer_fits(model, tok, "tokenizer")
        except (OSError, ModelInitError) as exc:
            raise EncoderError(f"model {spec}: tokenizer {tok_spec}: {exc}") from exc
        dev = torch.device(resolve_device(device))
        model.to(dev).eval()
        return cls(model=model, tokenizer=tok, num_frames=int(num_frames or settings.get("num_frames") or DEFAULT_FRAMES),
                   max_text_len=int(max_text_len or settings.get("max_text_len") or DEFAULT_TEXT_LEN), device=dev,
                   model_id=f"sha256:{file_digest(weights)[:16]}", model_name=str(spec), precision=precision,
                   decode_workers=decode_workers)

    @property
    def dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    def describe(self) -> dict[str, Any]:
        """What decides the vectors: the model, its frame sampling and text length."""
        return {"model_id": self.model_id, "model_name": self.model_name, "dim": self.dim,
                "num_frames": self.num_frames, "image_size": self.image_size, "max_text_len": self.max_text_len}

    def _autocast(self):
        from train.evaluate import autocast_for

        return autocast_for(self.device, self.precision)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit-norm text vectors, float32 [N, E]."""
        from model.tokenizer import tokenize

        out = []
        for i in range(0, len(texts), batch_size):
            tok = tokenize(self.tokenizer, list(texts[i:i + batch_size]), self.max_text_len)
            with self._autocast():
                feats = self.model.encode_text(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))
            out.append(feats.float().cpu())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def encode_frames(self, clips: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """Unit-norm vectors of decoded clips, uint8 [T, H, W, C] each (sizes may differ): float32 [N, E]."""
        from train.video import preprocess

        if not clips:
            return np.zeros((0, self.dim), np.float32)
        video = torch.stack([preprocess(c, self.image_size) for c in clips]).to(self.device)
        with self._autocast():
            feats = self.model.encode_video(video)
        return feats.float().cpu().numpy()

    def encode_videos(self, videos: Sequence[VideoSpec], batch_size: int = 16) -> np.ndarray:
        """Unit-norm vectors of video files or ``(path, start_s, end_s)`` spans, float32 [N, E].

        Raises ``train.video.DecodeError`` naming the first video that cannot be decoded.
        """
        out = []
        with ThreadPoolExecutor(max(1, self.decode_workers)) as pool:
            for i in range(0, len(videos), batch_size):
                clips = list(pool.map(lambda v: decode_spec(v, self.num_frames), videos[i:i + batch_size]))
                out.append(self.encode_frames(clips))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
