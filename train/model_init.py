"""The run's tokenizer and model, per ``model.tokenizer`` and ``model.init``, refused in one line
(:class:`ModelInitError`) when they cannot give this run a model: a hub id while the hub is
offline, a missing folder, a tokenizer that does not fit or is not the one the model was trained
with."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from common.errors import UserError
from train.loop import Runtime, TrainConfig

logger = logging.getLogger(__name__)


class ModelInitError(UserError):
    """``model.init`` or ``model.tokenizer`` that cannot give this run a model; the message says why."""


def hub_hint(spec: str) -> str:
    """How to get ``spec`` (a hub id) onto a machine without hub access, for an error message."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True", "ON", "on", "yes"):
        return "a folder saved with save_pretrained or a hub id reachable from here"
    return (f"the Hugging Face hub is off here (HF_HUB_OFFLINE=1, clipvip's default) and its cache holds no copy of "
            f"{spec!r}; save it once where there is network (python -c \"from transformers import CLIPModel, "
            f"CLIPTokenizerFast; [c.from_pretrained('{spec}').save_pretrained('clip') for c in (CLIPModel, "
            f"CLIPTokenizerFast)]\"), then set model.init=hf:<that folder> model.tokenizer=<that folder> "
            "(or HF_HUB_OFFLINE=0 to download here)")


def load_configured_tokenizer(cfg: TrainConfig):
    """``model.tokenizer``, or :class:`ModelInitError` naming it (a missing folder, an unreachable hub id)."""
    from model.tokenizer import load_tokenizer

    try:
        return load_tokenizer(cfg.model.tokenizer)
    except (OSError, ValueError) as exc:
        local = cfg.model.tokenizer.startswith(("/", ".", "~")) or Path(cfg.model.tokenizer).exists()
        raise ModelInitError(f"model.tokenizer={cfg.model.tokenizer!r}: "
                             + (str(exc) if local else hub_hint(cfg.model.tokenizer))) from exc


def tokenizer_of(init: str) -> str:
    """Where the tokenizer of a ``ckpt:`` model folder written by training is, or "" when unknown.

    A model folder is ``<run_dir>/best`` or ``<run_dir>/checkpoints/step_N/model``; its run's
    ``config.json`` names the tokenizer, or the run trained one into ``<run_dir>/tokenizer``.
    """
    kind, _, where = init.partition(":")
    if kind != "ckpt":
        return ""
    folder = Path(where).expanduser()
    for run_dir in (folder.parent, folder.parent.parent.parent):
        config = run_dir / "config.json"
        if config.is_file():
            try:
                named = json.loads(config.read_text()).get("model", {}).get("tokenizer", "")
            except (ValueError, AttributeError):
                named = ""
            if named:
                return named
            if (run_dir / "tokenizer" / "vocab.json").is_file():
                return str(run_dir / "tokenizer")
    return ""


def build_tokenizer(cfg: TrainConfig, rt: Runtime, run_dir: Path):
    """The configured tokenizer; with none configured, a small BPE learnt from the training texts."""
    from model.tokenizer import load_tokenizer, train_clip_bpe

    if cfg.model.tokenizer:
        return load_configured_tokenizer(cfg)
    out = run_dir / "tokenizer"
    if rt.rank == 0 and not (out / "vocab.json").is_file():
        logger.warning("model.tokenizer is empty: training a small BPE on the training texts (debug runs only; "
                       "real runs use the CLIP checkpoint's tokenizer)")
        from train.tasks import get_task

        train_clip_bpe(get_task(cfg).texts(cfg), out, num_merges=300)
    if rt.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    return load_tokenizer(str(out))


def check_tokenizer_fits(model, tokenizer, setting: str, right: str = "") -> None:
    """Refuse a tokenizer whose ids the model's text embedding cannot take; ``setting`` names where
    the user chose it, ``right`` the tokenizer the model was trained with when it is known."""
    if model.config.eot_token_id != tokenizer.eos_token_id or model.config.vocab_size < len(tokenizer):
        raise ModelInitError(f"{setting}: the tokenizer (eos {tokenizer.eos_token_id}, {len(tokenizer)} tokens) does "
                             f"not fit the model (eot {model.config.eot_token_id}, vocab {model.config.vocab_size}); "
                             + (f"give the one it was trained with: {setting}={right}" if right
                                else "give the checkpoint's tokenizer"))


def check_same_tokenizer(tokenizer, given: str, right: str) -> None:
    """Refuse a tokenizer whose vocabulary differs from the one the model was trained with (``right``,
    when known): it can fit the embedding's size and still map every word to another row."""
    if not right or not given or Path(given).expanduser().resolve() == Path(right).expanduser().resolve():
        return
    from model.tokenizer import load_tokenizer

    try:
        trained = load_tokenizer(right)
    except (OSError, ValueError):  # not readable here (a hub id offline): the size check above is all we have
        return
    if trained.get_vocab() != tokenizer.get_vocab():
        raise ModelInitError(f"model.tokenizer={given!r} is not the tokenizer model.init was trained with (another "
                             f"vocabulary, so every word would map to another embedding); set model.tokenizer={right}")


def build_model(cfg: TrainConfig, tokenizer):
    """Random (flavour), HF CLIP, official CLIP-ViP or our own checkpoint, per ``model.init``."""
    from model.clip_vip import CLIPViP, get_config
    from model.convert import HeadCountError, from_hf_clip, load_checkpoint, load_official_clipvip

    init, m = cfg.model.init, cfg.model
    kind, where = m.init_source()
    if not init:
        extra = {"temporal_init_std": m.temporal_init_std}
        if m.logit_scale_init is not None:
            extra["logit_scale_init"] = m.logit_scale_init
        model = CLIPViP(get_config(m.flavour, vocab_size=len(tokenizer), eot_token_id=tokenizer.eos_token_id,
                                   attention=m.attention, **extra))
    elif m.init_problem():
        raise ModelInitError(m.init_problem())
    else:
        try:
            if kind == "hf":
                try:
                    model = from_hf_clip(where, attention=m.attention)
                except OSError as exc:
                    local = where.startswith(("/", ".", "~")) or Path(where).exists()
                    raise ModelInitError(f"model.init={init!r}: {exc if local else hub_hint(where)}") from exc
            elif kind == "clipvip":
                model, _ = load_official_clipvip(where, clip_config=m.clip_config or None)
            else:
                model = load_checkpoint(where)
        except HeadCountError as exc:
            raise ModelInitError(f"model.init={init!r}: {exc.detail}; set model.clip_config=<the transformers CLIP "
                                 "config.json it was built from>") from exc
        except ModelInitError:
            raise
        except UserError as exc:  # the loaders name the file and what is wrong with it
            raise ModelInitError(f"model.init={init!r}: {exc}") from exc
    right = tokenizer_of(init)
    check_tokenizer_fits(model, tokenizer, "model.tokenizer", right)
    check_same_tokenizer(tokenizer, cfg.model.tokenizer, right)
    model.gradient_checkpointing = m.gradient_checkpointing
    return model
