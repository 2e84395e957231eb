"""What differs between a pretraining and a fine-tuning run, one builder per task.

``TrainConfig`` holds both the pretraining data section (``data``: curated shards, OCL loss terms)
and the fine-tuning one (``finetune``: a retrieval manifest, the video-text loss). A run reads only
its task's section; ``Task.ignored`` names what the run will not use, so that a setting given to
the wrong task is reported instead of silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from common.errors import UserError
from train.data import ShardDataConfig
from train.loop import Runtime, TrainConfig
from train.retrieval_data import RetrievalDataConfig

logger = logging.getLogger(__name__)


class PretrainTask:
    """Post-pretraining on curated shards with the configured OCL loss terms."""

    name = "pretrain"
    section = "data"

    def data(self, cfg: TrainConfig) -> ShardDataConfig:
        return cfg.data

    def loss_terms(self, cfg: TrainConfig) -> tuple[str, ...]:
        return tuple(cfg.loss_terms)

    def texts(self, cfg: TrainConfig) -> list[str]:
        from train.data import shard_texts

        return shard_texts(cfg.data.shards)

    def dataset(self, cfg: TrainConfig) -> tuple[int, Any]:
        """(items per epoch, the dataset handle ``batches`` takes)."""
        from shards.format import expand_pattern, read_sizes

        return sum(read_sizes(expand_pattern(cfg.data.shards)).values()), None

    def batches(self, cfg: TrainConfig, dataset: Any, tokenizer, rt: Runtime, loader_state: Any):
        from train.data import LoaderState, ShardLoader

        return ShardLoader(cfg.data, tokenizer, rank=rt.rank, world_size=rt.world_size,
                           state=LoaderState.from_dict(loader_state) if loader_state else None,
                           pin_memory=rt.device.type == "cuda")

    def ignored(self, cfg: TrainConfig) -> list[str]:
        changed = _changed(cfg.finetune, RetrievalDataConfig())
        return [f"finetune.{k}" for k in changed]


class FinetuneTask:
    """Retrieval fine-tuning on a downstream manifest with the video-text loss ("vs")."""

    name = "finetune"
    section = "finetune"

    def data(self, cfg: TrainConfig) -> RetrievalDataConfig:
        return cfg.finetune

    def loss_terms(self, cfg: TrainConfig) -> tuple[str, ...]:
        return ("vs",)

    def _entries(self, cfg: TrainConfig):
        from train.retrieval_data import load_manifest

        return load_manifest(cfg.finetune.manifest, cfg.finetune.dataset, cfg.finetune.video_root)

    def texts(self, cfg: TrainConfig) -> list[str]:
        return [t for e in self._entries(cfg) for t in e.texts]

    def dataset(self, cfg: TrainConfig) -> tuple[int, Any]:
        from train.retrieval_data import RetrievalTrainDataset

        train_set = RetrievalTrainDataset(self._entries(cfg), cfg.finetune)
        return len(train_set), train_set

    def batches(self, cfg: TrainConfig, dataset: Any, tokenizer, rt: Runtime, loader_state: Any):
        from train.retrieval_data import FinetuneLoader

        return FinetuneLoader(dataset, tokenizer, cfg.finetune, rank=rt.rank, world_size=rt.world_size,
                              state=loader_state)

    def ignored(self, cfg: TrainConfig) -> list[str]:
        out = [f"data.{k}" for k in _changed(cfg.data, ShardDataConfig())]
        if tuple(cfg.loss_terms) != TrainConfig().loss_terms:
            out.append("loss_terms (fine-tuning always trains the video-text loss 'vs')")
        return out


TASKS = {t.name: t for t in (PretrainTask(), FinetuneTask())}


def get_task(cfg: TrainConfig) -> PretrainTask | FinetuneTask:
    try:
        return TASKS[cfg.task]
    except KeyError:
        raise UserError(f"task={cfg.task!r}: choose one of {sorted(TASKS)}") from None


def warn_ignored(cfg: TrainConfig) -> list[str]:
    """Log (and return) the settings this run's task does not read."""
    ignored = get_task(cfg).ignored(cfg)
    if ignored:
        logger.warning("a %s run ignores these settings: %s", cfg.task, ", ".join(ignored))
    return ignored


def _changed(section: Any, default: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(section) if getattr(section, f.name) != getattr(default, f.name)]


def steps_for(cfg: TrainConfig, task: PretrainTask | FinetuneTask, n_items: int, world_size: int) -> int:
    """Official step count: ceil(items * epochs / (batch per rank * ranks)), unless ``steps`` is set."""
    if cfg.steps > 0:
        return cfg.steps
    if n_items <= 0:
        raise UserError("cannot derive the step count: no sizes.json beside the shards; set steps=<N>")
    return math.ceil(n_items * cfg.epochs / (task.data(cfg).batch_size * world_size))
