"""``ties="official"`` is the official CLIP-ViP evaluation end to end, precision included; the
precise mode is the exact cosine ranking. Both are checked on sets with duplicate features (the
same video or caption twice), where which exact ties survive depends on the arithmetic.

The reference for the official mode is the official code's evaluation rewritten line by line in
float32: ``validate`` (``np.dot`` of the gathered float32 features, ``np_softmax`` for DSL) and
``compute_metrics`` (``utils/metrics.py``). The reference for the precise mode is each similarity
summed exactly (``math.fsum`` of float64 products, correctly rounded).
Run: .venv/bin/python -m pytest tests/model/test_metrics_official.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.metrics import evaluate_all, retrieval_ranks


def _np_softmax(x: np.ndarray, theta: float = 1.0, axis: int | None = None) -> np.ndarray:
    """``utils/metrics.py np_softmax``, step by step."""
    y = np.atleast_2d(x)
    if axis is None:
        axis = next(j[0] for j in enumerate(y.shape) if j[1] > 1)
    y = y * float(theta)
    y = y - np.expand_dims(np.max(y, axis=axis), axis)
    y = np.exp(y)
    ax_sum = np.expand_dims(np.sum(y, axis=axis), axis)
    p = y / ax_sum
    if len(x.shape) == 1:
        p = p.flatten()
    return p


def _compute_metrics(x: np.ndarray) -> tuple[float, float, float, float, float]:
    """``utils/metrics.py compute_metrics``: every position equal to the diagonal value is a rank."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)
    d = d[:, np.newaxis]
    ind = sx - d
    ind = np.where(ind == 0)
    ind = ind[1]
    r1 = float(np.sum(ind == 0)) / len(ind)
    r5 = float(np.sum(ind < 5)) / len(ind)
    r10 = float(np.sum(ind < 10)) / len(ind)
    medr = np.median(ind) + 1
    meanr = np.mean(ind) + 1
    return r1, r5, r10, medr, meanr


def _official_validate(text_feats: np.ndarray, vis_feats: np.ndarray) -> dict[str, float]:
    """``validate`` of ``tasks/run_video_retrieval.py``: the features as the float32 arrays it
    gathers, ``cal_cossim``, then "simple" and "DSL" (which rescores the matrix in place)."""
    text_feats = np.vstack([text_feats.astype(np.float32)])
    vis_feats = np.vstack([vis_feats.astype(np.float32)])
    sim_matrix = np.dot(text_feats, vis_feats.T)  # cal_cossim
    out = {}
    for kind in ("simple", "DSL"):
        if kind == "DSL":
            sim_matrix = sim_matrix * _np_softmax(sim_matrix * 100, axis=0)
        prefix = "dsl_" if kind == "DSL" else ""
        for direction, x in (("v2t", sim_matrix.T), ("t2v", sim_matrix)):
            r1, r5, r10, medr, meanr = _compute_metrics(x)
            out.update({f"{prefix}{direction}_r1": 100 * r1, f"{prefix}{direction}_r5": 100 * r5,
                        f"{prefix}{direction}_r10": 100 * r10, f"{prefix}{direction}_medr": float(medr),
                        f"{prefix}{direction}_meanr": float(meanr)})
    return out


def _with_duplicates(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n (text, video) pairs, unit float32 features: every video appears twice (in random places),
    one text in ten is a copy of another text, and the texts are noisy copies of their videos."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n // 2, dim)).astype(np.float32)
    video = base[rng.permutation(np.arange(n) % (n // 2))]
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    text = video + 0.6 * rng.normal(size=video.shape).astype(np.float32)
    copies = rng.choice(n, size=n // 10, replace=False)
    text[copies] = text[rng.choice(n, size=n // 10)]
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return text, video


@pytest.mark.parametrize("n", [100, 1000])
def test_official_mode_is_the_official_evaluation_on_duplicate_features(n):
    text, video = _with_duplicates(n, 512, seed=n)
    want = _official_validate(text, video)
    # Features reach evaluate_all as torch tensors, as encode_eval_set produces them.
    got = evaluate_all(torch.from_numpy(text), torch.from_numpy(video))
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    # Ties did occur (the official list is longer than one entry per query), so the rule mattered.
    sim = np.dot(text, video.T)
    assert len(retrieval_ranks(sim)[0]) > n
    assert got["t2v_r1"] < evaluate_all(text, video, ties="optimistic")["t2v_r1"]


def _exact_similarity(text: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Each cosine similarity correctly rounded to float64 (the float32 inputs' products are exact)."""
    t, v = text.astype(np.float64), video.astype(np.float64)
    return np.array([[math.fsum(a * b) for b in v] for a in t])


def test_precise_mode_ranks_by_the_exact_similarities_on_duplicate_features():
    text, video = _with_duplicates(100, 128, seed=7)
    exact = _exact_similarity(text, video)
    # By hand from the exact matrix: a query's rank is the number of candidates scoring strictly more.
    t2v = (exact > np.diag(exact)[:, None]).sum(axis=1)
    v2t = (exact.T > np.diag(exact)[:, None]).sum(axis=1)
    got_t2v, got_v2t = retrieval_ranks(_exact_similarity(text, video), ties="optimistic")
    assert np.array_equal(got_t2v, t2v) and np.array_equal(got_v2t, v2t)
    m = evaluate_all(text, video, ties="optimistic")
    assert m["t2v_r1"] == pytest.approx(100 * np.mean(t2v == 0)) and m["t2v_meanr"] == pytest.approx(t2v.mean() + 1)
    assert m["v2t_r5"] == pytest.approx(100 * np.mean(v2t < 5)) and m["v2t_medr"] == np.median(v2t) + 1
    # Duplicate videos score exactly the same for every text, whatever the BLAS kernel does.
    from model.metrics import similarity

    sim = similarity(text, video, ties="optimistic")
    copies = [(i, j) for i in range(100) for j in range(i + 1, 100) if np.array_equal(video[i], video[j])]
    assert len(copies) == 50 and all(np.array_equal(sim[:, i], sim[:, j]) for i, j in copies)
