"""Encode-once retrieval evaluation: every video and every text goes through the model exactly once.

The loader yields ``{"video": float [B, T, C, S, S] (or uint8 clips), "texts": list per video}``;
texts are encoded in batches after the videos, ``text_to_video`` records which video each text
belongs to, and :func:`model.metrics.evaluate_all` reports both directions, with and without DSL.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from model.metrics import evaluate_all
from train.video import preprocess_on_device

logger = logging.getLogger(__name__)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; a no-op context otherwise."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_eval_set(model, batches: Iterable[dict[str, Any]], tokenizer, *, max_text_len: int, image_size: int,
                    device: torch.device, precision: str = "fp32", text_batch_size: int = 256,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text features [N_text, E], video features [N_video, E], text_to_video [N_text])."""
    from model.tokenizer import tokenize

    was_training = model.training
    model.eval()
    video_feats, texts, text_to_video = [], [], []
    for batch in batches:
        video = batch["video"]
        if isinstance(video, list):
            video = preprocess_on_device(video, image_size, device)
        with autocast_for(device, precision):
            feats = model.encode_video(video.to(device, non_blocking=True))
        start = sum(v.shape[0] for v in video_feats)
        for j, per_video in enumerate(batch["texts"]):
            texts += list(per_video)
            text_to_video += [start + j] * len(per_video)
        video_feats.append(feats.float().cpu())
    text_feats = []
    for i in range(0, len(texts), text_batch_size):
        tok = tokenize(tokenizer, texts[i:i + text_batch_size], max_text_len)
        with autocast_for(device, precision):
            feats = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device))
        text_feats.append(feats.float().cpu())
    model.train(was_training)
    if not video_feats:
        raise UserError("the evaluation set yielded no videos: every sample was missing or undecodable (see the "
                        "warnings above); check the evaluation manifest or shards")
    return (torch.cat(text_feats).numpy(), torch.cat(video_feats).numpy(), np.asarray(text_to_video))


def evaluate_retrieval(model, batches: Iterable[dict[str, Any]], tokenizer, *, ties: str = "official",
                       **kw) -> dict[str, float]:
    """R@1/5/10, MdR, MnR for t2v and v2t, plain and ``dsl_``-prefixed, plus the set sizes.
    ``ties``: how exact score ties rank (:mod:`model.metrics`)."""
    text, video, t2v = encode_eval_set(model, batches, tokenizer, **kw)
    metrics = evaluate_all(text, video, t2v, ties=ties)
    metrics.update(n_videos=int(video.shape[0]), n_texts=int(text.shape[0]))
    return metrics


def format_metrics(m: dict[str, float]) -> str:
    """One line per direction and scoring, in the paper's column order."""
    lines = []
    for prefix, name in (("", "plain"), ("dsl_", "DSL")):
        for d in ("t2v", "v2t"):
            k = f"{prefix}{d}"
            if f"{k}_r1" in m:
                lines.append(f"{d} {name:5s} R@1 {m[k + '_r1']:5.1f}  R@5 {m[k + '_r5']:5.1f}  R@10 {m[k + '_r10']:5.1f}"
                             f"  MdR {m[k + '_medr']:6.1f}  MnR {m[k + '_meanr']:7.1f}")
    return "\n".join(lines)
