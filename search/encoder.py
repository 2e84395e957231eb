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
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch

from search.model_files import DEFAULT_FRAMES, DEFAULT_TEXT_LEN
from search.video import VideoSpec, decode_spec

logger = logging.getLogger(__name__)


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
        """Load ``spec`` (a run dir, a model dir or ``clipvip:<.pt>``); see the module docstring. A model
        or tokenizer that cannot serve is an :class:`EncoderError` naming it (``search.model_files``)."""
        from common.device import resolve_device
        from search.model_files import checked_tokenizer, load_model, resolve_model, run_settings

        files = resolve_model(spec)
        settings = run_settings(files)
        model = load_model(files, clip_config)
        tok = checked_tokenizer(files, model.config, tokenizer or settings["tokenizer"] or "")
        dev = torch.device(resolve_device(device))
        model.to(dev).eval()
        return cls(model=model, tokenizer=tok, num_frames=int(num_frames or settings["num_frames"] or DEFAULT_FRAMES),
                   max_text_len=int(max_text_len or settings["max_text_len"] or DEFAULT_TEXT_LEN), device=dev,
                   model_id=files.model_id(), model_name=str(spec), precision=precision,
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
