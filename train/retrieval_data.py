"""Downstream retrieval sets (MSR-VTT, DiDeMo, ActivityNet, LSMDC): manifests, train and eval datasets.

Manifests are JSON Lines in the official HD-VILA layout, one row per video::

    {"clip_name": "video7020", "text": "a woman creating a fondant baby"}            # one text
    {"clip_name": "video0", "text": ["a man sings", "someone plays guitar", ...]}    # several

``video`` (a path or URL) may replace ``clip_name``; otherwise the file is ``<video_root>/<clip_name>``
plus the first of ``extensions`` that exists (DiDeMo ids already carry their extension).

Per dataset, as the official data loaders do:
- ``msrvtt``: training draws ONE caption of the video per step (20 captions, ~5 caption-epochs over
  "100" video-epochs); the 1k-A test has one caption per video.
- ``didemo`` and ``activitynet``: paragraph retrieval, all sentences of a video joined with spaces,
  in training AND evaluation. The official code joins only when the path contains "didemo", so
  ActivityNet trained and tested on one random sentence (R@1 ~20 instead of ~51); fixed here by
  making the join a property of the dataset, not of the file name.
- ``lsmdc``: one description per clip.
ActivityNet uses 32 frames, the others 12 (set in the run configs).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.errors import UserError
from common.jsonl import read_objects
from train.checks import not_one_of, out_of_range
from train.video import DecodeError, decode_video_file, preprocess

logger = logging.getLogger(__name__)

DATASETS = ("msrvtt", "didemo", "activitynet", "lsmdc")
PARAGRAPH_DATASETS = ("didemo", "activitynet")
EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mov")


@dataclasses.dataclass(kw_only=True)
class RetrievalDataConfig:
    """One downstream dataset split and how its samples become tensors."""

    dataset: str = "msrvtt"  # msrvtt | didemo | activitynet | lsmdc
    manifest: str = ""  # JSONL, official layout (module docstring)
    video_root: str = ""
    num_frames: int = 12
    image_size: int = 224
    max_text_len: int = 50
    batch_size: int = 16
    num_workers: int = 4
    seed: int = 42

    def problems(self, section: str) -> list[str]:
        """An unknown dataset, sizes below 1 (a negative worker count), each named; empty when none."""
        p = not_one_of(f"{section}.dataset", self.dataset, DATASETS)
        p += [q for name in ("batch_size", "num_frames", "image_size", "max_text_len")
              for q in out_of_range(f"{section}.{name}", getattr(self, name), 1)]
        return p + out_of_range(f"{section}.num_workers", self.num_workers, 0)


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    """One video of a split and its texts (a single paragraph for paragraph datasets)."""

    video: str
    texts: tuple[str, ...]


def _resolve_video(row: dict[str, Any], video_root: str, where: str) -> str:
    if "video" in row:
        return str(row["video"])
    if "clip_name" not in row:
        raise UserError(f"{where}: row has neither 'video' nor 'clip_name' (keys {sorted(row)})")
    base = f"{video_root.rstrip('/')}/{row['clip_name']}" if video_root else str(row["clip_name"])
    if Path(base).suffix.lower() in EXTENSIONS:
        return base
    for ext in EXTENSIONS:
        if Path(base + ext).exists():
            return base + ext
    return base + EXTENSIONS[0]  # remote roots: assume mp4, the decoder names the file if it is wrong


def load_manifest(path: str, dataset: str, video_root: str = "") -> list[VideoEntry]:
    """Read a retrieval manifest; paragraph datasets get their sentences joined into one text."""
    if dataset not in DATASETS:
        raise UserError(f"unknown retrieval dataset {dataset!r}: choose one of {DATASETS}")
    import fsspec

    entries = []
    with fsspec.open(path, "r") as f:
        for lineno, row in read_objects(enumerate(f, 1), lambda n: f"{path}:{n}"):
            where = f"{path}:{lineno}"
            text = row.get("text", row.get("caption"))
            texts = [text] if isinstance(text, str) else list(text or [])
            texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
            if not texts:
                raise UserError(f"{where}: no text for this video; every row needs 'text' (a string or a list)")
            if dataset in PARAGRAPH_DATASETS:
                texts = [" ".join(texts)]
            entries.append(VideoEntry(_resolve_video(row, video_root, where), tuple(texts)))
    if not entries:
        raise UserError(f"manifest {path} has no rows")
    return entries


class RetrievalTrainDataset(Dataset):
    """(video, one text) pairs for fine-tuning; the caption draw and frame jitter are seeded per
    (seed, epoch, index), so a resumed run sees the same samples."""

    def __init__(self, entries: list[VideoEntry], cfg: RetrievalDataConfig) -> None:
        self.entries, self.cfg, self.epoch = entries, cfg, 0

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        # A broken downstream video is replaced by the next one so every rank keeps a full batch
        # (the contrastive gather needs equal batch sizes); the skip is logged.
        for attempt in range(len(self.entries)):
            i = (index + attempt) % len(self.entries)
            entry = self.entries[i]
            rng = np.random.default_rng([self.cfg.seed, self.epoch, i])
            text = entry.texts[int(rng.integers(len(entry.texts)))]
            try:
                frames = decode_video_file(entry.video, self.cfg.num_frames, train=True, rng=rng)
            except (DecodeError, FileNotFoundError) as e:
                logger.warning("skipping undecodable video %s: %s", entry.video, e)
                continue
            return {"video": preprocess(frames, self.cfg.image_size), "text": text}
        raise RuntimeError("no video in the fine-tuning manifest decodes; check video_root and the files")


class RetrievalEvalDataset(Dataset):
    """Every video once, deterministic uniform frames, with all of its texts."""

    def __init__(self, entries: list[VideoEntry], num_frames: int, image_size: int) -> None:
        self.entries, self.num_frames, self.image_size = entries, num_frames, image_size

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        try:
            frames = decode_video_file(entry.video, self.num_frames, train=False)
        except (DecodeError, FileNotFoundError) as e:
            # Evaluation must not silently drop test items: that would change the benchmark.
            raise RuntimeError(f"evaluation video {entry.video} cannot be decoded ({e}); fix or remove it "
                               f"from the manifest and say so when reporting") from e
        return {"video": preprocess(frames, self.image_size), "texts": list(entry.texts)}


def collate_train(examples: list[dict[str, Any]], tokenizer, max_text_len: int) -> dict[str, Any]:
    """Fine-tuning batch. The retrieval text takes the subtitle's place, so loss term 'vs' applies."""
    from model.tokenizer import tokenize

    tok = tokenize(tokenizer, [e["text"] for e in examples], max_text_len)
    return {"video": torch.stack([e["video"] for e in examples]),
            "subtitle_ids": tok["input_ids"], "subtitle_mask": tok["attention_mask"]}


def collate_eval(examples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"video": torch.stack([e["video"] for e in examples]), "texts": [e["texts"] for e in examples]}


class FinetuneLoader:
    """Endless fine-tuning batches for one rank, resumable at a batch boundary.

    Each epoch shuffles the videos with (seed, epoch); every global batch of ``batch_size x world``
    indices is split by rank (the last partial global batch is dropped so every rank contrasts a
    full batch). The state is (epoch, global batches consumed in the epoch).
    """

    def __init__(self, dataset: RetrievalTrainDataset, tokenizer, cfg: RetrievalDataConfig, *, rank: int = 0,
                 world_size: int = 1, state: dict[str, int] | None = None) -> None:
        self.dataset, self.tokenizer, self.cfg = dataset, tokenizer, cfg
        self.rank, self.world_size = rank, world_size
        self.per_epoch = len(dataset) // (cfg.batch_size * world_size)
        if self.per_epoch == 0:
            raise UserError(f"{len(dataset)} videos cannot fill one global batch of {cfg.batch_size} x {world_size} "
                             f"ranks; lower batch_size")
        self.state = dict(state or {"epoch": 0, "batch": 0})
        self._it = None

    def _epoch_iter(self, epoch: int, start: int):
        from torch.utils.data import DataLoader

        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.dataset))
        gb = self.cfg.batch_size * self.world_size
        batches = [order[b * gb:(b + 1) * gb][self.rank::self.world_size].tolist()
                   for b in range(start, self.per_epoch)]
        self.dataset.set_epoch(epoch)
        from train.preempt import ignore_stop_signals

        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.cfg.num_workers,
                            worker_init_fn=ignore_stop_signals,
                            collate_fn=functools.partial(collate_train, tokenizer=self.tokenizer,
                                                               max_text_len=self.cfg.max_text_len))
        return iter(loader)

    def __iter__(self) -> FinetuneLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.state["batch"] >= self.per_epoch:
            self.state = {"epoch": self.state["epoch"] + 1, "batch": 0}
            self._it = None
        if self._it is None:
            self._it = self._epoch_iter(self.state["epoch"], self.state["batch"])
        batch = next(self._it)
        self.state = {"epoch": self.state["epoch"], "batch": self.state["batch"] + 1}
        return batch

    def state_dict(self) -> dict[str, int]:
        return dict(self.state)

    def close(self) -> None:
        """Stop the worker processes now (see :func:`train.data.shutdown_workers`)."""
        from train.data import shutdown_workers

        shutdown_workers(self._it)
        self._it = None
