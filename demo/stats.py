"""How sure a demo comparison is: per-query outcomes of two models on the same test queries, their
difference per seed, and a paired bootstrap interval over the queries.

The demo compares models trained at a few seeds on one test set of about a hundred queries. Two
things move a difference: the seed (initial weights, data order, frame jitter) and which queries
happen to be in the test set. The per-seed values show the first; the interval shows the second.
It resamples the test queries with replacement (the same resample for both models and every
seed, which is what makes it paired) and recomputes the seed-averaged difference each time; the
2.5th and 97.5th percentiles of those are the 95% interval. An interval that holds 0 says the test
set cannot tell the two models apart, whatever the mean says. It does not cover seeds beyond the
ones run: with two seeds, a difference that flips sign between them is not reached either.
"""

from __future__ import annotations

import dataclasses

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def rank_credit(sim: np.ndarray, k: int) -> np.ndarray:
    """Per query (row of ``sim`` [N_text, N_video], text i's video is i): its share of R@k.

    1 when its video ranks within the top ``k``, 0 otherwise; with exact ties, the share of its
    tied positions that fall within ``k``, which is how the official tie rule counts them, so the
    mean over queries is R@k as :func:`model.metrics.retrieval_metrics` reports it (as a fraction)
    whenever no query ties, and its per-query counterpart otherwise.
    """
    sim = np.asarray(sim, dtype=np.float64)
    gt = np.diag(sim)[:, None]
    better = (sim > gt).sum(axis=1)
    tied = (sim == gt).sum(axis=1) - 1
    return np.clip((k - better) / (tied + 1), 0.0, 1.0)


def top1_correct(sim: np.ndarray, attributes: list[dict], field: str) -> np.ndarray:
    """Per query: whether its best-scoring video has the query's ``field`` (colour, shape, direction)."""
    top = np.asarray(sim).argmax(axis=1)
    return np.array([attributes[j][field] == attributes[i][field] for i, j in enumerate(top)], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Model A minus model B on one metric, in the metric's units (percentage points for rates)."""

    metric: str
    seeds: list[int]
    a: list[float]  # A's value per seed
    b: list[float]
    per_seed: list[float]  # A - B per seed
    mean: float  # over seeds
    low: float  # the interval over resampled queries
    high: float
    n_queries: int
    resamples: int = RESAMPLES
    level: float = LEVEL

    @property
    def verdict(self) -> str:
        """``"A"`` or ``"B"`` when the interval excludes 0 on that side, else ``"neither"``."""
        return "A" if self.low > 0 else "B" if self.high < 0 else "neither"


def paired_difference(metric: str, seeds: list[int], a: list[np.ndarray], b: list[np.ndarray],
                      scale: float = 100.0, seed: int = 0) -> PairedDifference:
    """Seed-averaged mean difference of per-query outcomes ``a[s] - b[s]`` with its paired bootstrap
    interval over queries. ``a``, ``b``: one array per seed, aligned query by query."""
    diffs = np.stack([np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64) for x, y in zip(a, b)])
    n = diffs.shape[1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(RESAMPLES, n))
    boot = diffs[:, idx].mean(axis=2).mean(axis=0) * scale  # [resamples]: seed-averaged difference
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return PairedDifference(metric=metric, seeds=list(seeds), a=[float(x.mean() * scale) for x in map(np.asarray, a)],
                            b=[float(y.mean() * scale) for y in map(np.asarray, b)],
                            per_seed=[float(d.mean() * scale) for d in diffs], mean=float(diffs.mean() * scale),
                            low=float(low), high=float(high), n_queries=n)
