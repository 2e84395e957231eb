"""How good and how fast an index is: recall@10 against exact search, and single-query latency.

Recall is measured on held-out queries: vectors that are not in the index (the text vectors of the
collection when the parts carry them, which is what users search with; synthetic queries from the
same distribution in the benchmark), or, when there are none, vectors of the collection searched
leave-one-out (each query's own row removed from both result lists). Latency is one query at a
time, as the server issues them. A quantised index (PQ, SQ codes) is measured as it is searched:
``RERANK`` times the candidates, re-scored with the stored vectors (:func:`rerank`). ``tune``
sweeps the one search-time knob of each index kind (``nprobe`` for IVF, ``efSearch`` for HNSW)
and keeps the cheapest setting that reaches the target recall within the latency budget.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

K = 10
RERANK = 10  # candidates fetched per result from a quantised index, then re-scored exactly


def compressed(index_key: str) -> bool:
    """Whether an index of this factory key holds quantised codes (PQ, SQ) rather than the vectors."""
    return "PQ" in index_key or "SQ" in index_key


def rerank(ids: np.ndarray, query: np.ndarray, vectors: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``want`` of the candidate rows ``ids`` (-1: none) by exact inner product with ``query``,
    read from ``vectors`` (float16 [N, E], usually memory-mapped, read in row order): (rows, scores)."""
    rows = np.sort(ids[ids >= 0])
    exact = np.asarray(vectors[rows], dtype=np.float32) @ query
    best = np.argsort(-exact, kind="stable")[:want]
    return rows[best], exact[best]


@dataclasses.dataclass
class Measurement:
    param: int | None  # nprobe / efSearch, None for exact indices
    recall_at_10: float
    p50_ms: float
    p99_ms: float


def knob(index) -> str | None:
    """The search-time parameter of ``index``: "nprobe", "efSearch" or None (exact)."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if isinstance(inner, faiss.IndexIVF):
        return "nprobe"
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    return None


def set_param(index, value: int | None) -> None:
    import faiss

    name = knob(index)
    if name is None or value is None:
        return
    faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False,
                     batch: int = 4096) -> np.ndarray:
    """Ids of the exact top-``k`` inner products, [Q, k] (brute force in batches of the collection)."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    for i in range(0, len(vectors), 1 << 18):
        flat.add(np.ascontiguousarray(vectors[i:i + (1 << 18)], dtype=np.float32))
    out = []
    for i in range(0, len(queries), batch):
        _, ids = flat.search(np.ascontiguousarray(queries[i:i + batch], dtype=np.float32), k + int(exclude_self))
        out.append(ids)
    ids = np.concatenate(out)
    return _drop_self(ids, k, exclude_self)


def _drop_self(ids: np.ndarray, k: int, exclude_self: bool, self_ids: np.ndarray | None = None) -> np.ndarray:
    if not exclude_self:
        return ids[:, :k]
    own = np.arange(len(ids)) if self_ids is None else self_ids
    keep = [row[row != me][:k] for row, me in zip(ids, own)]
    return np.stack([np.pad(r, (0, k - len(r)), constant_values=-1) for r in keep])


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k: the share of the true top-k that came back."""
    hits = [len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum()) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 0.0


def measure(index, queries: np.ndarray, truth: np.ndarray, param: int | None, exclude_self: bool = False,
            self_ids: np.ndarray | None = None, vectors: np.ndarray | None = None) -> Measurement:
    """Recall@10 and single-query latency of ``index`` at ``param``; with ``vectors`` (a quantised
    index) each query fetches ``RERANK`` times the candidates and re-scores them, as searches do."""
    set_param(index, param)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = K + int(exclude_self)
    fetch = k * RERANK if vectors is not None else k
    index.search(q[:1], fetch)  # warm-up: page in the lists a memory-mapped index touches first
    found = np.full((len(q), k), -1, dtype=np.int64)
    times = []
    for i in range(len(q)):
        t = time.perf_counter()
        _, ids = index.search(q[i:i + 1], fetch)
        row = rerank(ids[0], q[i], vectors, k)[0] if vectors is not None else ids[0]
        times.append(time.perf_counter() - t)
        found[i, :len(row)] = row
    found_ids = _drop_self(found, K, exclude_self, self_ids)
    ms = np.asarray(times) * 1e3
    return Measurement(param, recall_at_k(found_ids, truth), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def candidates(index) -> list[int | None]:
    """The values of the index's knob worth trying, cheapest first."""
    import faiss

    name = knob(index)
    if name is None:
        return [None]
    if name == "nprobe":
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
        nlist = faiss.extract_index_ivf(inner).nlist
        return [p for p in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024) if p <= nlist]
    return [16, 32, 48, 64, 96, 128, 192, 256, 512]


def tune(index, queries: np.ndarray, truth: np.ndarray, *, target_recall: float, latency_budget_ms: float,
         exclude_self: bool = False, self_ids: np.ndarray | None = None,
         vectors: np.ndarray | None = None) -> tuple[Measurement, list[Measurement]]:
    """The cheapest setting reaching ``target_recall`` with p50 within the budget; else the best recall
    within the budget (else the fastest), with a warning. Returns it and every measurement taken.
    ``vectors``: re-score a quantised index's candidates (see :func:`measure`)."""
    table: list[Measurement] = []
    for param in candidates(index):
        m = measure(index, queries, truth, param, exclude_self, self_ids, vectors)
        table.append(m)
        logger.info("%s=%s: recall@10 %.4f, p50 %.2f ms, p99 %.2f ms", knob(index) or "exact", param or "-", m.recall_at_10,
                    m.p50_ms, m.p99_ms)
        if m.recall_at_10 >= target_recall or m.p50_ms > latency_budget_ms:
            break
    within = [m for m in table if m.p50_ms <= latency_budget_ms]
    good = [m for m in within if m.recall_at_10 >= target_recall]
    choice = good[0] if good else (max(within, key=lambda m: m.recall_at_10) if within else table[0])
    if not good:
        logger.warning("recall@10 %.4f at p50 %.2f ms is the best this index reaches within %g ms, short of the "
                       "target %g: raise the latency or memory budget, or lower the target", choice.recall_at_10,
                       choice.p50_ms, latency_budget_ms, target_recall)
    set_param(index, choice.param)
    return choice, table


def as_dict(m: Measurement) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(m).items()}
