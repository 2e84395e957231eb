"""K-means on sentence embeddings: a batched NumPy Lloyd by default; faiss and scikit-learn on request.

A single Lloyd run from one start can land in a poor local optimum; on two overlapping corpora that
flips the NMI between runs. Every backend therefore runs ``restarts`` starts and keeps the
lowest-inertia one, and faiss trains on every point rather than its default subsample of 256 points
per centroid, so the backends solve the same problem.

Why a NumPy backend: a report clusters hundreds of small problems (2,000 points, k=2, for every pair
and seed). faiss runs its restarts one after another and always for ``max_iter`` iterations; here all
restarts advance together in one matrix product per iteration, each restart stops at its fixed point
(labels unchanged) or as soon as it repeats another restart's partition, cluster sums are updated
from the points that moved, and a k=2 assignment needs one dot product per point instead of two
distances. On the 2-core box that clusters the 9-corpus, 3-seed report faster than faiss, to
optima of the same quality (BENCHMARKS.md, "NMI domain-gap report").
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging

import numpy as np

from common.errors import UserError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "numpy", "faiss", "sklearn")


@dataclasses.dataclass(kw_only=True, frozen=True)
class ClusterConfig:
    """K-means settings shared by every clustering in a report."""

    backend: str = "auto"  # auto (= numpy) | numpy | faiss | sklearn
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
    backend: str  # numpy | faiss-cpu | faiss-gpu | sklearn


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``numpy``; an unavailable explicit choice is an error."""
    if backend not in BACKENDS:
        raise UserError(f"unknown K-means backend {backend!r}; use one of {BACKENDS}")
    if backend == "auto":
        return "numpy"
    if backend == "faiss" and not faiss_available():
        raise UserError("K-means backend 'faiss' needs faiss-cpu or faiss-gpu installed; or use --backend numpy")
    return backend


def _kmeans_plus_plus(x: np.ndarray, sq: np.ndarray, k: int, restarts: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(restarts, k, D) starting centroids: greedy k-means++ for every restart at once.

    Each next centre is drawn with probability proportional to the squared distance to the nearest
    centre so far (so repeated texts, identical rows, never start as two centres), and as in
    scikit-learn, 2 + log(k) candidates are drawn and the one that lowers the total distance most is
    kept; on the joint view (k = number of corpora) that found lower-inertia solutions than a
    single draw per centre.
    """
    n, d = x.shape
    trials = 2 + int(np.log(k))
    centres = np.empty((restarts, k, d), dtype=np.float32)
    pick = rng.integers(0, n, size=restarts)
    centres[:, 0] = x[pick]
    nearest = np.maximum(sq[:, None] - 2.0 * (x @ centres[:, 0].T) + sq[pick][None], 0.0)  # (N, R)
    for j in range(1, k):
        cum = np.cumsum(nearest, axis=0, dtype=np.float64)  # (N, R)
        total = cum[-1]
        u = rng.random((trials, restarts)) * total[None]
        cand = np.stack([np.minimum(np.searchsorted(cum[:, r], u[:, r], side="right"), n - 1)
                         for r in range(restarts)], axis=1)  # (trials, R)
        flat = total <= 0  # every point already coincides with a centre: any point will do
        if flat.any():
            cand[:, flat] = rng.integers(0, n, size=(trials, int(flat.sum())))
        d2 = np.maximum(sq[:, None] - 2.0 * (x @ x[cand.ravel()].T) + sq[cand.ravel()][None], 0.0)
        d2 = np.minimum(d2.reshape(n, trials, restarts), nearest[:, None, :])  # (N, trials, R)
        best = d2.sum(axis=0).argmin(axis=0)  # (R,)
        chosen = cand[best, np.arange(restarts)]
        centres[:, j] = x[chosen]
        nearest = d2[:, best, np.arange(restarts)]
    return centres


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, A) nearest-centre labels for A restarts' (A, k, D) centres."""
    a, k, d = centres.shape
    if k == 2:
        # |x-c1|^2 < |x-c0|^2  <=>  x.(c1-c0) > (|c1|^2-|c0|^2)/2: one product per point and restart.
        w = centres[:, 1] - centres[:, 0]
        bias = 0.5 * (np.einsum("ad,ad->a", centres[:, 1], centres[:, 1])
                      - np.einsum("ad,ad->a", centres[:, 0], centres[:, 0]))
        return (x @ w.T > bias[None]).astype(np.int64)
    flat = centres.reshape(a * k, d)
    # |x|^2 is the same for every centre, so it is left out of the comparison.
    score = np.einsum("cd,cd->c", flat, flat)[None] - 2.0 * (x @ flat.T)
    return score.reshape(len(x), a, k).argmin(axis=2)


def _member_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, k, D) sums and (A, k) counts of the rows of ``x`` in each cluster of (M, A) labels."""
    m, a = labels.shape
    onehot = (labels.T[:, None, :] == np.arange(k)[None, :, None]).astype(np.float32)  # (A, k, M)
    sums = (onehot.reshape(a * k, m) @ x).reshape(a, k, x.shape[1])
    return sums.astype(np.float64), onehot.sum(axis=2, dtype=np.float64)


class _Centroids:
    """Per-restart cluster sums and counts, updated by the points that changed cluster only.

    After the first few steps only a few points move per step, so adding those rows in and taking
    them out is far cheaper than summing every cluster again. Sums are kept in float64 so the
    running totals do not drift from the exact means over many steps.
    """

    def __init__(self, x: np.ndarray, labels: np.ndarray, k: int):
        self.x, self.k = x, k
        self.sums, self.counts = _member_sums(x, labels, k)  # (R, k, D), (R, k)

    def move(self, rows: np.ndarray, restarts: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
        """Points ``rows`` went from cluster ``old`` to ``new`` ((M, A) labels) in each of ``restarts``."""
        xr = self.x[rows]
        add_s, add_c = _member_sums(xr, new, self.k)
        sub_s, sub_c = _member_sums(xr, old, self.k)
        self.sums[restarts] += add_s - sub_s
        self.counts[restarts] += add_c - sub_c

    def means(self, restarts: np.ndarray, labels: np.ndarray, old: np.ndarray) -> np.ndarray:
        """(A, k, D) cluster means; a cluster left empty takes the point farthest from its centre."""
        counts = self.counts[restarts]
        new = (self.sums[restarts] / np.maximum(counts, 1.0)[:, :, None]).astype(np.float32)
        for i, j in zip(*np.nonzero(counts < 0.5)):
            # As scikit-learn does: re-seed an empty cluster at the worst-served point, so it stays in play.
            resid = self.x - old[i][labels[:, i]]
            new[i, j] = self.x[int(np.einsum("nd,nd->n", resid, resid).argmax())]
        return new


def _partition_keys(labels: np.ndarray, k: int) -> list[bytes]:
    """One key per column of (N, A) labels, equal for two columns that split the points the same way
    whatever the cluster ids (ids renumbered in order of first appearance)."""
    if k == 2:
        canon = labels != labels[:1]  # cluster of the first point is 0
        return [c.tobytes() for c in np.packbits(canon, axis=0).T]
    keys = []
    for col in labels.T:
        _, first = np.unique(col, return_index=True)
        rank = np.empty(k, dtype=np.int32)
        rank[col[np.sort(first)]] = np.arange(len(first), dtype=np.int32)
        keys.append(rank[col].tobytes())
    return keys


def _inertia(x: np.ndarray, sq: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(R,) sum of squared distances of each point to its assigned centre, per restart."""
    r, k, d = centres.shape
    flat = centres.reshape(r * k, d)
    d2 = sq[:, None] - 2.0 * (x @ flat.T) + np.einsum("cd,cd->c", flat, flat)[None]
    d2 = d2.reshape(len(x), r, k)
    return np.maximum(np.take_along_axis(d2, labels[:, :, None], axis=2)[:, :, 0], 0.0).sum(axis=0, dtype=np.float64)


@functools.cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # comes with scikit-learn; without it BLAS keeps its own thread count
        return None
    return ThreadpoolController()


def one_blas_thread():
    """A context in which NumPy's BLAS runs on one thread.

    The products here are small (2,000 x 384 by 20); a second BLAS thread gains little on an idle
    machine, and on a shared 2-core one, where the other thread is often descheduled, the same
    products measured 14-45x slower than on one thread.
    """
    ctl = _blas_controller()
    return ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()


def _numpy_kmeans(x: np.ndarray, k: int, seed: int, cfg: ClusterConfig) -> KMeansResult:
    with one_blas_thread():
        return _lloyd(x, k, seed, cfg)


def _lloyd(x: np.ndarray, k: int, seed: int, cfg: ClusterConfig) -> KMeansResult:
    """All restarts advance together; each stops at its fixed point or when it repeats another's partition.

    Lloyd's next step depends only on the current partition, so a restart whose partition another
    restart has already had (now or earlier) would retrace that one's path to the same end (up to
    the iteration cap): it is dropped instead of being iterated again. On report data many restarts
    fall onto a partition another one already reached within a few steps.
    """
    rng = np.random.default_rng(seed)
    sq = np.einsum("nd,nd->n", x, x)
    centres = _kmeans_plus_plus(x, sq, k, cfg.restarts, rng)
    labels = _assign(x, centres)
    sums = _Centroids(x, labels, k)
    repeat = np.zeros(cfg.restarts, dtype=bool)  # retraces another restart: left out of the final choice
    seen: dict[bytes, int] = {}
    active = np.arange(cfg.restarts)
    for _ in range(cfg.max_iter - 1):
        keep = []
        for r, key in zip(active, _partition_keys(labels[:, active], k)):
            owner = seen.setdefault(key, int(r))
            if owner != r:
                repeat[r] = True
            else:
                keep.append(r)
        active = np.asarray(keep, dtype=np.int64)
        if not len(active):
            break
        centres[active] = sums.means(active, labels[:, active], centres[active])
        new = _assign(x, centres[active])
        changed = new != labels[:, active]
        moved = changed.any(axis=0)
        rows = np.flatnonzero(changed.any(axis=1))
        if len(rows):
            sums.move(rows, active, labels[rows][:, active], new[rows])
        labels[:, active] = new
        active = active[moved]  # a restart whose labels did not change is at its fixed point
        if not len(active):
            break
    done = np.flatnonzero(~repeat)
    inertia = _inertia(x, sq, centres[done], labels[:, done])
    best = int(done[inertia.argmin()])
    return KMeansResult(labels=labels[:, best].copy(), k=k, inertia=float(inertia.min()), seed=seed, backend="numpy")


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
    if cfg.max_iter < 1:
        raise ValueError(f"K-means max_iter={cfg.max_iter}; use at least 1 (50 recommended)")
    if not 2 <= k <= len(x):
        raise ValueError(f"K-means with k={k} on {len(x)} points; need 2 <= k <= number of points")
    x = np.ascontiguousarray(x, dtype=np.float32)
    backend = resolve_backend(cfg.backend)
    if backend == "faiss":
        return _faiss_kmeans(x, k, seed, cfg)
    if backend == "sklearn":
        return _sklearn_kmeans(x, k, seed, cfg)
    return _numpy_kmeans(x, k, seed, cfg)
