"""Retrieval metrics against ranks worked out by hand, DSL, several captions per video.

Run: .venv/bin/python -m pytest tests/model/test_metrics.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.metrics import dsl_similarity, evaluate_all, retrieval_metrics, retrieval_ranks

# 4 texts x 4 videos, text i belongs to video i.
SIM = np.array([
    [0.9, 0.1, 0.2, 0.3],  # text 0: own video best -> rank 1
    [0.8, 0.5, 0.7, 0.1],  # text 1: 0.8, 0.7 beat 0.5 -> rank 3
    [0.1, 0.2, 0.3, 0.4],  # text 2: 0.4 beats 0.3 -> rank 2
    [0.6, 0.6, 0.6, 0.2],  # text 3: three better -> rank 4
])


def test_one_caption_per_video_by_hand():
    m = retrieval_metrics(SIM)
    # t2v 1-based ranks: 1, 3, 2, 4
    assert m["t2v_r1"] == 25.0 and m["t2v_r5"] == 100.0 and m["t2v_r10"] == 100.0
    assert m["t2v_medr"] == 2.5 and m["t2v_meanr"] == 2.5
    # v2t: column 0 (0.9 best) -> 1; column 1 (0.5 vs 0.1, 0.2, 0.6) -> 2; column 2 (0.3 vs 0.2, 0.7, 0.6) -> 3;
    # column 3 (0.2 vs 0.3, 0.1, 0.4) -> 3
    assert m["v2t_r1"] == 25.0 and m["v2t_medr"] == 2.5 and m["v2t_meanr"] == pytest.approx(9 / 4)
    assert np.array_equal(retrieval_ranks(SIM)[1], [0, 1, 2, 2])


def test_several_captions_per_video():
    # 5 texts over 3 videos: texts 0,1 -> video 0; texts 2,3 -> video 1; text 4 -> video 2.
    sim = np.array([
        [0.2, 0.9, 0.1],  # text 0 -> video 0 ranks 2nd
        [0.8, 0.3, 0.4],  # text 1 -> video 0 ranks 1st
        [0.5, 0.6, 0.7],  # text 2 -> video 1 ranks 2nd
        [0.1, 0.0, 0.3],  # text 3 -> video 1 ranks 3rd
        [0.3, 0.2, 0.1],  # text 4 -> video 2 ranks 3rd
    ])
    t2v, v2t = retrieval_ranks(sim, [0, 0, 1, 1, 2], ties="optimistic")
    assert t2v.tolist() == [1, 0, 1, 2, 2]
    # v2t, video 0: best own caption 0.8 (text 1), nothing higher -> 0.
    # video 1: best own 0.6 (text 2); text 0 has 0.9 -> 1.  video 2: own 0.1; 0.4, 0.7, 0.3 higher -> 3.
    assert v2t.tolist() == [0, 1, 3]
    m = retrieval_metrics(torch.tensor(sim), np.array([0, 0, 1, 1, 2]), ties="optimistic")
    assert m["t2v_r1"] == pytest.approx(20.0) and m["v2t_r1"] == pytest.approx(100 / 3)
    assert m["t2v_medr"] == 2.0 and m["v2t_meanr"] == pytest.approx(1 + 4 / 3)
    # Video 2's 0.1 ties with text 0's 0.1: the official rule adds its next position too.
    t2v, v2t = retrieval_ranks(sim, [0, 0, 1, 1, 2])
    assert t2v.tolist() == [1, 0, 1, 2, 2] and v2t.tolist() == [0, 1, 3, 4]
    m = retrieval_metrics(torch.tensor(sim), np.array([0, 0, 1, 1, 2]))
    assert m["v2t_r1"] == 25.0 and m["v2t_meanr"] == 3.0


def test_dsl_is_softmax_over_texts_per_video():
    sim = np.array([[0.3, 0.1], [0.2, 0.25], [0.1, 0.0]])
    precise, official = dsl_similarity(sim, ties="optimistic"), dsl_similarity(sim)
    assert precise.dtype == np.float64 and official.dtype == np.float32
    for j in range(2):
        weights = np.exp(100 * sim[:, j]) / np.exp(100 * sim[:, j]).sum()
        np.testing.assert_allclose(precise[:, j], sim[:, j] * weights, rtol=1e-12)
        np.testing.assert_allclose(official[:, j], sim[:, j] * weights, rtol=1e-5)
    # DSL re-weights each video column by how much it prefers that text over all others.
    plain, dsl = retrieval_metrics(SIM), retrieval_metrics(SIM, dsl=True)
    expected = retrieval_metrics(dsl_similarity(SIM))
    assert dsl == expected and dsl != plain


def test_evaluate_all_from_features_and_errors():
    rng = np.random.default_rng(0)
    video = rng.normal(size=(6, 8))
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    text = video + 0.01 * rng.normal(size=(6, 8))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    m = evaluate_all(text, torch.tensor(video))
    assert m["t2v_r1"] == 100.0 and m["dsl_v2t_r1"] == 100.0 and m["dsl_t2v_medr"] == 1.0
    with pytest.raises(ValueError, match="have no text"):
        retrieval_metrics(SIM[:, :3].T[:, :4], [0, 1, 2])  # video 3 has no text
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(SIM, [0, 1, 2])


# Ties on purpose: text 0's own video ties with one other, text 1's with two, text 2's with one
# behind a better one, text 3 has none.
TIED = np.array([
    [0.5, 0.5, 0.1, 0.2],
    [0.3, 0.4, 0.4, 0.4],
    [0.2, 0.6, 0.2, 0.1],
    [0.9, 0.8, 0.7, 0.1],
])


def _official_compute_metrics(x: np.ndarray) -> dict[str, float]:
    """The official CLIP-ViP ``compute_metrics`` (utils/metrics.py), rewritten line by line."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    return {"R1": float(np.sum(ind == 0)) * 100 / len(ind), "R5": float(np.sum(ind < 5)) * 100 / len(ind),
            "R10": float(np.sum(ind < 10)) * 100 / len(ind), "MR": np.median(ind) + 1, "MeanR": np.mean(ind) + 1}


def test_ties_by_hand_both_rules():
    # t2v, official: text 0 -> positions 0, 1; text 1 -> 0, 1, 2; text 2 -> 1, 2 (0.6 better, 0.2 tied);
    # text 3 -> 3. Eight entries: [0, 1, 0, 1, 2, 1, 2, 3].
    t2v, v2t = retrieval_ranks(TIED)
    assert t2v.tolist() == [0, 1, 0, 1, 2, 1, 2, 3]
    # v2t: video 0 (0.5; 0.9 better) -> 1; video 1 (0.4; 0.5, 0.6, 0.8) -> 3; video 2 (0.2; 0.4, 0.7) -> 2;
    # video 3 (0.1; 0.2, 0.4 better, text 2's 0.1 tied) -> 2, 3.
    assert v2t.tolist() == [1, 3, 2, 2, 3]
    m = retrieval_metrics(TIED)
    assert (m["t2v_r1"], m["t2v_r5"], m["t2v_medr"], m["t2v_meanr"]) == (25.0, 100.0, 2.0, 2.25)
    assert (m["v2t_r1"], m["v2t_r5"], m["v2t_medr"], m["v2t_meanr"]) == (0.0, 100.0, 3.0, pytest.approx(3.2))
    # Optimistic: one entry per query, the best tied position.
    t2v, v2t = retrieval_ranks(TIED, ties="optimistic")
    assert t2v.tolist() == [0, 0, 1, 3] and v2t.tolist() == [1, 3, 2, 2]
    m = retrieval_metrics(TIED, ties="optimistic")
    assert (m["t2v_r1"], m["t2v_medr"], m["t2v_meanr"]) == (50.0, 1.5, 2.0)
    assert (m["v2t_r1"], m["v2t_medr"], m["v2t_meanr"]) == (0.0, 3.0, 3.0)
    assert retrieval_metrics(TIED) == retrieval_metrics(TIED, ties="official")
    with pytest.raises(ValueError, match="ties='best': choose one of"):
        retrieval_metrics(TIED, ties="best")


def test_official_rule_matches_official_code_on_quantised_scores():
    """Scores rounded to 2 decimals tie often; the default rule must give the official numbers."""
    rng = np.random.default_rng(0)
    sim = np.round(0.3 * np.eye(50) + rng.uniform(0, 0.7, size=(50, 50)), 2)
    ours = retrieval_metrics(sim)
    for prefix, x in (("t2v", sim), ("v2t", sim.T)):
        ref = _official_compute_metrics(x)
        assert ours[f"{prefix}_r1"] == pytest.approx(ref["R1"]) and ours[f"{prefix}_r5"] == pytest.approx(ref["R5"])
        assert ours[f"{prefix}_r10"] == pytest.approx(ref["R10"]) and ours[f"{prefix}_medr"] == ref["MR"]
        assert ours[f"{prefix}_meanr"] == pytest.approx(ref["MeanR"])
    assert retrieval_metrics(sim, ties="optimistic")["t2v_r1"] > ours["t2v_r1"]  # ties did occur
    # Without ties the two rules are the same numbers.
    exact = rng.normal(size=(30, 30))
    assert retrieval_metrics(exact) == retrieval_metrics(exact, ties="optimistic")
    assert retrieval_metrics(exact)["t2v_r1"] == pytest.approx(_official_compute_metrics(exact)["R1"])


def test_ties_with_several_captions_per_video():
    sim = np.array([
        [0.5, 0.5],  # text 0 -> video 0: tied with video 1 -> 0, 1
        [0.5, 0.2],  # text 1 -> video 0 -> 0
        [0.3, 0.3],  # text 2 -> video 1: tied with video 0 -> 0, 1
    ])
    t2v, v2t = retrieval_ranks(sim, [0, 0, 1])
    assert t2v.tolist() == [0, 1, 0, 0, 1]
    # Video 0's best caption scores 0.5, as does its other caption -> 0, 1. Video 1's (text 2) 0.3:
    # text 0's 0.5 is better -> 1.
    assert v2t.tolist() == [0, 1, 1]
    t2v, v2t = retrieval_ranks(sim, [0, 0, 1], ties="optimistic")
    assert t2v.tolist() == [0, 0, 0] and v2t.tolist() == [0, 1]


def test_non_finite_similarities_are_refused_with_their_count():
    sim = TIED.copy()
    sim[2, 2] = np.nan
    with pytest.raises(ValueError, match=r"similarities hold 1 non-finite values \(1 NaN, 0 inf\)"):
        retrieval_metrics(sim)
    # +inf: the official code drops the query (inf - inf is NaN, equal to nothing), a strict rank
    # counts it as a hit; -inf would rank last whatever the model thinks. Refused in both modes.
    sim = np.random.default_rng(1).normal(size=(6, 6))
    sim[1, 1], sim[3, 0], sim[4, 5] = np.inf, -np.inf, np.inf
    for ties in ("official", "optimistic"):
        with pytest.raises(ValueError, match=r"hold 3 non-finite values \(0 NaN, 3 inf\)"):
            retrieval_metrics(sim, ties=ties)
        with pytest.raises(ValueError, match=r"non-finite"):
            retrieval_metrics(sim, dsl=True, ties=ties)
    features = np.eye(6)
    features[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"non-finite values"):
        evaluate_all(features, np.eye(6))


def _official_dsl_float32(sim: np.ndarray) -> np.ndarray:
    """The official DSL in its float32 input dtype: ``sim * np_softmax(sim * 100, axis=0)``."""
    x = sim.astype(np.float32)
    y = x * np.float32(100)
    y = np.exp(y - y.max(axis=0, keepdims=True))
    return x * (y / y.sum(axis=0, keepdims=True))


def test_dsl_precise_mode_keeps_the_order_float32_loses():
    """Text 2 scores far below each video's best text. In float32 its DSL weights underflow to 0, so
    its whole row ties at 0; the float64 mode keeps the scores ordered and its own video ranks second,
    while the official mode gives the official (float32) numbers."""
    sim = np.array([
        [0.9, 0.0, 0.95],
        [0.0, 0.9, 0.95],
        [-0.2, -0.15, -0.1],
    ])
    ours = dsl_similarity(sim, ties="optimistic")
    # Hand formula in float64, column by column (softmax over texts, temperature 100).
    for j in range(3):
        w = np.exp(100 * (sim[:, j] - sim[:, j].max()))
        np.testing.assert_allclose(ours[:, j], sim[:, j] * w / w.sum(), rtol=1e-12)
    # Row 2, by hand: -0.2 e^-110, -0.15 e^-105, -0.1 e^-105 / 2 -> video 0 first, then 2, then 1.
    assert np.all(ours[2] < 0) and ours[2, 0] > ours[2, 2] > ours[2, 1]
    official = _official_dsl_float32(sim)
    assert np.all(official[2] == 0)
    assert np.array_equal(dsl_similarity(sim), official)
    m64 = retrieval_metrics(sim, dsl=True, ties="optimistic")
    assert m64["t2v_r1"] == pytest.approx(200 / 3) and m64["t2v_meanr"] == pytest.approx(4 / 3)  # ranks 0, 0, 1
    # float32 with the official tie rule: text 2 spreads over positions 0, 1, 2 -> [0, 0, 0, 1, 2].
    m32 = retrieval_metrics(sim, dsl=True)
    assert m32["t2v_r1"] == pytest.approx(60.0) and m32["t2v_meanr"] == pytest.approx(1.6)
    # and with the best tied rank, text 2 would count as a hit it is not.
    assert retrieval_metrics(official.astype(np.float64), ties="optimistic")["t2v_r1"] == 100.0
