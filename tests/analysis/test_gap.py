"""K-means backends and the NMI gap metric (analysis/kmeans.py, analysis/gap.py) on arrays built here.

Run: ``.venv/bin/python -m pytest tests/analysis/test_gap.py -q``.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.gap import (bootstrap_nmi, contingency, domain_gap, nmi_from_counts, nmi_score, pca_2d, project_2d,
                          spread)
from analysis.kmeans import ClusterConfig, kmeans

BACKENDS = ["numpy", "faiss", "sklearn"]


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
    values = {be: domain_gap([a, b], seed=0, cfg=ClusterConfig(backend=be)).nmi for be in BACKENDS}
    assert 0.05 < values["sklearn"] < 0.95
    assert max(values.values()) - min(values.values()) < 0.02, values


@pytest.mark.parametrize("k,blobs", [(2, 4), (5, 5)])
def test_numpy_kmeans_reaches_sklearn_inertia(k, blobs):
    rng = np.random.default_rng(6)
    centres = rng.standard_normal((blobs, 24)) * 1.5
    x = _unit(np.concatenate([c + rng.standard_normal((150, 24)) for c in centres]))
    ours = kmeans(x, k, seed=0, cfg=ClusterConfig(backend="numpy"))
    ref = kmeans(x, k, seed=0, cfg=ClusterConfig(backend="sklearn", max_iter=300))
    assert ours.backend == "numpy" and set(np.unique(ours.labels)) == set(range(k))
    assert ours.inertia <= ref.inertia * 1.001, (ours.inertia, ref.inertia)
    # The labels are a Lloyd fixed point: every point sits in the cluster with the nearest mean.
    means = np.stack([x[ours.labels == j].mean(axis=0) for j in range(k)])
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(d2.argmin(axis=1), ours.labels)
    assert ours.inertia == pytest.approx(d2.min(axis=1).sum(), rel=1e-4)


def test_numpy_kmeans_never_starts_two_centres_on_repeated_rows():
    # Two distinct texts, each repeated: random starts often pick the same text twice (one empty cluster).
    x = np.repeat(np.eye(4, dtype=np.float32)[:2], [300, 3], axis=0)
    for seed in range(5):
        fit = kmeans(x, 2, seed=seed, cfg=ClusterConfig(backend="numpy", restarts=3))
        assert np.bincount(fit.labels).tolist() == [300, 3] or np.bincount(fit.labels).tolist() == [3, 300]
        assert fit.inertia == pytest.approx(0.0, abs=1e-6)


def test_nmi_and_contingency_basics():
    corpus = np.array([0, 0, 0, 1, 1, 1])
    assert nmi_score(corpus, np.array([1, 1, 1, 0, 0, 0])) == pytest.approx(1.0)  # ids need no matching
    assert nmi_score(corpus, np.array([0, 1, 0, 1, 0, 1])) < 0.1
    np.testing.assert_array_equal(contingency(corpus, np.array([1, 1, 0, 0, 0, 0]), 2, 2), [[1, 3], [2, 0]])


def test_nmi_from_tables_matches_scikit_learn():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(7)
    tables = []
    for k, c, n in [(2, 2, 40), (3, 2, 25), (4, 4, 200), (2, 3, 9)]:
        corpus, cluster = rng.integers(0, c, n), rng.integers(0, k, n)
        cluster[: n // 2] = corpus[: n // 2] % k  # some dependence, so values are not all near 0
        ref = normalized_mutual_info_score(corpus, cluster, average_method="arithmetic")
        assert nmi_score(corpus, cluster) == pytest.approx(ref, abs=1e-12)
        tables.append((contingency(corpus, cluster, c, k), ref))
    # A cluster nobody landed in (an empty row) and a single cluster are scored as scikit-learn does.
    assert nmi_from_counts(np.array([[5, 5], [0, 0]])) == 0.0
    batch = np.stack([tables[0][0], tables[0][0][::-1]])  # vectorised over leading axes, ids free
    np.testing.assert_allclose(nmi_from_counts(batch), [tables[0][1]] * 2, atol=1e-12)


def test_bootstrap_interval_over_sentences():
    rng = np.random.default_rng(8)
    # Two seeds' (cluster x corpus) tables of a partly separated pair of 1000 sentences each.
    tables = [np.array([[800, 150], [200, 850]]), np.array([[780, 170], [220, 830]])]
    point = float(np.mean([nmi_from_counts(t) for t in tables]))
    ci = bootstrap_nmi(tables, resamples=2000, rng=rng)
    assert ci.low < point < ci.high and ci.level == 0.95 and ci.resamples == 2000
    assert 0.01 < ci.high - ci.low < 0.1
    # Same generator state, same interval; ten times the sentences, a narrower one.
    again = bootstrap_nmi(tables, resamples=2000, rng=np.random.default_rng(8))
    assert (again.low, again.high) == (ci.low, ci.high)
    wide = bootstrap_nmi([t // 10 for t in tables], resamples=2000, rng=np.random.default_rng(8))
    assert wide.high - wide.low > 2 * (ci.high - ci.low)
    # A perfect split stays perfect under resampling.
    perfect = bootstrap_nmi([np.array([[100, 0], [0, 100]])], resamples=200, rng=rng)
    assert (perfect.low, perfect.high) == (1.0, 1.0)


def test_joint_view_with_k_equal_to_corpora():
    rng = np.random.default_rng(4)
    embs = [_corpus(rng, np.eye(8)[i] * 6, 100, 0.3) for i in range(4)]
    score = domain_gap(embs, seed=0)
    assert score.k == 4 and score.counts.shape == (4, 4) and score.nmi == pytest.approx(1.0)


def test_spread_is_the_sample_std_and_projection_reports_variance():
    sp = spread([0.2, 0.4, 0.9])
    assert (sp.mean, sp.min, sp.max, sp.range) == pytest.approx((0.5, 0.2, 0.9, 0.7))
    assert sp.std == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))  # ddof=1: the estimate from a few seeds
    assert np.isnan(spread([0.3]).std)  # one seed has no spread to estimate
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 10)) * np.array([5, 3] + [0.1] * 8)
    p, explained = pca_2d(x)
    assert p.shape == (2000, 2)
    np.testing.assert_allclose(p, project_2d(x), rtol=1e-5)
    assert np.var(p[:, 0]) > np.var(p[:, 1]) > 1.0  # the two high-variance axes survive
    assert explained == pytest.approx((25 / 34.08, 9 / 34.08), abs=0.02)


def test_bad_cluster_settings():
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k=6 on 5 points"):
        kmeans(x, 6, seed=0)
    with pytest.raises(ValueError, match="restarts=0"):
        kmeans(x, 2, seed=0, cfg=ClusterConfig(restarts=0))
    with pytest.raises(ValueError, match="unknown K-means backend 'scipy'"):
        kmeans(x, 2, seed=0, cfg=ClusterConfig(backend="scipy"))
    with pytest.raises(ValueError, match="max_iter=0"):
        kmeans(x, 2, seed=0, cfg=ClusterConfig(max_iter=0))
