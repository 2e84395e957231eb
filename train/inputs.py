"""Whether a run's inputs are where its config says: shards, manifests and their videos, the model
to start from, the tokenizer folder, and a ``run_dir`` that can be written.

Called by :meth:`train.loop.TrainConfig.check` before a run writes anything; ``clipvip evaluate``
checks its model folder and manifest with the same functions. Each problem is a sentence naming
the setting, the path and the fix; remote URLs (``s3://...``) are left to the loaders, which warn
about an unreadable shard as they meet it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser()


def shard_problems(key: str, pattern: str) -> tuple[list[str], int]:
    """A shard pattern that expands to no existing local file, and the number of shards it names."""
    from shards.format import expand_pattern

    try:
        urls = expand_pattern(pattern)
    except ValueError as exc:
        return [f"{key}: {exc}"], 0
    local = [u for u in urls if _is_local(u)]
    found = [u for u in local if _local(u).is_file()]
    if local and not found:
        return [f"{key}={pattern!r}: no shard matches (none of its {len(local)} file(s) exists, e.g. {local[0]}); "
                f"give the brace pattern of existing shards, e.g. 'shards/train-{{000000..000009}}.tar' "
                f"(make them with 'clipvip curate')"], len(urls)
    if len(found) < len(local):
        logger.warning("%s: %d of %d shard(s) do not exist and will be skipped, e.g. %s", key, len(local) - len(found),
                       len(local), next(u for u in local if u not in set(found)))
    return [], len(urls)


def checkpoint_dir_problems(key: str, path: str) -> list[str]:
    """A model folder (``config.json`` + ``model.safetensors``, as written by training) that is not there."""
    from model.convert import CONFIG_FILE, WEIGHTS_FILE

    folder = _local(path)
    if not folder.is_dir():
        return [f"{key}: model folder {path} does not exist; give a folder written by training "
                f"(<run_dir>/best or <run_dir>/checkpoints/step_N/model)"]
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        return [f"{key}: {path} is not a CLIP-ViP model folder (it lacks {', '.join(missing)}); give "
                f"<run_dir>/best or <run_dir>/checkpoints/step_N/model"]
    return []


def _init_problems(cfg: Any) -> list[str]:
    """``model.init``'s file or folder, for the kinds that name one (the prefix itself is
    :meth:`train.loop.ModelSection.init_problem`'s)."""
    key, spec = "model.init", cfg.model.init
    kind, where = cfg.model.init_source()
    if kind == "clipvip" and _is_local(where) and not _local(where).is_file():
        return [f"{key}={spec!r}: checkpoint file {where} does not exist; download the official CLIP-ViP weights "
                f"or point {key} at them"]
    if kind == "ckpt":
        return checkpoint_dir_problems(key, where)
    if kind == "hf" and where.startswith(("/", ".", "~")) and not _local(where).is_dir():
        return [f"{key}={spec!r}: {where} is not a folder; give a CLIP folder saved with save_pretrained or a hub id"]
    return []


def manifest_problems(key: str, path: str, dataset: str, video_root: str, *, evaluation: bool) -> list[str]:
    """A retrieval manifest that is missing or unreadable, or whose local videos are missing, named
    with the reason.

    An evaluation set must have every video: a missing one would change the benchmark, so it is
    refused (remove it from the manifest and say so when reporting). A training set may miss some
    (downloads of ActivityNet and the like often do): they are counted in a warning and skipped, and
    only a set with none of its videos is refused.
    """
    from common.errors import UserError
    from train.retrieval_data import load_manifest

    if _is_local(path) and not _local(path).is_file():
        return [f"{key}: manifest {path} does not exist; give a JSONL file with a video (or clip_name) and text "
                f"per row"]
    if video_root and _is_local(video_root) and not _local(video_root).is_dir():
        return [f"{key.rsplit('.', 1)[0]}.video_root: folder {video_root} does not exist"]
    try:
        entries = load_manifest(path, dataset, video_root)
    except (UserError, OSError) as exc:
        return [f"{key}: {exc}"]
    missing = [e.video for e in entries if _is_local(e.video) and not _local(e.video).is_file()]
    if missing and (evaluation or len(missing) == len(entries)):
        return [f"{key}: {len(missing)} of {len(entries)} videos of {path} do not exist, e.g. {missing[0]}; check "
                f"video_root{' or remove them from the manifest (and say so when reporting)' if evaluation else ''}"]
    if missing:
        logger.warning("%s: %d of %d videos do not exist (e.g. %s); training skips them", key, len(missing),
                       len(entries), missing[0])
    return []


def input_problems(cfg: Any, world_size: int) -> list[str]:
    """Inputs that are not where ``cfg`` (a :class:`train.loop.TrainConfig`, which calls this) says;
    outputs that cannot be written there."""
    p: list[str] = []
    run_dir = Path(cfg.run_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        p.append(f"run_dir={cfg.run_dir!r} is a file, not a folder; set run_dir=<a new or existing folder>")
    p += _init_problems(cfg)
    tok = cfg.model.tokenizer
    if tok.startswith(("/", ".", "~")) and not _local(tok).is_dir():
        p.append(f"model.tokenizer={tok!r}: folder does not exist; give a CLIP tokenizer folder or hub id")
    if cfg.task == "pretrain":
        if not cfg.data.shards:
            p.append("set data.shards=<brace pattern of the curated shards> (make them with 'clipvip synth' then "
                     "'clipvip curate')")
        else:
            found, n_shards = shard_problems("data.shards", cfg.data.shards)
            readers = cfg.data.readers_problem(n_shards, world_size) if n_shards else None
            p += found + ([readers] if readers and not found else [])
    elif cfg.task == "finetune":
        f = cfg.finetune
        if not f.manifest:
            p.append("set finetune.manifest=<train JSONL>")
        else:
            p += manifest_problems("finetune.manifest", f.manifest, f.dataset, f.video_root, evaluation=False)
    if cfg.eval.shards:
        p += shard_problems("eval.shards", cfg.eval.shards)[0]
    elif cfg.eval.manifest.manifest:
        m = cfg.eval.manifest
        p += manifest_problems("eval.manifest.manifest", m.manifest, m.dataset, m.video_root, evaluation=True)
    return p
