"""The curation stages: pure ``batch -> batch`` functions (Ray tasks) and one actor class.

Every stage reads and writes pandas batches. Each names its columns in ``INPUTS``/``OUTPUTS``
(the builder in ``pipeline/run.py`` checks them before launching anything). Rows whose ``status``
is already "failed" pass through untouched: they still have to reach the writer, which records
them in the shard's status table.

1. ``check_text``: a row with empty subtitle text fails ("empty text").
2. ``decode_clips`` (task, CPU): middle frame as JPEG and the span re-encoded as mp4, decoded in
   a crash-isolated child process (``pipeline/decode_worker.py``).
3. ``CaptionStage`` (actor pool, GPU when configured): loads a ``Captioner`` once and captions the
   middle frames of the rows that are still ok.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from typing import Any

import pandas as pd

from caption.protocol import DecodeSettings
from pipeline.decode_worker import DecoderProcess
from pipeline.frames import FrameConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True, frozen=True)
class CaptionConfig:
    """The captioner and its actor pool. ``model = ""`` turns the caption stage off."""

    model: str = ""  # "hf:<path or hub id>" | "ofa:<checkpoint>" | "" (off)
    device: str = "auto"
    num_gpus: float = 0.0  # per actor
    num_cpus: float = 1.0  # per actor
    batch_size: int = 32  # frames per generate() call
    concurrency: int = 1  # actors in the pool
    decode: DecodeSettings = dataclasses.field(default_factory=DecodeSettings)


def _fail(batch: pd.DataFrame, mask: Any, reason: str | list[str]) -> None:
    batch.loc[mask, "status"] = "failed"
    batch.loc[mask, "error"] = reason


CHECK_TEXT_INPUTS = ("text", "status", "error")
CHECK_TEXT_OUTPUTS = ("status", "error")


def check_text(batch: pd.DataFrame) -> pd.DataFrame:
    """Fail rows whose subtitle text is empty or whitespace.

    Reads ``text``, ``status``, ``error``; writes ``status``, ``error``.
    """
    empty = (batch["status"] == "ok") & (batch["text"].fillna("").str.strip() == "")
    if empty.any():
        _fail(batch, empty, "empty text: the manifest's subtitle text is empty for this row")
    return batch


DECODE_INPUTS = ("path", "start", "end", "status", "error")
DECODE_OUTPUTS = ("jpg", "mp4", "clip", "decode_s", "status", "error")

# One decode child per Ray worker process, reused across task calls (started lazily, restarted
# after a crash).
_DECODERS: dict[FrameConfig, DecoderProcess] = {}


def decoder_for(cfg: FrameConfig) -> DecoderProcess:
    if cfg not in _DECODERS:
        _DECODERS[cfg] = DecoderProcess(cfg)
    return _DECODERS[cfg]


def decode_clips(batch: pd.DataFrame, cfg: FrameConfig) -> pd.DataFrame:
    """Middle frame and training copy of every ok row.

    Reads ``path``, ``start``, ``end``, ``status``, ``error``; writes ``jpg`` (JPEG bytes), ``mp4``
    (H.264 bytes), ``clip`` (JSON: span, middle_time, source and output fps/size, n_frames),
    ``decode_s`` and, for clips that cannot be decoded, ``status``/``error``.
    """
    decoder = decoder_for(cfg)
    jpgs, mp4s, clips, secs = [], [], [], []
    statuses, errors = list(batch["status"]), list(batch["error"])
    for i, (path, start, end) in enumerate(zip(batch["path"], batch["start"], batch["end"])):
        jpg = mp4 = b""
        meta, dt = "", 0.0
        if statuses[i] == "ok":
            t0 = time.perf_counter()
            out, reason = decoder.decode(path, None if pd.isna(start) else float(start),
                                         None if pd.isna(end) else float(end))
            dt = time.perf_counter() - t0
            if out is None:
                statuses[i], errors[i] = "failed", reason
            else:
                jpg, mp4, meta = out.jpg, out.mp4, json.dumps(out.meta())
        jpgs.append(jpg)
        mp4s.append(mp4)
        clips.append(meta)
        secs.append(dt)
    return batch.assign(jpg=jpgs, mp4=mp4s, clip=clips, decode_s=secs, status=statuses, error=errors)


CAPTION_INPUTS = ("jpg", "status", "error")
CAPTION_OUTPUTS = ("caption", "caption_info", "caption_s", "status", "error")


class CaptionStage:
    """Actor: load the captioner once, then caption the middle frames of ok rows.

    Reads ``jpg``, ``status``, ``error``; writes ``caption``, ``caption_info`` (JSON of the
    captioner's ``describe()``), ``caption_s`` and, for empty captions, ``status``/``error``.
    Failed rows carry no pixels, so letting them through costs the GPU nothing.
    """

    def __init__(self, cfg: CaptionConfig):
        from caption.protocol import load_captioner

        self.captioner = load_captioner(cfg.model, device=cfg.device, settings=cfg.decode)
        self.info = json.dumps({"model": cfg.model, **self.captioner.describe()}, sort_keys=True, default=str)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from PIL import Image

        ok = (batch["status"] == "ok").to_numpy()
        captions = [""] * len(batch)
        seconds = [0.0] * len(batch)
        idx = [i for i in range(len(batch)) if ok[i]]
        if idx:
            # Opened, not decoded: the captioner decodes them (the OFA port in its resize threads).
            images = [Image.open(io.BytesIO(batch["jpg"].iloc[i])) for i in idx]
            t0 = time.perf_counter()
            texts = self.captioner.generate(images)
            per = (time.perf_counter() - t0) / len(idx)
            for i, text in zip(idx, texts):
                captions[i], seconds[i] = text.strip(), per
        batch = batch.assign(caption=captions, caption_info=self.info, caption_s=seconds)
        empty = (batch["status"] == "ok") & (batch["caption"] == "")
        if empty.any():
            _fail(batch, empty, "empty caption: the captioner returned no text for the middle frame")
        return batch


def caption_off_info() -> str:
    """``caption_info`` when the caption stage is off (recorded so readers know why it is empty)."""
    return json.dumps({"model": "", "note": "caption stage off (caption.model is empty)"})
