"""Text-video retrieval metrics: R@1/5/10, median and mean rank, with and without DSL.

Recall@K is the fraction of queries whose ground truth ranks in the top K, and MdR / MnR summarise
the whole rank distribution (MdR is robust to a few hopeless queries, MnR is not): together they
are the numbers every text-video retrieval paper reports, so results compare directly.

Ranks are 0-based internally (1-based in MdR/MnR). Two modes, each a whole recipe (precision of the
similarities and of DSL, and the rule for exact ties), chosen with ``ties``:

- ``"official"`` (default) equals the official CLIP-ViP evaluation end to end: the features as
  float32 arrays, ``sim = np.dot(text, video.T)`` in float32 (``validate`` in
  ``tasks/run_video_retrieval.py``), DSL as ``sim * np_softmax(sim * 100, axis=0)`` in float32, and
  ``compute_metrics``' tie rule: each query's scores are sorted and every position holding a score
  equal to the ground truth's is recorded, so a query whose ground truth ties with m other
  candidates contributes the m + 1 entries r, r+1, ..., r+m, and R@K, MdR and MnR are taken over
  that enlarged list. Given the features the official code would have gathered, the numbers are
  the official ones, ties included: which exact ties survive a float32 product (of duplicate
  features, say) depends on the BLAS kernel, and this mode runs the very same product. A
  similarity matrix passed in is rounded to float32 first, as the official matrix is float32. Use
  it to compare with papers.
- ``"optimistic"`` is the precise mode: similarities and DSL in float64, rows of identical features
  scored once (so duplicates tie exactly whatever the BLAS kernel does), and one entry per query at
  rank = the number of candidates scoring strictly higher (the best tied position). It equals
  ranking by the exact cosine similarities up to float64 rounding (about 1e-16 relative), and by
  the exact DSL scores, which float32 cannot hold for texts far below a video's best (below).

On real-valued features without duplicates the two give the same numbers; they part on exact ties
(duplicate videos or captions, quantised or low-precision scores), where the official rule scores
lower, and on DSL where float32 underflows.

Several captions per video are handled directly: text->video ranks the text's own video among all
videos; video->text ranks the video's best-scoring caption among all texts (ties: every text scoring
the same as that caption, the video's other captions included). The official code only handles one
text per video; on such a square matrix ``"official"`` is its computation. R@K values are
percentages, as in the paper's tables.

Similarities must be finite: the official code silently drops a query whose ground truth is NaN
(NaN equals nothing) or +inf (its sorted difference is inf - inf = NaN), and a strict-inequality
rank would count such a query as a hit. Both are wrong, so non-finite similarities are refused,
naming how many there are.
"""

from __future__ import annotations

import numpy as np
import torch

DSL_TEMPERATURE = 100.0  # fixed, not the learned logit scale
TIE_RULES = ("official", "optimistic")


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"ties={ties!r}: choose one of {TIE_RULES} ('official' reproduces the official "
                         "evaluation, for comparison with papers)")


def _as_numpy(x, ties: str) -> np.ndarray:
    """``x`` as a C-ordered array in the mode's precision: float32 for ``"official"``, else float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32 if ties == "official" else np.float64)


def _check_finite(sim: np.ndarray, what: str = "similarities") -> None:
    bad = ~np.isfinite(sim)
    if bad.any():
        nan = int(np.isnan(sim).sum())
        raise ValueError(f"{what} hold {int(bad.sum())} non-finite values ({nan} NaN, {int(bad.sum()) - nan} inf): "
                         "the features are broken (a non-finite score has no rank)")


def _unique_product(text: np.ndarray, video: np.ndarray) -> np.ndarray:
    """``text @ video.T`` in which identical rows of either side get identical scores: the product is
    taken over the unique rows and spread back, so no BLAS blocking can split an exact tie."""
    text_u, text_at = np.unique(text, axis=0, return_inverse=True)
    video_u, video_at = np.unique(video, axis=0, return_inverse=True)
    return np.dot(text_u, video_u.T)[text_at.reshape(-1)][:, video_at.reshape(-1)]


def similarity(text_feats, video_feats, ties: str = "official") -> np.ndarray:
    """``[N_text, N_video]`` similarities of (L2-normalised) features, in the mode's precision.

    ``"official"``: ``np.dot(text, video.T)`` on float32 C-ordered arrays, the official code's call.
    ``"optimistic"``: float64, identical rows scored once (see the module docstring).
    """
    _check_ties(ties)
    text, video = _as_numpy(text_feats, ties), _as_numpy(video_feats, ties)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite features are refused by name later
        if ties == "official":
            return np.dot(text, video.T)
        return _unique_product(text, video)


def dsl_similarity(sim, ties: str = "official") -> np.ndarray:
    """Dual softmax at inference: ``sim * softmax(100 * sim)`` over the TEXT axis (axis 0) of [N_text, N_video].

    ``"official"``: in float32, step by step as the official ``np_softmax`` (scale, subtract the
    column maximum, exponentiate, divide by the column sum), so its roundings are the official ones.
    ``"optimistic"``: in float64. With the fixed temperature of 100, a text scoring more than about
    0.87 below a video's best text gets a float32 weight below the normal range (few significant
    bits left, so near scores collide) and past about 1.03 exactly 0: such texts tie at 0 and the
    tie rule, not the model, orders them. float64 keeps full precision up to a gap of about 7, which
    cosine similarities (span at most 2) never reach, so every score keeps its order. On ordinary
    similarity ranges the two agree to float32 precision.
    """
    _check_ties(ties)
    sim = _as_numpy(sim, ties)
    _check_finite(sim)
    z = sim * sim.dtype.type(DSL_TEMPERATURE)
    z = np.exp(z - np.expand_dims(np.max(z, axis=0), 0))
    return sim * (z / np.expand_dims(np.sum(z, axis=0), 0))


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """ranks: 0-based rank entries of the ground truths (see ``retrieval_ranks``)."""
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.median(ranks) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


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
        sim: similarities [N_text, N_video] (compared in float32 for ``"official"``, float64 otherwise).
        text_to_video: the video index of each text (default: text i belongs to video i).
        ties: ``"official"`` or ``"optimistic"`` (see the module docstring).
    """
    _check_ties(ties)
    sim = _as_numpy(sim, ties)
    n_text, n_video = sim.shape
    t2v = np.arange(n_text) if text_to_video is None else np.asarray(text_to_video, dtype=np.int64)
    if t2v.shape != (n_text,) or (n_text and (t2v.min() < 0 or t2v.max() >= n_video)):
        raise ValueError(f"text_to_video must hold {n_text} video indices in [0, {n_video}), got shape "
                         f"{t2v.shape}")
    counts = np.bincount(t2v, minlength=n_video)
    if (counts == 0).any():
        raise ValueError(f"videos {np.flatnonzero(counts == 0)[:10].tolist()} have no text: drop them from sim or "
                         f"fix text_to_video")
    _check_finite(sim)
    gt = sim[np.arange(n_text), t2v]  # [N_text], each text's score with its own video
    t2v_ranks = _expand((sim > gt[:, None]).sum(axis=1), (sim == gt[:, None]).sum(axis=1) - 1, ties)
    # v2t: the video's best caption score; its rank counts texts that score strictly higher.
    best = np.full(n_video, -np.inf, dtype=sim.dtype)
    np.maximum.at(best, t2v, gt)
    v2t_ranks = _expand((sim > best[None, :]).sum(axis=0), (sim == best[None, :]).sum(axis=0) - 1, ties)
    return t2v_ranks, v2t_ranks


def retrieval_metrics(sim, text_to_video=None, dsl: bool = False, ties: str = "official") -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR (1-based) for ``t2v_*`` and ``v2t_*``.

    Args:
        sim: cosine similarities [N_text, N_video] (numpy or torch).
        text_to_video: video index of each text; default ``arange`` (one text per video).
        dsl: rescore with :func:`dsl_similarity` first (in the mode's precision).
        ties: ``"official"`` (the official evaluation, default) or ``"optimistic"`` (float64, best tied rank).
    """
    _check_ties(ties)
    sim = dsl_similarity(sim, ties) if dsl else sim
    t2v, v2t = retrieval_ranks(sim, text_to_video, ties)
    return {**_summary(t2v, "t2v"), **_summary(v2t, "v2t")}


def evaluate_all(text_feats, video_feats, text_to_video=None, ties: str = "official") -> dict[str, float]:
    """Plain and DSL metrics from L2-normalised features; DSL keys carry a ``dsl_`` prefix.

    With ``ties="official"`` these are the numbers of the official evaluation on the same features
    (float32 product, float32 DSL, its tie rule); ``"optimistic"`` is the float64 mode (see the
    module docstring).
    """
    sim = similarity(text_feats, video_feats, ties)
    out = retrieval_metrics(sim, text_to_video, ties=ties)
    out.update({f"dsl_{k}": v for k, v in retrieval_metrics(sim, text_to_video, dsl=True, ties=ties).items()})
    return out
