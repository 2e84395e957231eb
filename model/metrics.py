"""Text-video retrieval metrics: R@1/5/10, median and mean rank, with and without DSL.

Recall@K is the fraction of queries whose ground truth ranks in the top K, and MdR / MnR summarise
the whole rank distribution (MdR is robust to a few hopeless queries, MnR is not): together they
are the numbers every text-video retrieval paper reports, so results compare directly.

Ranks are 0-based internally (1-based in MdR/MnR) and exact ties follow one of two rules:

- ``"official"`` (default): the rule of the official CLIP-ViP ``compute_metrics``, which sorts each
  query's scores and records every position holding a score equal to the ground truth's. A query
  whose ground truth ties with m other candidates contributes m + 1 entries (its rank r up to
  r + m), and R@K, MdR and MnR are taken over that enlarged list. Use it to compare with papers.
- ``"optimistic"``: one entry per query, rank = number of strictly better candidates (the best
  tied position).

On real float similarities the two agree; they part on quantised or low-precision scores (fp16,
rounded, or a float32 DSL that underflowed), where ties are common and the official rule scores
lower.

Several captions per video are handled directly: text->video ranks the text's own video among all
videos; video->text ranks the video's best-scoring caption among all texts (ties: every text scoring
the same as that caption, the video's other captions included). The official code only handles one
text per video; on such a square matrix the ``"official"`` rule reproduces it exactly. R@K values are
percentages, as in the paper's tables.

Similarities must not hold NaN: the official code silently drops a query whose ground truth is
NaN, and a strict-inequality rank would count it as a hit. Both are wrong, so NaN is refused.
"""

from __future__ import annotations

import numpy as np
import torch

DSL_TEMPERATURE = 100.0  # fixed, not the learned logit scale
TIE_RULES = ("official", "optimistic")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def dsl_similarity(sim) -> np.ndarray:
    """Dual softmax at inference: ``sim * softmax(100 * sim)`` over the TEXT axis (axis 0) of [N_text, N_video].

    Computed in float64 on purpose, where the official code works in the input dtype (float32).
    With the fixed temperature of 100, a text scoring more than about 0.87 below a video's best
    text gets a float32 weight below the normal range (few significant bits left, so near scores
    collide) and past about 1.03 exactly 0: such texts tie at 0 and the tie rule, not the model,
    orders them. float64 keeps full precision up to a gap of about 7, which cosine similarities
    (span at most 2) never reach, so every score keeps its order. On ordinary similarity ranges
    the two agree to float32 precision.
    """
    sim = _as_numpy(sim)
    z = DSL_TEMPERATURE * sim
    z = np.exp(z - z.max(axis=0, keepdims=True))
    return sim * (z / z.sum(axis=0, keepdims=True))


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """ranks: 0-based rank entries of the ground truths (see ``retrieval_ranks``)."""
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.median(ranks) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"ties={ties!r}: choose one of {TIE_RULES} ('official' reproduces the official "
                         "compute_metrics, for comparison with papers)")


def _expand(better: np.ndarray, tied: np.ndarray, ties: str) -> np.ndarray:
    """Rank entries from each query's count of strictly better and of equal other candidates."""
    if ties == "optimistic":
        return better
    counts = tied + 1  # entries per query: its rank r and the m tied positions after it
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(better, counts) + (np.arange(int(counts.sum())) - first)


def retrieval_ranks(sim, text_to_video=None, ties: str = "official") -> tuple[np.ndarray, np.ndarray]:
    """0-based ground-truth rank entries: (t2v, v2t).

    With ``ties="optimistic"`` there is one entry per query (t2v per text [N_text], v2t per video
    [N_video]). With ``ties="official"`` a query whose ground truth ties with m other candidates
    adds the m + 1 entries r, r+1, ..., r+m, queries in order: the list the official
    ``compute_metrics`` averages over.

    Args:
        sim: similarities [N_text, N_video].
        text_to_video: the video index of each text (default: text i belongs to video i).
        ties: ``"official"`` or ``"optimistic"`` (see the module docstring).
    """
    _check_ties(ties)
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
    if np.isnan(sim).any():
        raise ValueError(f"similarities hold {int(np.isnan(sim).sum())} NaN values: the features are broken "
                         "(a NaN score has no rank)")
    gt = sim[np.arange(n_text), t2v]  # [N_text], each text's score with its own video
    t2v_ranks = _expand((sim > gt[:, None]).sum(axis=1), (sim == gt[:, None]).sum(axis=1) - 1, ties)
    # v2t: the video's best caption score; its rank counts texts that score strictly higher.
    best = np.full(n_video, -np.inf)
    np.maximum.at(best, t2v, gt)
    v2t_ranks = _expand((sim > best[None, :]).sum(axis=0), (sim == best[None, :]).sum(axis=0) - 1, ties)
    return t2v_ranks, v2t_ranks


def retrieval_metrics(sim, text_to_video=None, dsl: bool = False, ties: str = "official") -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR (1-based) for ``t2v_*`` and ``v2t_*``.

    Args:
        sim: cosine similarities [N_text, N_video] (numpy or torch).
        text_to_video: video index of each text; default ``arange`` (one text per video).
        dsl: rescore with :func:`dsl_similarity` first.
        ties: ``"official"`` (the official code's rule, default) or ``"optimistic"``.
    """
    _check_ties(ties)
    sim = dsl_similarity(sim) if dsl else _as_numpy(sim)
    t2v, v2t = retrieval_ranks(sim, text_to_video, ties)
    return {**_summary(t2v, "t2v"), **_summary(v2t, "v2t")}


def evaluate_all(text_feats, video_feats, text_to_video=None, ties: str = "official") -> dict[str, float]:
    """Plain and DSL metrics from L2-normalised features; DSL keys carry a ``dsl_`` prefix."""
    text, video = _as_numpy(text_feats), _as_numpy(video_feats)
    sim = text @ video.T
    out = retrieval_metrics(sim, text_to_video, ties=ties)
    out.update({f"dsl_{k}": v for k, v in retrieval_metrics(sim, text_to_video, dsl=True, ties=ties).items()})
    return out
