"""Text-video retrieval metrics: R@1/5/10, median and mean rank, with and without DSL (spec 6-7).

Recall@K is the fraction of queries whose ground truth ranks in the top K, and MdR / MnR summarise
the whole rank distribution (MdR is robust to a few hopeless queries, MnR is not): together they
are the numbers every text-video retrieval paper reports, so results compare directly.

Ranks are 1-based and optimistic on exact ties (rank = 1 + number of strictly better candidates),
which is what the official ``compute_metrics`` computes. Several captions per video are handled
directly: text->video ranks the text's own video among all videos; video->text takes the best rank
among the video's captions. R@K values are percentages, as in the paper's tables.
"""

from __future__ import annotations

import numpy as np
import torch

DSL_TEMPERATURE = 100.0  # fixed, not the learned logit scale (spec section 6)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def dsl_similarity(sim) -> np.ndarray:
    """Dual softmax at inference: ``sim * softmax(100 * sim)`` over the TEXT axis (axis 0) of [N_text, N_video]."""
    sim = _as_numpy(sim)
    z = DSL_TEMPERATURE * sim
    z = np.exp(z - z.max(axis=0, keepdims=True))
    return sim * (z / z.sum(axis=0, keepdims=True))


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """ranks: 0-based ranks of each query's ground truth."""
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.median(ranks) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


def retrieval_ranks(sim, text_to_video=None) -> tuple[np.ndarray, np.ndarray]:
    """0-based ground-truth ranks: (t2v per text [N_text], v2t per video [N_video]).

    Args:
        sim: similarities [N_text, N_video].
        text_to_video: the video index of each text (default: text i belongs to video i).
    """
    sim = _as_numpy(sim)
    n_text, n_video = sim.shape
    t2v = np.arange(n_text) if text_to_video is None else np.asarray(text_to_video, dtype=np.int64)
    if t2v.shape != (n_text,) or (n_text and (t2v.min() < 0 or t2v.max() >= n_video)):
        raise ValueError(f"text_to_video must hold {n_text} video indices in [0, {n_video}), got shape "
                         f"{t2v.shape}")
    counts = np.bincount(t2v, minlength=n_video)
    if (counts == 0).any():
        raise ValueError(f"videos {np.flatnonzero(counts == 0)[:10].tolist()} have no text: drop them from sim or "
                         f"fix text_to_video")
    gt = sim[np.arange(n_text), t2v]  # [N_text], each text's score with its own video
    t2v_ranks = (sim > gt[:, None]).sum(axis=1)
    # v2t: the video's best caption score; its rank counts texts that score strictly higher.
    best = np.full(n_video, -np.inf)
    np.maximum.at(best, t2v, gt)
    v2t_ranks = (sim > best[None, :]).sum(axis=0)
    return t2v_ranks, v2t_ranks


def retrieval_metrics(sim, text_to_video=None, dsl: bool = False) -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR (1-based) for ``t2v_*`` and ``v2t_*``.

    Args:
        sim: cosine similarities [N_text, N_video] (numpy or torch).
        text_to_video: video index of each text; default ``arange`` (one text per video).
        dsl: rescore with :func:`dsl_similarity` first.
    """
    sim = dsl_similarity(sim) if dsl else _as_numpy(sim)
    t2v, v2t = retrieval_ranks(sim, text_to_video)
    return {**_summary(t2v, "t2v"), **_summary(v2t, "v2t")}


def evaluate_all(text_feats, video_feats, text_to_video=None) -> dict[str, float]:
    """Plain and DSL metrics from L2-normalised features; DSL keys carry a ``dsl_`` prefix."""
    text, video = _as_numpy(text_feats), _as_numpy(video_feats)
    sim = text @ video.T
    out = retrieval_metrics(sim, text_to_video)
    out.update({f"dsl_{k}": v for k, v in retrieval_metrics(sim, text_to_video, dsl=True).items()})
    return out
