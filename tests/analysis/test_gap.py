"""K-means backends and the NMI gap metric (analysis/kmeans.py, analysis/gap.py) on arrays built here.

Run: ``.venv/bin/python -m pytest tests/analysis/test_gap.py -q``.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.gap import contingency, domain_gap, nmi_score, project_2d, spread
from analysis.kmeans import ClusterConfig, kmeans

BACKENDS = ["faiss", "sklearn"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _corpus(rng: np.random.Generator, center: np.ndarray, n: int, noise: float) -> np.ndarray:
    return _unit(center + noise * rng.standard_normal((n, center.size)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_separable_corpora_give_nmi_one(backend):
    rng = np.random.default_rng(0)
    d = 32
    a = _corpus(rng, np.eye(d)[0] * 5, 300, 0.5)
    b = _corpus(rng, np.eye(d)[1] * 5, 200, 0.5)
    score = domain_gap([a, b], seed=0, cfg=ClusterConfig(backend=backend))
    assert score.nmi == pytest.approx(1.0)
    # Each cluster holds exactly one corpus.
    assert sorted(score.counts.max(axis=1).tolist()) == [200, 300] and score.counts.min() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_halves_of_one_corpus_give_nmi_near_zero(backend):
    rng = np.random.default_rng(1)
    # One corpus with real structure (two topics), split into two random halves.
    x = np.concatenate([_corpus(rng, np.eye(16)[0] * 3, 400, 1.0), _corpus(rng, np.eye(16)[1] * 3, 400, 1.0)])
    perm = rng.permutation(len(x))
    values = [domain_gap([x[perm[:400]], x[perm[400:]]], seed=s, cfg=ClusterConfig(backend=backend)).nmi
              for s in range(3)]
    assert max(values) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_seeded_runs_reproduce(backend):
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((500, 24)))  # no structure: the start decides the split
    cfg = ClusterConfig(backend=backend, restarts=2)
    a, b = kmeans(x, 3, seed=7, cfg=cfg), kmeans(x, 3, seed=7, cfg=cfg)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.inertia == b.inertia and a.backend.startswith(backend[:5])
    assert set(np.unique(a.labels)) == {0, 1, 2}


def test_backends_agree_on_overlapping_corpora():
    rng = np.random.default_rng(3)
    a = _corpus(rng, np.eye(16)[0] * 1.0, 400, 1.0)
    b = _corpus(rng, np.eye(16)[1] * 1.0, 400, 1.0)
    f = domain_gap([a, b], seed=0, cfg=ClusterConfig(backend="faiss")).nmi
    s = domain_gap([a, b], seed=0, cfg=ClusterConfig(backend="sklearn")).nmi
    assert 0.05 < s < 0.95 and abs(f - s) < 0.02


def test_nmi_and_contingency_basics():
    corpus = np.array([0, 0, 0, 1, 1, 1])
    assert nmi_score(corpus, np.array([1, 1, 1, 0, 0, 0])) == pytest.approx(1.0)  # ids need no matching
    assert nmi_score(corpus, np.array([0, 1, 0, 1, 0, 1])) < 0.1
    np.testing.assert_array_equal(contingency(corpus, np.array([1, 1, 0, 0, 0, 0]), 2, 2), [[1, 3], [2, 0]])


def test_joint_view_with_k_equal_to_corpora():
    rng = np.random.default_rng(4)
    embs = [_corpus(rng, np.eye(8)[i] * 6, 100, 0.3) for i in range(4)]
    score = domain_gap(embs, seed=0)
    assert score.k == 4 and score.counts.shape == (4, 4) and score.nmi == pytest.approx(1.0)


def test_spread_and_projection():
    sp = spread([0.2, 0.4])
    assert (sp.mean, sp.std, sp.min, sp.max) == pytest.approx((0.3, 0.1, 0.2, 0.4))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 10)) * np.array([5, 3] + [0.1] * 8)
    p = project_2d(x)
    assert p.shape == (50, 2)
    np.testing.assert_allclose(p, project_2d(x))
    assert np.var(p[:, 0]) > np.var(p[:, 1]) > 1.0  # the two high-variance axes survive


def test_bad_cluster_settings():
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k=6 on 5 points"):
        kmeans(x, 6, seed=0)
    with pytest.raises(ValueError, match="restarts=0"):
        kmeans(x, 2, seed=0, cfg=ClusterConfig(restarts=0))
    with pytest.raises(ValueError, match="unknown K-means backend 'scipy'"):
        kmeans(x, 2, seed=0, cfg=ClusterConfig(backend="scipy"))
