"""Streaming the curated WebDataset shards into pretraining batches, resumable mid-epoch.

One row's path: shard URL -> tar members grouped by key (``mp4``, ``jpg``, ``subtitle.txt``,
``caption.txt``, ``json``) -> seeded shuffle buffer -> 12 jittered frames decoded from the clip
bytes + the middle frame + tokenised subtitle and caption -> a batch built inside the worker.

Determinism and resumption. Every (rank, worker) pair is a *logical worker* ``g`` that owns the
shards ``shuffled(seed, epoch)[g::W]`` (``W`` = workers x ranks). Each logical worker streams its
shards forever, moving to the next epoch (a new shuffle) when it runs out, so its stream depends
only on (seed, epoch, g). A batch carries its worker's position ``(epoch, raw samples consumed)``;
the trainer keeps the latest one per worker (:class:`LoaderState`) and stores it in the checkpoint.
On resume each worker replays its stream up to that position without decoding, which rebuilds the
shuffle buffer exactly. Frame jitter is seeded per sample by (seed, epoch, g, index). PyTorch's
DataLoader takes batches from its workers round-robin starting at worker 0, so on resume the
physical workers are rotated so that the worker that was next still comes next.

Failures are data: a sample that does not decode is skipped and counted; a truncated or unreadable
shard ends that shard and is counted. Both are logged rate-limited and are never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from common.errors import UserError
from train.checks import out_of_range
from train.preempt import ignore_stop_signals
from train.video import DecodeError, decode_frames, decode_image, preprocess
from shards.format import expand_pattern, raw_samples
from shards.keys import read_key_list

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class ShardDataConfig:
    """Where the shards are and how a pretraining sample becomes tensors."""

    shards: str = ""  # brace pattern(s), '::'-separated; local paths or any fsspec URL
    batch_size: int = 32  # per rank
    num_workers: int = 4  # loader processes per rank (0: load in the training process)
    num_frames: int = 12
    image_size: int = 224
    max_text_len: int = 70
    shuffle_buffer: int = 256  # samples (raw bytes) held per worker for shuffling; 0 disables
    seed: int = 42
    resize_on_device: bool = False  # ship uint8 frames and squash on the accelerator (same numbers)
    missing_caption: str = "None"  # the official code's stand-in when a clip has no caption
    # A key list (one key a line, e.g. ``clipvip dedup``'s drop_keys.txt): these samples are never read.
    exclude_keys: str = ""

    def problems(self, section: str = "data") -> list[str]:
        """Sizes below 1 (a negative worker count), each named; empty when none."""
        p = [q for name in ("batch_size", "num_frames", "image_size", "max_text_len")
             for q in out_of_range(f"{section}.{name}", getattr(self, name), 1)]
        return p + out_of_range(f"{section}.num_workers", self.num_workers, 0)

    def readers_problem(self, n_shards: int, world_size: int) -> str | None:
        """Every reader (loader worker, on every rank) streams shards of its own; fewer shards than
        readers leave some with none, which would stall the run or repeat data."""
        readers = max(1, self.num_workers) * world_size
        if n_shards >= readers:
            return None
        return (f"data.shards={self.shards!r}: {n_shards} shard(s) for {readers} readers (data.num_workers="
                f"{self.num_workers} x {world_size} rank(s)); every reader needs its own shard: write more, smaller "
                "shards or lower data.num_workers")


def shards_for_worker(urls: list[str], *, seed: int, epoch: int, worker: int, num_workers: int) -> list[str]:
    """The shards logical worker ``worker`` of ``num_workers`` reads in ``epoch`` (seeded by seed, epoch)."""
    order = list(urls)
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order[worker::num_workers]


class RateLimitedLog:
    """Log a warning at most once per ``every`` seconds, with the count of suppressed ones."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.last, self.suppressed = every, -float("inf"), 0

    def warn(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            extra = f" ({self.suppressed} similar warnings suppressed)" if self.suppressed else ""
            logger.warning(msg + extra, *args)
            self.last, self.suppressed = now, 0
        else:
            self.suppressed += 1


@dataclasses.dataclass
class WorkerPosition:
    """Where one logical worker is: the epoch, raw samples consumed in it, and failure counts."""

    epoch: int = 0
    consumed: int = 0
    skipped_samples: int = 0
    bad_shards: int = 0


def seeded_shuffle(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer whose output depends only on the input order and ``rng``'s seed."""
    if size <= 1:
        yield from samples
        return
    buf: list[dict] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= size:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def decode_pretrain_sample(raw: dict[str, Any], cfg: ShardDataConfig, rng: np.random.Generator) -> dict[str, Any]:
    """One shard sample -> video frames, middle frame and the two texts (raises DecodeError)."""
    for key in ("mp4", "jpg", "subtitle.txt"):
        if key not in raw:
            raise DecodeError(f"sample {raw.get('__key__')!r} has no {key!r} member (has {sorted(raw)})")
    video = decode_frames(raw["mp4"], cfg.num_frames, train=True, rng=rng)  # uint8 [T, H, W, C]
    frame = decode_image(raw["jpg"])  # uint8 [1, H, W, C]
    caption = raw["caption.txt"].decode("utf-8").strip() if "caption.txt" in raw else ""
    if not cfg.resize_on_device:
        video, frame = preprocess(video, cfg.image_size), preprocess(frame, cfg.image_size)[0]
    else:
        video = torch.from_numpy(np.require(video, requirements=("C", "W")))
        frame = torch.from_numpy(np.require(frame, requirements=("C", "W")))
    return {"key": raw["__key__"], "video": video, "frame": frame,
            "subtitle": raw["subtitle.txt"].decode("utf-8").strip(), "caption": caption or cfg.missing_caption}


def collate_pretrain(examples: list[dict[str, Any]], tokenizer, cfg: ShardDataConfig) -> dict[str, Any]:
    """Stack examples into a batch; tokenise subtitles and captions (pad/truncate to max_text_len)."""
    from model.tokenizer import tokenize

    sub = tokenize(tokenizer, [e["subtitle"] for e in examples], cfg.max_text_len)
    cap = tokenize(tokenizer, [e["caption"] for e in examples], cfg.max_text_len)
    videos = [e["video"] for e in examples]
    frames = [e["frame"] for e in examples]
    return {
        "keys": [e["key"] for e in examples],
        # float [B, T, C, S, S] and [B, C, S, S], or lists of uint8 clips with resize_on_device
        "video": videos if cfg.resize_on_device else torch.stack(videos),
        "frames": frames if cfg.resize_on_device else torch.stack(frames),
        "subtitle_ids": sub["input_ids"], "subtitle_mask": sub["attention_mask"],
        "caption_ids": cap["input_ids"], "caption_mask": cap["attention_mask"],
    }


class ShardStream(IterableDataset):
    """An endless, resumable stream of pretraining batches for one rank (see the module docstring)."""

    def __init__(self, cfg: ShardDataConfig, tokenizer, *, rank: int = 0, world_size: int = 1,
                 positions: list[WorkerPosition] | None = None, rotation: int = 0) -> None:
        self.cfg, self.tokenizer, self.rank, self.world_size = cfg, tokenizer, rank, world_size
        self.urls = expand_pattern(cfg.shards)
        self.num_workers = max(1, cfg.num_workers)
        problem = cfg.readers_problem(len(self.urls), world_size)
        if problem:
            raise UserError(problem)
        self.positions = positions or [WorkerPosition() for _ in range(self.num_workers)]
        if len(self.positions) != self.num_workers:
            raise ValueError(f"loader state has {len(self.positions)} worker positions but data.num_workers="
                             f"{cfg.num_workers}; resume with the same num_workers and world size")
        self.rotation = rotation
        self.excluded = read_key_list(cfg.exclude_keys) if cfg.exclude_keys else frozenset()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.rotation) % self.num_workers
        yield from self.worker_batches(logical)

    def worker_batches(self, logical: int) -> Iterator[dict[str, Any]]:
        """The batches of one logical worker, from its saved position onwards."""
        cfg = self.cfg
        g = self.rank * self.num_workers + logical  # global reader id
        pos = dataclasses.replace(self.positions[logical])
        warn = RateLimitedLog()

        def on_shard_error(exn: Exception) -> None:
            pos.bad_shards += 1
            warn.warn("skipping the rest of an unreadable shard (%d so far on reader %d): %s",
                      pos.bad_shards, g, str(exn)[:300])

        pending: list[dict[str, Any]] = []
        epoch, skip = pos.epoch, pos.consumed
        while True:
            urls = shards_for_worker(self.urls, seed=cfg.seed, epoch=epoch, worker=g,
                                     num_workers=self.num_workers * self.world_size)
            raw = raw_samples(urls, on_shard_error)
            if self.excluded:  # before the shuffle, so positions and the buffer count kept samples only
                raw = (r for r in raw if r["__key__"] not in self.excluded)
            stream = seeded_shuffle(raw, cfg.shuffle_buffer,
                                    random.Random(f"{cfg.seed}-{epoch}-{g}"))
            seen = 0
            for index, raw in enumerate(stream):
                seen += 1
                if index < skip:
                    continue  # replaying up to the saved position: no decode
                rng = np.random.default_rng([cfg.seed, epoch, g, index])
                try:
                    pending.append(decode_pretrain_sample(raw, cfg, rng))
                except (DecodeError, UnicodeDecodeError) as exn:
                    pos.skipped_samples += 1
                    warn.warn("skipping corrupt sample %r from %s (%d so far on reader %d): %s", raw.get("__key__"),
                              raw.get("__url__"), pos.skipped_samples, g, exn)
                pos.epoch, pos.consumed = epoch, index + 1
                if len(pending) == cfg.batch_size:
                    batch = collate_pretrain(pending, self.tokenizer, cfg)
                    batch["position"] = (logical, dataclasses.asdict(pos))
                    pending = []
                    yield batch
            if seen == 0:
                raise RuntimeError(f"reader {g} got no samples from its shards {urls} in epoch {epoch}: "
                                   f"the shards are empty or unreadable")
            epoch, skip = epoch + 1, 0


@dataclasses.dataclass
class LoaderState:
    """The loader's place for one rank: each logical worker's position and who delivers next."""

    positions: list[WorkerPosition]
    next_worker: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"positions": [dataclasses.asdict(p) for p in self.positions], "next_worker": self.next_worker}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoaderState:
        return cls([WorkerPosition(**p) for p in d["positions"]], int(d["next_worker"]))

    @property
    def skipped_samples(self) -> int:
        return sum(p.skipped_samples for p in self.positions)

    @property
    def bad_shards(self) -> int:
        return sum(p.bad_shards for p in self.positions)


class ShardLoader:
    """Iterates a rank's batches and keeps the :class:`LoaderState` that a checkpoint stores."""

    def __init__(self, cfg: ShardDataConfig, tokenizer, *, rank: int = 0, world_size: int = 1,
                 state: LoaderState | None = None, pin_memory: bool = False) -> None:
        n = max(1, cfg.num_workers)
        self.state = state or LoaderState([WorkerPosition() for _ in range(n)])
        self.dataset = ShardStream(cfg, tokenizer, rank=rank, world_size=world_size,
                                   positions=self.state.positions, rotation=self.state.next_worker)
        self.num_workers = n
        self.loader = DataLoader(self.dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=pin_memory,
                                 persistent_workers=cfg.num_workers > 0, worker_init_fn=ignore_stop_signals,
                                 prefetch_factor=2 if cfg.num_workers > 0 else None)
        self._it: Iterator | None = None

    def __iter__(self) -> ShardLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        logical, pos = batch.pop("position")
        positions = list(self.state.positions)
        positions[logical] = WorkerPosition(**pos)
        self.state = LoaderState(positions, (logical + 1) % self.num_workers)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def close(self) -> None:
        """Stop the worker processes now (they ignore SIGTERM, see ``train.preempt``)."""
        shutdown_workers(self._it)
        self._it = None


def shutdown_workers(iterator: Any) -> None:
    """End a DataLoader iterator's worker processes the way its own clean-up does.

    Needed where the iterator may outlive the run (an exception's traceback holds it until the
    process exits): multiprocessing's exit handler would then SIGTERM the workers, which ignore
    it, and wait for them for ever.
    """
    stop = getattr(iterator, "_shutdown_workers", None)
    if stop is not None:
        stop()


class HeldOutShards(IterableDataset):
    """One deterministic pass over held-out shards for retrieval evaluation during training.

    Yields ``{"video": float [B, T, C, S, S], "texts": [[text], ...]}`` with test-time sampling
    (``linspace(0, n-1, T)``). ``text_field`` picks the query text: a member such as
    ``caption.txt`` or ``subtitle.txt``, or ``json:<key>`` for a metadata column (e.g. the
    synthetic clips' clean ``json:caption_gt``). Undecodable samples are skipped and logged.
    """

    def __init__(self, shards: str, *, text_field: str, num_frames: int, image_size: int, batch_size: int) -> None:
        self.urls = expand_pattern(shards)
        self.text_field, self.num_frames = text_field, num_frames
        self.image_size, self.batch_size = image_size, batch_size

    def _text(self, raw: dict[str, Any]) -> str:
        if self.text_field.startswith("json:"):
            return str(json.loads(raw["json"])[self.text_field[5:]])
        return raw[self.text_field].decode("utf-8").strip()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        warn = RateLimitedLog()
        pending: list[tuple[torch.Tensor, str]] = []
        for raw in raw_samples(self.urls[wid::nw], lambda e: warn.warn("held-out shard unreadable: %s", e)):
            try:
                frames = decode_frames(raw["mp4"], self.num_frames, train=False)
                pending.append((preprocess(frames, self.image_size), self._text(raw)))
            except (DecodeError, KeyError, UnicodeDecodeError, ValueError) as exn:
                warn.warn("skipping held-out sample %r: %s", raw.get("__key__"), exn)
                continue
            if len(pending) == self.batch_size:
                yield {"video": torch.stack([p[0] for p in pending]), "texts": [[p[1]] for p in pending]}
                pending = []
        if pending:
            yield {"video": torch.stack([p[0] for p in pending]), "texts": [[p[1]] for p in pending]}


def shard_texts(pattern: str, limit: int = 20000) -> list[str]:
    """Subtitles and captions of the shards (for training a debug tokenizer offline)."""
    texts: list[str] = []
    for raw in raw_samples(expand_pattern(pattern), lambda e: None):
        texts += [raw[k].decode("utf-8", "replace") for k in ("subtitle.txt", "caption.txt") if k in raw]
        if len(texts) >= limit:
            break
    return texts
