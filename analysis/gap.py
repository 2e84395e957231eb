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

from analysis.kmeans import ClusterConfig, KMeansResult, kmeans


@dataclasses.dataclass(kw_only=True, frozen=True)
class Spread:
    """Mean and spread of one quantity over seeds."""

    values: tuple[float, ...]
    mean: float
    std: float  # population std over seeds (0 for a single seed)
    min: float
    max: float


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


def nmi_score(corpus: np.ndarray, cluster: np.ndarray) -> float:
    """Normalised mutual information between corpus labels and cluster labels, in [0, 1].

    Why NMI: it asks how much knowing a text's cluster tells about its corpus, without caring which
    cluster id goes with which corpus (so no matching step), it is 0 when clusters are independent
    of the source and 1 when they reproduce it exactly, and normalising by the label entropies makes
    values comparable across pairs and across k. It is the measure the CLIP-ViP paper reports. The
    arithmetic-mean normalisation (scikit-learn's default, equal to the V-measure) is used.
    """
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(corpus, cluster, average_method="arithmetic"))


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
    return ClusterScore(nmi=nmi_score(labels, fit.labels), counts=contingency(labels, fit.labels, len(sizes), fit.k),
                        k=fit.k, inertia=fit.inertia)


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
    """Summarise per-seed values; the spread is what tells a real gap from sampling noise."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("spread of no values")
    return Spread(values=tuple(float(a) for a in v), mean=float(v.mean()), std=float(v.std()),
                  min=float(v.min()), max=float(v.max()))


def project_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) by PCA: the plane of largest variance, where a domain gap shows as separate blobs.

    Why PCA: it is linear, deterministic and preserves the global geometry K-means works on,
    unlike t-SNE/UMAP, which can invent or hide clusters. Signs are fixed so reruns draw the same picture.
    """
    xc = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
    out = xc @ (comps * signs[:, None]).T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out.astype(np.float32)
