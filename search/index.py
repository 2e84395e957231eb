"""``clipvip index``: a faiss index chosen for the collection, tuned, memory-mapped, growable.

Which index (``choose_index``). The rule: of the index kinds whose memory fits the budget, the one
with the best recall@10 within the latency budget. On CPU, for single queries, that order does not
change with the collection: ``bench/index.py`` measured HNSW above IVF-Flat above OPQ-IVF-PQ at
100k and 1M 512-d vectors (BENCHMARKS.md, "Search"), the order autofaiss uses. So the first kind
below that fits is built, and then its search knob is tuned:

- up to ``FLAT_MAX`` vectors: ``Flat``, exact (recall 1): a query scans at most 41 MB of 512-d
  vectors, about 2 ms on a 2-core CPU;
- ``HNSW{M}`` (``M`` = 32, or the largest from 8 up that fits: 4 dim + 8 M bytes a vector), graph
  built with efConstruction ``EF_CONSTRUCTION``; its vectors are memory-mapped, its graph is read
  into memory (~8 M bytes a vector);
- ``IVF{nlist},Flat`` (``nlist`` about ``4 sqrt(n)``, a power of two) while the raw vectors fit,
  inverted lists memory-mapped;
- beyond: ``OPQ{m},IVF{nlist}_HNSW32,PQ{m}``, ``m`` bytes a vector, the largest ``m`` that fits;
  searches re-score ten times the candidates with the stored vectors (``search.query``).

Then the search knob is tuned to the latency budget (``search.tune``): the smallest ``efSearch``
(or ``nprobe``) whose recall@10 against exact search reaches ``target_recall`` with p50 within
``latency_budget_ms``, else the best recall within the budget (a warning says the target was
missed). ``index_key`` replaces the choice with any faiss factory string.

The folder holds ``index.faiss``, ``metadata.arrow`` (an uncompressed Arrow IPC file, one row per
vector id, memory-mapped by readers), ``vectors.npy`` (float16, memory-mapped: more-like-this,
near-duplicate folding, filtered exact search) and ``index.json`` (model id, dimension, the parts
it holds, the index key and the tuned search parameter with its measured recall and latency).
Building again over the same folder adds the parts it does not hold yet (HNSW inserts them into
its graph; IVF keeps its trained quantisers), then measures recall again; parts of another model
or dimension are refused. The folder is replaced whole, so a reader never sees half an update.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from search import parts, tune

logger = logging.getLogger(__name__)

INDEX_FILE, META_FILE, VECTORS_FILE, INFO_FILE = "index.faiss", "metadata.arrow", "vectors.npy", "index.json"
FORMAT = 1
FLAT_MAX = 20_000
HNSW_M, EF_CONSTRUCTION = 32, 40
GIVEN = "given (--index-key)"


class IndexBuildError(UserError):
    """An index that cannot be built or grown as asked; the message names the input and the fix."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class IndexConfig:
    embeddings: str = ""  # folder of embedding parts (``clipvip embed`` output)
    out: str = ""  # index folder
    memory_budget_gb: float = 8.0  # for the index's codes, graph and lists (vectors.npy is memory-mapped beside it)
    latency_budget_ms: float = 10.0  # p50 per query
    target_recall: float = 0.95  # recall@10 against exact
    index_key: str = ""  # a faiss factory string instead of the automatic choice
    queries: int = 1000  # held-out queries for tuning
    rebuild: bool = False  # build from scratch even where an index exists
    seed: int = 0
    use_gpu: bool = True  # train and add IVF indices on GPU when faiss has one


def choose_index(n: int, dim: int, memory_budget_bytes: float) -> tuple[str, str]:
    """``(faiss factory key, why)`` for ``n`` vectors of ``dim`` under the memory budget (see the
    module docstring for the rule)."""
    budget = f"the {memory_budget_bytes / 1e9:.1f} GB budget"
    if n <= FLAT_MAX:
        return "Flat", f"{n} vectors: exact search is fast at this size"
    m = min(HNSW_M, int((memory_budget_bytes / n - 4 * dim) // 8))
    if m >= 8:
        size = n * (4 * dim + 8 * m)
        return f"HNSW{m}", (f"{n} vectors, {size / 1e9:.2f} GB as an HNSW{m} graph with its vectors, within {budget}: "
                            "the best recall within a latency budget")
    raw = n * (dim * 4 + 8)
    nlist = ivf_lists(n)
    if raw <= memory_budget_bytes:
        return f"IVF{nlist},Flat", (f"{n} vectors, {raw / 1e9:.2f} GB raw fits {budget} but no HNSW graph with them: "
                                    "inverted lists with exact distances")
    for m in (64, 48, 32, 16, 8):
        if dim % m == 0 and n * (m + 8) <= memory_budget_bytes:
            return (f"OPQ{m},IVF{nlist}_HNSW32,PQ{m}",
                    f"{n} vectors, {raw / 1e9:.1f} GB raw exceeds {budget}: product quantisation at {m} bytes a "
                    "vector, candidates re-scored with the stored vectors")
    raise IndexBuildError(f"{n} vectors of dimension {dim} do not fit a memory budget of {memory_budget_bytes / 1e9:.2f} "
                          f"GB even at 8 bytes a vector; raise --memory-budget-gb")


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest ``4 sqrt(n)``, from 64 to 65536."""
    return 2 ** max(6, min(16, round(math.log2(max(1.0, 4 * math.sqrt(n))))))


def read_flags(info: dict[str, Any]) -> int:
    """faiss read flags that map the index file instead of reading it: the inverted lists of an IVF
    index, the vectors (flat codes) of Flat and HNSW (faiss maps one or the other, not both)."""
    import faiss

    mapped = faiss.IO_FLAG_MMAP if info.get("knob") == "nprobe" else faiss.IO_FLAG_MMAP_IFC
    return mapped | faiss.IO_FLAG_READ_ONLY


def read_info(folder: Path, error: type[UserError] = IndexBuildError) -> dict[str, Any] | None:
    """The ``index.json`` of an index folder, None when there is none, ``error`` naming the file
    when it is not readable JSON."""
    file = Path(folder) / INFO_FILE
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{file} is not valid JSON ({exc}); rebuild the index (clipvip index --rebuild)") from None


# ---------------------------------------------------------------------------------------------
# Reading the parts


def check_model(table, info: dict[str, Any] | None, source: str) -> tuple[str, int]:
    """The parts' model id and dimension; refuse a mix, or a mismatch with the existing index."""
    import pyarrow.compute as pc

    ids = pc.unique(table["model_id"]).to_pylist()
    if len(ids) != 1:
        raise IndexBuildError(f"{source} mixes vectors of several models {ids}; index each model's run on its own")
    dim = table.schema.field(parts.VECTOR).type.list_size
    if info is not None and (info["model_id"] != ids[0] or info["dim"] != dim):
        raise IndexBuildError(f"{source} holds vectors of model {ids[0]} (dimension {dim}) but the index holds model "
                          f"{info['model_id']} (dimension {info['dim']}); build a new index (another --out)")
    return ids[0], dim


def held_out_queries(table, vectors: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """(queries, leave-one-out?, their row ids): text vectors when the parts have them, else collection rows."""
    rng = np.random.default_rng(seed)
    for name in parts.TEXT_VECTORS:
        if name in table.column_names:
            text = parts.to_numpy(table[name]).astype(np.float32)
            pick = rng.choice(len(text), size=min(n, len(text)), replace=False)
            return text[np.sort(pick)], False, None
    pick = np.sort(rng.choice(len(vectors), size=min(n, len(vectors)), replace=False))
    return vectors[pick].astype(np.float32), True, pick


# ---------------------------------------------------------------------------------------------
# Building


def new_index(key: str, vectors: np.ndarray, use_gpu: bool, seed: int, ef_construction: int = EF_CONSTRUCTION):
    """The index ``key`` over ``vectors``: trained on a sample when it needs training (on GPU when
    faiss has one, for IVF kinds), an HNSW graph built with ``ef_construction``."""
    import faiss

    dim = vectors.shape[1]
    index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efConstruction = ef_construction
    on_gpu = use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 and key.startswith("IVF")
    work = faiss.index_cpu_to_all_gpus(index) if on_gpu else index
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist if "IVF" in key else 256
        rng = np.random.default_rng(seed)
        size = min(len(vectors), max(40 * nlist, 50_000))  # faiss wants >= 39 points a centroid
        sample = vectors[np.sort(rng.choice(len(vectors), size=size, replace=False))].astype(np.float32)
        work.train(sample)
    add_batches(work, vectors)
    return faiss.index_gpu_to_cpu(work) if work is not index else index


def add_batches(index, vectors: np.ndarray, batch: int = 1 << 17) -> None:
    """Add float16/float32 ``vectors`` in float32 batches (an HNSW graph of millions takes minutes: logged)."""
    for i in range(0, len(vectors), batch):
        index.add(np.ascontiguousarray(vectors[i:i + batch], dtype=np.float32))
        if len(vectors) > batch:
            logger.info("added %d of %d vectors", min(i + batch, len(vectors)), len(vectors))


def metadata_table(table):
    """The metadata columns (``parts.METADATA_COLUMNS`` plus ``part``) with each meta field as its own
    ``m.<field>`` text column, so any manifest column can be filtered on."""
    import pyarrow as pa

    keep = [c for c in (*parts.METADATA_COLUMNS, "part") if c in table.column_names]
    meta = table.select(keep)
    rows = [json.loads(s) if s else {} for s in table["meta"].to_pylist()]
    fields = sorted({k for r in rows for k, v in r.items() if isinstance(v, (str, int, float, bool))})
    for f in fields:
        values = [r.get(f) for r in rows]
        meta = meta.append_column(f"m.{f}", pa.array([None if v is None or isinstance(v, (dict, list)) else
                                                      (json.dumps(v) if isinstance(v, bool) else str(v))
                                                      for v in values], pa.string()))
    return meta


def _write_folder(tmp: Path, index, meta, vectors: np.ndarray, info: dict[str, Any]) -> None:
    import faiss
    import pyarrow as pa

    faiss.write_index(index, str(tmp / INDEX_FILE))
    with pa.OSFile(str(tmp / META_FILE), "wb") as sink, pa.ipc.new_file(sink, meta.schema) as writer:
        writer.write_table(meta, max_chunksize=1 << 16)
    np.save(tmp / VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float16))
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")


def _existing(cfg: IndexConfig, available: dict[str, int]) -> dict[str, Any] | None:
    """The ``index.json`` of the index to grow (None: build anew); refuses an ``--out`` that cannot be
    grown or replaced as asked."""
    out = Path(cfg.out)
    if out.is_file():
        raise IndexBuildError(f"--out {out} is a file; give a folder for the index")
    info = read_info(out)
    if info is None and out.is_dir() and any(out.iterdir()):
        raise IndexBuildError(f"--out {out} is a non-empty folder that holds no index; give a new or empty folder")
    if info is None or cfg.rebuild:
        return None
    if info.get("format") != FORMAT:
        raise IndexBuildError(f"--out {out} holds an index of format {info.get('format')}; rebuild it (--rebuild)")
    changed = [p for p, rows in info["parts"].items() if p in available and available[p] != rows]
    if changed:
        raise IndexBuildError(f"parts {changed[:3]} changed since they were indexed (another embedding run in the same "
                              "folder?); rebuild the index (--rebuild)")
    return info


def build(cfg: IndexConfig) -> dict[str, Any]:
    """Build ``cfg.out`` from ``cfg.embeddings``, or add the parts it lacks; returns ``index.json``."""
    import faiss
    import pyarrow as pa

    from common.files import built_aside
    from pipeline.writer import read_json

    out = Path(cfg.out)
    available = parts.complete_parts(cfg.embeddings)
    if not available:
        raise IndexBuildError(f"--embeddings {cfg.embeddings} has no complete part yet; run clipvip embed first")
    info = _existing(cfg, available)
    held = dict(info["parts"]) if info else {}
    new = [p for p in available if p not in held]
    if info is not None and not new:
        logger.info("index %s already holds all %d parts", out, len(held))
        return info
    t0 = time.perf_counter()
    table = parts.read_parts(cfg.embeddings, new)
    model_id, dim = check_model(table, info, f"--embeddings {cfg.embeddings}")
    new_vectors = parts.to_numpy(table[parts.VECTOR])
    if info is None:
        vectors = new_vectors
        key, why = (cfg.index_key, GIVEN) if cfg.index_key else \
            choose_index(len(vectors), dim, cfg.memory_budget_gb * 1e9)
        logger.info("building %s over %d vectors: %s", key, len(vectors), why)
        index = new_index(key, vectors, cfg.use_gpu, cfg.seed)
        meta = metadata_table(table)
    else:
        index = faiss.read_index(str(out / INDEX_FILE))
        old_vectors = np.load(out / VECTORS_FILE, mmap_mode="r")
        add_batches(index, new_vectors)
        vectors = np.concatenate([old_vectors, new_vectors])
        old_meta = pa.ipc.open_file(pa.memory_map(str(out / META_FILE))).read_all()
        meta = pa.concat_tables([old_meta, metadata_table(table)], promote_options="default")
        key, why = info["index_key"], info["why"]
        logger.info("added %d vectors from %d new part(s) to %s (%d in all)", len(new_vectors), len(new),
                    key, len(vectors))
    build_s = time.perf_counter() - t0
    queries, loo, self_ids = held_out_queries(table, vectors, cfg.queries, cfg.seed)
    truth = tune.exact_neighbours(vectors, queries, tune.K, exclude_self=loo) if not loo else \
        _loo_truth(vectors, queries, self_ids)
    stored = vectors if tune.compressed(key) else None  # what a search re-scores a quantised index's candidates with
    if info is None:
        choice, table_m = tune.tune(index, queries, truth, target_recall=cfg.target_recall,
                                    latency_budget_ms=cfg.latency_budget_ms, exclude_self=loo, self_ids=self_ids,
                                    vectors=stored)
    else:
        choice = tune.measure(index, queries, truth, info["search"]["param"], loo, self_ids, stored)
        table_m = [choice]
    # The embedding run's config says where its model is, for text queries (search, serve).
    run_cfg = read_json(f"{cfg.embeddings.rstrip('/')}/config.json") or {}
    suggestion = choose_index(len(vectors), dim, cfg.memory_budget_gb * 1e9)[0]
    info = {"format": FORMAT, "model_id": model_id, "dim": dim, "count": int(index.ntotal), "index_key": key,
            "why": why, "knob": tune.knob(index),
            **({"ef_construction": int(index.hnsw.efConstruction)} if isinstance(index, faiss.IndexHNSW) else {}),
            "model": run_cfg.get("model", ""), "tokenizer": run_cfg.get("tokenizer", ""),
            "parts": {**held, **{p: available[p] for p in new}},
            "embeddings": str(Path(cfg.embeddings).resolve()) if "://" not in cfg.embeddings else cfg.embeddings,
            "search": {"param": choice.param, **tune.as_dict(choice), "queries": len(queries),
                       "queries_kind": "leave-one-out collection vectors" if loo else "held-out text vectors",
                       "target_recall": cfg.target_recall, "latency_budget_ms": cfg.latency_budget_ms},
            "sweep": [tune.as_dict(m) for m in table_m], "build_s": round(build_s, 3),
            "rebuild_suggested": why != GIVEN and suggestion.split(",")[0] != key.split(",")[0],
            "updated_at": time.time()}
    if info["rebuild_suggested"]:
        logger.warning("the collection has grown to %d vectors, for which %s would be chosen; --rebuild to switch",
                       len(vectors), suggestion)
    with built_aside(out) as tmp:
        _write_folder(tmp, index, meta, vectors, info)
    return info


def _loo_truth(vectors: np.ndarray, queries: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    add_batches(flat, vectors)
    _, ids = flat.search(np.ascontiguousarray(queries, dtype=np.float32), tune.K + 1)
    return tune._drop_self(ids, tune.K, True, self_ids)
