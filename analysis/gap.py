"""The domain-gap metric: how well unsupervised clusters of embeddings recover which corpus a text came from.

CLIP-ViP's preliminary analysis: embed N sentences of each corpus, run K-means with k=2 on a pair
(or k=C on C corpora together), and score the normalised mutual information between cluster and
corpus labels. If two corpora share a language domain, K-means splits their union along directions
unrelated to the source and NMI is near 0; if they differ (long noisy ASR subtitles vs short
descriptive captions), the clusters coincide with the corpora and NMI approaches 1.

Everything here takes arrays and returns small dataclasses; storage, encoders and plotting live
elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from analysis.kmeans import ClusterConfig, KMeansResult, kmeans, one_blas_thread


@dataclasses.dataclass(kw_only=True, frozen=True)
class Spread:
    """Mean and spread of one quantity over seeds."""

    values: tuple[float, ...]
    mean: float
    std: float  # sample standard deviation over seeds (ddof=1); NaN for a single seed
    min: float
    max: float

    @property
    def range(self) -> float:
        """max - min: how far the seeds disagree (the instability flag reads this)."""
        return self.max - self.min


@dataclasses.dataclass(kw_only=True, frozen=True)
class ClusterScore:
    """One clustering of C corpora scored against their corpus labels."""

    nmi: float
    counts: np.ndarray  # (k, C) texts of each corpus in each cluster
    k: int
    inertia: float


def corpus_labels(sizes: Sequence[int]) -> np.ndarray:
    """``[0]*sizes[0] + [1]*sizes[1] + ...``: the corpus label of each stacked row."""
    return np.repeat(np.arange(len(sizes)), sizes)


def nmi_from_counts(counts: np.ndarray) -> np.ndarray:
    """NMI (arithmetic normalisation) of (..., k, C) cluster-by-corpus tables, vectorised over leading axes.

    Equal to scikit-learn's ``normalized_mutual_info_score`` on the labels behind each table; working
    on tables lets the bootstrap score thousands of resampled tables in one pass.
    """
    n = np.asarray(counts, dtype=np.float64)
    total = n.sum(axis=(-2, -1), keepdims=True)
    p = n / total
    pk = p.sum(axis=-1, keepdims=True)  # clusters
    pc = p.sum(axis=-2, keepdims=True)  # corpora
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.where(p > 0, p * np.log(p / (pk * pc)), 0.0).sum(axis=(-2, -1))
        hk = -np.where(pk > 0, pk * np.log(pk), 0.0).sum(axis=(-2, -1))
        hc = -np.where(pc > 0, pc * np.log(pc), 0.0).sum(axis=(-2, -1))
        nmi = mi / ((hk + hc) / 2)
    # One cluster and one corpus carry no information either way; scikit-learn calls that 1.
    nmi = np.where((hk == 0) & (hc == 0), 1.0, np.where((hk == 0) | (hc == 0), 0.0, nmi))
    return np.clip(nmi, 0.0, 1.0)


def nmi_score(corpus: np.ndarray, cluster: np.ndarray) -> float:
    """Normalised mutual information between corpus labels and cluster labels, in [0, 1].

    Why NMI: it asks how much knowing a text's cluster tells about its corpus, without caring which
    cluster id goes with which corpus (so no matching step), it is 0 when clusters are independent
    of the source and 1 when they reproduce it exactly, and normalising by the label entropies makes
    values comparable across pairs and across k. It is the measure the CLIP-ViP paper reports. The
    arithmetic-mean normalisation (scikit-learn's default, equal to the V-measure) is used.
    """
    corpus, cluster = np.asarray(corpus), np.asarray(cluster)
    return float(nmi_from_counts(contingency(corpus, cluster, int(corpus.max()) + 1, int(cluster.max()) + 1)))


def contingency(corpus: np.ndarray, cluster: np.ndarray, n_corpora: int, k: int) -> np.ndarray:
    """(k, C) counts of each corpus in each cluster: shows *how* the clusters split the corpora."""
    out = np.zeros((k, n_corpora), dtype=np.int64)
    np.add.at(out, (cluster, corpus), 1)
    return out


def score_clustering(sizes: Sequence[int], fit: KMeansResult) -> ClusterScore:
    """NMI and the cluster-by-corpus table of a fit on rows stacked corpus by corpus (``sizes`` rows each)."""
    labels = corpus_labels(sizes)
    if len(labels) != len(fit.labels):
        raise ValueError(f"{len(fit.labels)} cluster labels for {len(labels)} rows")
    counts = contingency(labels, fit.labels, len(sizes), fit.k)
    return ClusterScore(nmi=float(nmi_from_counts(counts)), counts=counts, k=fit.k, inertia=fit.inertia)


def domain_gap(embeddings: Sequence[np.ndarray], *, seed: int, k: int | None = None,
               cfg: ClusterConfig = ClusterConfig()) -> ClusterScore:
    """Cluster the union of C corpora's embeddings into ``k`` groups (default C) and score it with NMI.

    Why this is the gap measure: K-means makes no use of the corpus labels, so it separates the
    corpora only when their embeddings occupy different regions; NMI then reads off how completely
    the data-driven split matches the source split.

    Args:
        embeddings: one (N_c, D) array per corpus.
        seed: seeds K-means.
        k: clusters; C by default (2 for a pair).
        cfg: K-means backend and restarts.
    """
    if len(embeddings) < 2:
        raise ValueError("domain_gap needs at least two corpora")
    x = np.concatenate(embeddings)
    fit = kmeans(x, k or len(embeddings), seed=seed, cfg=cfg)
    return score_clustering([len(e) for e in embeddings], fit)


def spread(values: Sequence[float]) -> Spread:
    """Summarise per-seed values; the spread is what tells a real gap from sampling noise.

    The std is the sample standard deviation (ddof=1), the usual estimate from a handful of seeds;
    one seed has no spread to estimate, so its std is NaN (null in JSON, "-" in the tables).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("spread of no values")
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return Spread(values=tuple(float(a) for a in v), mean=float(v.mean()), std=std,
                  min=float(v.min()), max=float(v.max()))


@dataclasses.dataclass(kw_only=True, frozen=True)
class Interval:
    """A bootstrap confidence interval of the mean NMI over seeds."""

    low: float
    high: float
    level: float  # e.g. 0.95
    resamples: int


def bootstrap_nmi(tables: Sequence[np.ndarray], *, resamples: int = 1000, level: float = 0.95,
                  rng: np.random.Generator) -> Interval:
    """Percentile interval of the seed-mean NMI when each seed's sentences are resampled with replacement.

    Each table is one seed's (k, C) cluster-by-corpus counts. A resample draws, for every corpus, as
    many sentences as it had, with replacement, from that corpus's sampled sentences; a sentence
    keeps the cluster it was assigned, so the resampled table is a multinomial draw from the corpus's
    column. The NMI of each resampled table is averaged over seeds, and the interval is the
    percentile range of those means.

    What it covers: which sentences happened to be sampled, for the clusterings found. What it does
    not: K-means landing on a different split; that shows in the seed spread.
    """
    if not tables:
        raise ValueError("bootstrap of no tables")
    means = np.zeros(resamples)
    for counts in tables:
        counts = np.asarray(counts, dtype=np.int64)
        k, c = counts.shape
        draws = np.empty((resamples, k, c), dtype=np.int64)
        for j in range(c):
            size = int(counts[:, j].sum())
            draws[:, :, j] = rng.multinomial(size, counts[:, j] / max(size, 1), size=resamples)
        means += nmi_from_counts(draws)
    means /= len(tables)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(low=float(low), high=float(high), level=level, resamples=resamples)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """(N, D) -> (N, 2) by PCA, and the fraction of the total variance each of the two axes holds.

    Why PCA: it is linear, deterministic and preserves the global geometry K-means works on,
    unlike t-SNE/UMAP, which can invent or hide clusters. Signs are fixed so reruns draw the same
    picture. The explained variance says how much of the embedding the picture shows: sentence
    embeddings spread over many directions, so two axes often hold only a small share, and blobs
    that overlap in the picture may still be apart in the full space (the NMI is computed there).
    """
    xc = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    with one_blas_thread():
        # The D x D covariance's eigenvectors are the principal axes; cheaper than an SVD of the N x D data.
        evals, evecs = np.linalg.eigh(xc.T @ xc)
    evals, evecs = np.maximum(evals[::-1], 0.0), evecs[:, ::-1]
    comps = evecs[:, :2].T
    signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
    out = xc @ (comps * signs[:, None]).T
    total = evals.sum()
    share = evals[:2] / total if total > 0 else np.zeros(2)
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        share = np.pad(share, (0, 2 - len(share)))
    return out.astype(np.float32), (float(share[0]), float(share[1]))


def project_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) by PCA (:func:`pca_2d` without the explained variance)."""
    return pca_2d(x)[0]
