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
    t2v, v2t = retrieval_ranks(sim, [0, 0, 1, 1, 2])
    assert t2v.tolist() == [1, 0, 1, 2, 2]
    # v2t, video 0: best own caption 0.8 (text 1), nothing higher -> 0.
    # video 1: best own 0.6 (text 2); text 0 has 0.9 -> 1.  video 2: own 0.1; 0.4, 0.7, 0.3 higher -> 3.
    assert v2t.tolist() == [0, 1, 3]
    m = retrieval_metrics(torch.tensor(sim), np.array([0, 0, 1, 1, 2]))
    assert m["t2v_r1"] == pytest.approx(20.0) and m["v2t_r1"] == pytest.approx(100 / 3)
    assert m["t2v_medr"] == 2.0 and m["v2t_meanr"] == pytest.approx(1 + 4 / 3)


def test_dsl_is_softmax_over_texts_per_video():
    sim = np.array([[0.3, 0.1], [0.2, 0.25], [0.1, 0.0]])
    got = dsl_similarity(sim)
    for j in range(2):
        weights = np.exp(100 * sim[:, j]) / np.exp(100 * sim[:, j]).sum()
        np.testing.assert_allclose(got[:, j], sim[:, j] * weights, rtol=1e-12)
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
