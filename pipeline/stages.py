"""The curation stages: pure ``batch -> batch`` functions (Ray tasks) and one actor class.

Every stage reads and writes pandas batches. Each names its columns in ``INPUTS``/``OUTPUTS``
(the builder in ``pipeline/run.py`` checks them before launching anything). Rows whose ``status``
is already "failed" pass through untouched: they still have to reach the writer, which records
them in the shard's status table.

1. ``check_text``: a row with empty subtitle text fails ("empty text").
2. ``decode_clips`` (CPU, in the shard task): middle frame as JPEG and the span re-encoded as
   mp4, decoded in a crash-isolated child process (``pipeline/decode_worker.py``).
3. ``CaptionStage`` (an actor pool on GPU, or loaded inside each shard task on CPU): loads a
   ``Captioner`` once and captions the middle frames of the rows that are still ok. It receives
   only ``CAPTION_INPUTS`` (keys and JPEG bytes), never the clips.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import tempfile
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
    # Custom Ray resources a node must offer to host a caption actor, e.g. {"captioner": 1}.
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    # "actors": a pool of ``concurrency`` actors that shard tasks send frames to (the GPU layout);
    # "inline": each shard task loads the captioner itself (CPU-only clusters: no frame leaves the
    # process, like one worker per core); "auto": actors when num_gpus > 0, else inline.
    placement: str = "auto"
    decode: DecodeSettings = dataclasses.field(default_factory=DecodeSettings)

    def __post_init__(self) -> None:
        if self.placement not in ("auto", "actors", "inline"):
            raise ValueError(f"caption.placement={self.placement!r} must be auto, actors or inline")
        if self.concurrency < 1:
            raise ValueError(f"caption.concurrency={self.concurrency} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"caption.batch_size={self.batch_size} must be >= 1")

    @property
    def uses_actors(self) -> bool:
        return bool(self.model) and (self.placement == "actors" or (self.placement == "auto" and self.num_gpus > 0))


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


DECODE_INPUTS = ("path", "member", "start", "end", "status", "error")
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

    Reads ``path``, ``member``, ``start``, ``end``, ``status``, ``error``; writes ``jpg`` (JPEG
    bytes), ``mp4`` (H.264 bytes), ``clip`` (JSON: span, middle_time, source and output fps/size,
    n_frames), ``decode_s`` and, for clips that cannot be decoded, ``status``/``error``. A row whose
    ``member`` holds bytes (video2dataset input) is decoded from those bytes, not from ``path``.
    """
    decoder = decoder_for(cfg)
    jpgs, mp4s, clips, secs = [], [], [], []
    statuses, errors = list(batch["status"]), list(batch["error"])
    members = batch["member"] if "member" in batch else [b""] * len(batch)
    for i, (path, member, start, end) in enumerate(zip(batch["path"], members, batch["start"], batch["end"])):
        jpg = mp4 = b""
        meta, dt = "", 0.0
        if statuses[i] == "ok":
            t0 = time.perf_counter()
            with _local_copy(path, member) as local:
                out, reason = decoder.decode(local, None if pd.isna(start) else float(start),
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


@contextlib.contextmanager
def _local_copy(path: str, member: bytes | None):
    """``path`` itself, or a temporary file holding ``member`` (a clip taken out of a tar)."""
    if not member:
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="clipvip-clip-", suffix=".mp4")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(member)
        yield tmp
    finally:
        os.unlink(tmp)


CAPTION_INPUTS = ("key", "jpg", "status", "error")
CAPTION_OUTPUTS = ("caption", "caption_info", "caption_s", "status", "error")


class CaptionStage:
    """Actor: load the captioner once, then caption the middle frames of ok rows.

    Reads ``key``, ``jpg``, ``status``, ``error``; writes ``caption``, ``caption_info`` (JSON of the
    captioner's ``describe()``), ``caption_s`` and, for empty captions, ``status``/``error``.
    Failed rows carry no pixels, so letting them through costs the GPU nothing. Returns only
    ``CAPTION_OUTPUTS``, aligned with the input rows.
    """

    def __init__(self, cfg: CaptionConfig):
        from caption.registry import load_captioner

        self.captioner = load_captioner(cfg.model, device=cfg.device, settings=cfg.decode)
        self.info = json.dumps({"model": cfg.model, **self.captioner.describe()}, sort_keys=True, default=str)

    def ready(self) -> bool:
        return True

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from PIL import Image

        unexpected = sorted(set(batch.columns) - set(CAPTION_INPUTS))
        if unexpected:
            raise ValueError(f"the caption stage was sent column(s) {unexpected} it does not read")
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
        # Only what the stage produced goes back: the frames stay where they came from.
        return batch[list(CAPTION_OUTPUTS)]


def caption_off_info() -> str:
    """``caption_info`` when the caption stage is off (recorded so readers know why it is empty)."""
    return json.dumps({"model": "", "note": "caption stage off (caption.model is empty)"})


@dataclasses.dataclass(kw_only=True, frozen=True)
class Stage:
    """One step a shard task runs, with the columns it reads and writes."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def build_stages(cfg: CaptionConfig) -> list[Stage]:
    """The steps of a shard task, in order, for caption settings ``cfg``."""
    caption_inputs = CAPTION_INPUTS if cfg.model else ()
    return [Stage(name="check_text", inputs=CHECK_TEXT_INPUTS, outputs=CHECK_TEXT_OUTPUTS),
            Stage(name="decode", inputs=DECODE_INPUTS, outputs=DECODE_OUTPUTS),
            Stage(name="caption" if cfg.model else "no_caption", inputs=caption_inputs, outputs=CAPTION_OUTPUTS)]


def check_graph(source: tuple[str, ...], graph: list[Stage], sink: tuple[str, ...]) -> None:
    """Raise before launching anything if a stage (or the writer) reads a column nobody produced."""
    available = set(source)
    for stage in graph:
        missing = [c for c in stage.inputs if c not in available]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads column(s) {missing} that no earlier stage produces "
                             f"(available: {sorted(available)})")
        available |= set(stage.outputs)
    missing = [c for c in sink if c not in available]
    if missing:
        raise ValueError(f"the writer reads column(s) {missing} that no stage produces")
