"""Semantic de-duplication of an embedded collection, as SemDeDup and NeMo Curator do it.

1. Spherical K-means (faiss) over the unit-norm video vectors, so only clips that land in the same
   cluster are ever compared: the cost is the sum of squared cluster sizes, not n squared.
2. Inside each cluster, members are ranked by cosine to the centroid (most typical first); each
   member's ``max_similarity`` is its highest cosine with a member ranked before it.
3. Every member whose ``max_similarity`` reaches the threshold is dropped, and the earlier member
   it matched is named as the one kept in its stead.

``max_similarity`` is computed for every clip whatever the threshold, so the report can show its
distribution and how many clips each threshold would drop: the threshold is chosen by looking at
real duplicates, not guessed.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from common.errors import UserError

logger = logging.getLogger(__name__)

THRESHOLDS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98, 0.99)


@dataclasses.dataclass
class DedupResult:
    keys: list[str]
    cluster: np.ndarray  # [N] cluster of each clip
    max_similarity: np.ndarray  # [N] highest cosine with an earlier-ranked member of its cluster (-1: first)
    nearest: np.ndarray  # [N] row of that member (-1: none)
    threshold: float
    n_clusters: int

    @property
    def dropped(self) -> np.ndarray:
        return np.flatnonzero(self.max_similarity >= self.threshold)

    def drop_counts(self, thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, int]:
        return {f"{t:.2f}": int((self.max_similarity >= t).sum()) for t in thresholds}


def default_clusters(n: int) -> int:
    """About 100 clips a cluster (at least 1; at most n / 39, faiss' training minimum per centroid)."""
    return int(max(1, min(n // 39 if n >= 39 else 1, round(n / 100) or 1)))


def semantic_dedup(keys: list[str], vectors: np.ndarray, threshold: float, *, n_clusters: int = 0, seed: int = 0,
                   niter: int = 20, block: int = 2048) -> DedupResult:
    """See the module docstring. ``vectors``: unit-norm [N, E] (float16 or float32)."""
    import faiss

    if not 0.0 < threshold <= 1.0:
        raise UserError(f"threshold={threshold} must be in (0, 1]")
    n = len(keys)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = n_clusters or default_clusters(n)
    if k > 1:
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False)
        km.train(x)
        centroids = km.centroids
        _, assign = km.index.search(x, 1)
        assign = assign[:, 0]
    else:
        centroids = x.mean(0, keepdims=True)
        assign = np.zeros(n, dtype=np.int64)
    best = np.full(n, -1.0, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if len(members) < 2:
            continue
        typical = x[members] @ centroids[c]
        # Most typical first; ties by key so the kept clip does not depend on the input order.
        order = sorted(range(len(members)), key=lambda i: (-round(float(typical[i]), 6), keys[members[i]]))
        rows = members[order]
        v = x[rows]
        for start in range(1, len(rows), block):
            sims = v[start:start + block] @ v[:start + block].T  # [b, start+b]
            b = sims.shape[0]
            # Only members ranked before each one count: mask the diagonal and everything after it.
            sims[np.arange(b)[:, None] <= np.arange(sims.shape[1])[None, :] - start] = -np.inf
            j = sims.argmax(1)
            best[rows[start:start + b]] = sims[np.arange(b), j]
            nearest[rows[start:start + b]] = rows[j]
    return DedupResult(keys=list(keys), cluster=assign, max_similarity=best, nearest=nearest, threshold=threshold,
                       n_clusters=k)
