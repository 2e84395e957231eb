"""``clipvip search`` as a library call: text, more-like-this or vector queries over one or more
indices, with metadata filters, paging and near-duplicate folding. The server calls exactly this.

A filter that leaves few rows (``EXACT_SUBSET`` or fewer) is answered exactly over those rows from
the memory-mapped vectors; a broader one searches the index with a faiss ID selector, so the
filter applies inside the search instead of thinning a fixed top-k afterwards. A quantised index
(PQ, SQ: the large-collection choice) returns ``search.tune.RERANK`` times the candidates,
re-scored with the stored vectors (``search.tune.rerank``, which the index's tuning measures too),
so its codes decide only which candidates are looked at. Folding walks the ranked results and
folds each hit whose cosine with a better-ranked kept hit reaches the threshold into that hit (its
``duplicates``), so a page shows distinct clips.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import numpy as np

from common.errors import UserError
from search import tune
from search.store import Filters, Store, StoreError

logger = logging.getLogger(__name__)

EXACT_SUBSET = 50_000
MAX_RESULTS = 1000  # offset + k


class QueryError(UserError):
    """A query that cannot be answered as asked (unknown index or key, bad paging, model mismatch)."""


@dataclasses.dataclass
class Hit:
    key: str
    score: float
    row: int
    subtitle: str
    caption: str
    duration: float | None
    start: float | None
    end: float | None
    meta: dict[str, Any]
    duplicates: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Page:
    index: str
    hits: list[Hit]
    offset: int
    k: int
    has_more: bool
    mode: str  # "ann" (the index), "exact-subset" (a selective filter) or "exact" (a Flat index)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "offset": self.offset, "k": self.k, "has_more": self.has_more, "mode": self.mode,
                "results": [dataclasses.asdict(h) for h in self.hits]}


def _search_params(store: Store, sel: Any, want: int):
    import faiss

    knob, param = store.info.get("knob"), store.info["search"]["param"]
    if knob == "nprobe":
        return faiss.SearchParametersIVF(sel=sel, nprobe=int(param))
    if knob == "efSearch":
        return faiss.SearchParametersHNSW(sel=sel, efSearch=max(int(param), want))
    return faiss.SearchParameters(sel=sel) if sel is not None else None


def ranked(store: Store, query: np.ndarray, want: int, mask: np.ndarray | None,
           exclude: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(row ids, scores) of the best ``want`` rows for one query vector, best first, and how."""
    import faiss

    q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    extra = 1 if exclude is not None else 0
    if mask is not None and mask.sum() <= EXACT_SUBSET:
        ids = np.flatnonzero(mask)
        if exclude is not None:
            ids = ids[ids != exclude]
        scores = np.asarray(store.vectors[ids], dtype=np.float32) @ q[0]
        top = np.argsort(-scores, kind="stable")[:want]
        return ids[top], scores[top], "exact-subset"
    sel = None
    if mask is not None:
        sel = faiss.IDSelectorBitmap(len(mask), np.packbits(mask, bitorder="little"))
    quantised = tune.compressed(store.info.get("index_key", ""))
    fetch = (want + extra) * (tune.RERANK if quantised else 1)
    params = _search_params(store, sel, fetch)
    scores, ids = store.index.search(q, fetch, params=params) if params is not None else store.index.search(q, fetch)
    keep = ids[0] >= 0
    if exclude is not None:
        keep &= ids[0] != exclude
    ids, scores = ids[0][keep], scores[0][keep]
    if quantised:
        # Quantised codes only approximate the scores: re-score the candidates with the stored vectors.
        ids, scores = tune.rerank(ids, q[0], store.vectors, want)
    mode = "exact" if store.info.get("knob") is None else "ann"
    return ids[:want], scores[:want], mode


def fold_duplicates(store: Store, ids: np.ndarray, threshold: float) -> list[tuple[int, list[int]]]:
    """Greedy near-duplicate folding of ranked ``ids``: (kept row, rows folded into it)."""
    if len(ids) == 0:
        return []
    vecs = np.asarray(store.vectors[np.sort(ids)], dtype=np.float32)
    order = {r: i for i, r in enumerate(np.sort(ids))}
    v = vecs[[order[r] for r in ids]]
    kept: list[int] = []
    groups: list[tuple[int, list[int]]] = []
    for i in range(len(ids)):
        if kept:
            sims = v[kept] @ v[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                groups[j][1].append(int(ids[i]))
                continue
        kept.append(i)
        groups.append((int(ids[i]), []))
    return groups


def read_query_vector(path: str) -> np.ndarray:
    """A query vector saved with ``numpy.save`` ([E] or [1, E]; pickled objects are refused)."""
    try:
        vector = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise QueryError(f"vector file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # numpy's refusal of a file that is no .npy array
        raise QueryError(f"vector file {path} is not a numpy .npy array ({exc}); save it with numpy.save") from None
    if not isinstance(vector, np.ndarray):
        raise QueryError(f"vector file {path} is an .npz archive; save the one vector with numpy.save")
    return vector


class Searcher:
    """Named indices and, for text queries, the encoder of the model they were built with."""

    def __init__(self, stores: dict[str, Store], encoder: Any = None, fold_threshold: float = 0.95,
                 encoder_loader: Callable[[], Any] | None = None) -> None:
        if not stores:
            raise QueryError("no index given")
        self.stores, self.fold_threshold = stores, fold_threshold
        self._encoder, self._loader = encoder, encoder_loader

    @classmethod
    def open(cls, indices: Sequence[str], *, model: str = "", tokenizer: str = "", device: str = "auto",
             fold_threshold: float = 0.95) -> Searcher:
        """``indices``: ``name=folder`` or ``folder`` (named by its folder). The model (for text
        queries) loads on first use; by default it is the one the index's embeddings came from."""
        from pathlib import Path

        stores = {}
        for spec in indices:
            name, sep, folder = spec.partition("=")
            if not sep:
                name, folder = Path(spec).name, spec
            if name in stores:
                raise QueryError(f"two indices are named {name!r}; name them with name=folder")
            stores[name] = Store(folder)

        def load():
            from search.encoder import Encoder

            first = next(iter(stores.values()))
            spec = model or first.info.get("model") or ""
            if not spec:
                raise QueryError(f"index {first.folder} does not record its model; give the model (--model)")
            return Encoder.load(spec, tokenizer=tokenizer or first.info.get("tokenizer") or None, device=device)

        return cls(stores, fold_threshold=fold_threshold, encoder_loader=load)

    @property
    def encoder(self):
        if self._encoder is None:
            if self._loader is None:
                raise QueryError("text queries need a model; none was given")
            self._encoder = self._loader()
            for name, store in self.stores.items():
                if store.model_id != self._encoder.model_id:
                    raise QueryError(f"index {name} was built with model {store.model_id} but the query model is "
                                     f"{self._encoder.model_id} ({self._encoder.model_name}); give that index's model")
        return self._encoder

    def store(self, name: str) -> Store:
        if name not in self.stores:
            raise QueryError(f"unknown index {name!r}; this server has {sorted(self.stores)}")
        return self.stores[name]

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_texts(texts)

    def search(self, index: str, *, text: str | None = None, key: str | None = None,
               vector: Sequence[float] | np.ndarray | None = None, k: int = 10, offset: int = 0,
               filters: Filters | dict | None = None, fold: bool = False,
               text_vector: np.ndarray | None = None) -> Page:
        """One page of results for exactly one of ``text``, ``key`` (more like this clip) or ``vector``.
        ``text_vector``: the text already encoded (the server encodes concurrent queries together)."""
        store = self.store(index)
        given = [n for n, v in (("text", text), ("key", key), ("vector", vector))
                 if v is not None and not (isinstance(v, str) and not v)]
        if len(given) != 1:
            raise QueryError(f"give exactly one of text, key or vector (got {given or 'none'})")
        if k < 1 or offset < 0 or offset + k > MAX_RESULTS:
            raise QueryError(f"k={k}, offset={offset}: need k >= 1, offset >= 0 and offset + k <= {MAX_RESULTS}")
        filters = filters if isinstance(filters, Filters) else Filters.parse(filters)
        exclude = None
        if isinstance(text, str) and text:
            q = text_vector if text_vector is not None else self.encode_texts([text])[0]
        elif key is not None:
            exclude = store.row_of(key)
            if exclude is None:
                raise QueryError(f"key {key!r} is not in index {index}")
            q = store.vector(exclude)
        else:
            q = np.asarray(vector, dtype=np.float32).reshape(-1)
            if q.shape[0] != store.info["dim"] or not np.all(np.isfinite(q)):
                raise QueryError(f"vector: index {index} takes {store.info['dim']} finite numbers, got {q.shape[0]}")
            q = q / max(float(np.linalg.norm(q)), 1e-12)
        mask = store.mask(filters)
        want = offset + k + 1
        if not fold:
            ids, scores, mode = ranked(store, q, want, mask, exclude)
            groups = [(int(i), []) for i in ids]
        else:
            fetch = want * 4
            while True:
                ids, scores, mode = ranked(store, q, min(fetch, MAX_RESULTS * 4), mask, exclude)
                groups = fold_duplicates(store, ids, self.fold_threshold)
                if len(groups) >= want or len(ids) < fetch or fetch >= MAX_RESULTS * 4:
                    break
                fetch *= 4
        score_of = {int(i): float(s) for i, s in zip(ids, scores)}
        page = groups[offset:offset + k]
        rows = store.rows([r for r, _ in page])
        keys_of = {}
        dup_rows = [d for _, ds in page for d in ds]
        if dup_rows:
            keys_of = dict(zip(dup_rows, store.keys(dup_rows)))
        hits = [Hit(key=m["key"], score=round(score_of[r], 6), row=r, subtitle=m.get("subtitle") or "",
                    caption=m.get("caption") or "", duration=m.get("duration"), start=m.get("start"), end=m.get("end"),
                    meta=m["meta"], duplicates=[keys_of[d] for d in ds]) for (r, ds), m in zip(page, rows)]
        return Page(index=index, hits=hits, offset=offset, k=k, has_more=len(groups) > offset + k, mode=mode)

