"""K-means on sentence embeddings: faiss when installed (on the GPU when one is visible), else scikit-learn.

A single Lloyd run from one random start can land in a poor local optimum; on two overlapping
corpora that flips the NMI between runs (platform.md measured a much wider spread for one faiss
run than for scikit-learn's ``n_init=10``). Both backends therefore run ``restarts`` starts and
keep the lowest-inertia one, and faiss trains on every point rather than its default subsample of
256 points per centroid, so the two backends solve the same problem.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "sklearn")


@dataclasses.dataclass(kw_only=True, frozen=True)
class ClusterConfig:
    """K-means settings shared by every clustering in a report."""

    backend: str = "auto"  # auto (faiss if installed, else sklearn) | faiss | sklearn
    restarts: int = 10
    max_iter: int = 50
    # faiss CPU OpenMP threads; 0 = faiss's default (every core). One thread is the fast choice for report
    # sizes: beside torch's OpenMP pool in the same process, two faiss threads ran 16x slower on 2 cores.
    faiss_threads: int = 1


@dataclasses.dataclass(kw_only=True, frozen=True)
class KMeansResult:
    """Cluster labels of one K-means fit (the best of ``restarts`` starts)."""

    labels: np.ndarray  # (N,) int64 in [0, k)
    k: int
    inertia: float  # sum of squared distances to the assigned centroid
    seed: int
    backend: str  # faiss-cpu | faiss-gpu | sklearn


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``faiss`` when importable, else ``sklearn``; an unavailable explicit choice is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown K-means backend {backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        return "faiss" if faiss_available() else "sklearn"
    if backend == "faiss" and not faiss_available():
        raise ValueError("K-means backend 'faiss' needs faiss-cpu or faiss-gpu installed; or use --backend sklearn")
    return backend


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, cfg: ClusterConfig) -> KMeansResult:
    import faiss

    gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(x.shape[1], k, niter=cfg.max_iter, nredo=cfg.restarts, seed=seed, verbose=False, gpu=gpu,
                      max_points_per_centroid=max(256, x.shape[0]), min_points_per_centroid=1)
    threads = faiss.omp_get_max_threads()
    if cfg.faiss_threads > 0:
        faiss.omp_set_num_threads(cfg.faiss_threads)
    try:
        km.train(x)
        dist, idx = km.index.search(x, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return KMeansResult(labels=idx[:, 0].astype(np.int64), k=k, inertia=float(dist.sum()), seed=seed,
                        backend="faiss-gpu" if gpu else "faiss-cpu")


def _sklearn_kmeans(x: np.ndarray, k: int, seed: int, cfg: ClusterConfig) -> KMeansResult:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=cfg.restarts, max_iter=cfg.max_iter, random_state=seed).fit(x)
    return KMeansResult(labels=km.labels_.astype(np.int64), k=k, inertia=float(km.inertia_), seed=seed,
                        backend="sklearn")


def kmeans(x: np.ndarray, k: int, *, seed: int, cfg: ClusterConfig = ClusterConfig()) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` groups, deterministically for a given ``seed``.

    Args:
        x: (N, D) embeddings.
        k: number of clusters (2 for a pair of corpora, the number of corpora for the joint view).
        seed: seeds the random starts.
        cfg: backend, restarts and iteration cap.
    """
    if cfg.restarts < 1:
        raise ValueError(f"K-means restarts={cfg.restarts}; use at least 1 (10 recommended)")
    if not 2 <= k <= len(x):
        raise ValueError(f"K-means with k={k} on {len(x)} points; need 2 <= k <= number of points")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if resolve_backend(cfg.backend) == "faiss":
        return _faiss_kmeans(x, k, seed, cfg)
    return _sklearn_kmeans(x, k, seed, cfg)
