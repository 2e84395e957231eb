"""``clipvip index``: a faiss index chosen for the collection, tuned, memory-mappable, growable.

Which index (``choose_index``), as autofaiss chooses: by the vector count and the memory budget.

- up to ``FLAT_MAX`` vectors: ``Flat``, exact, a few milliseconds a query at that size;
- while the raw vectors fit the budget: ``IVF{nlist},Flat`` with ``nlist`` about ``4 sqrt(n)``
  (a power of two); exact distances inside the probed lists, so recall depends on ``nprobe``
  alone. HNSW would be the other middle choice, but its graph cannot be memory-mapped and it
  neither adds nor filters as cheaply, so it is only built when asked for (``index_key``);
- beyond: ``OPQ{m},IVF{nlist}_HNSW32,PQ{m}``, ``m`` bytes a vector, the largest ``m`` that fits.

The folder holds ``index.faiss``, ``metadata.arrow`` (an uncompressed Arrow IPC file, one row per
vector id, memory-mapped by readers), ``vectors.npy`` (float16, memory-mapped: more-like-this,
near-duplicate folding, filtered exact search) and ``index.json`` (model id, dimension, the parts
it holds, the index key and the tuned search parameter with its measured recall and latency).
Building again over the same folder adds the parts it does not hold yet, with the trained
quantisers as they are, then measures recall again; parts of another model or dimension are
refused. The folder is replaced whole, so a reader never sees half an update.
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


class IndexBuildError(UserError):
    """An index that cannot be built or grown as asked; the message names the input and the fix."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class IndexConfig:
    embeddings: str = ""  # folder of embedding parts (``clipvip embed`` output)
    out: str = ""  # index folder
    memory_budget_gb: float = 8.0  # for the index's codes and lists (vectors.npy is memory-mapped beside it)
    latency_budget_ms: float = 10.0  # p50 per query
    target_recall: float = 0.95  # recall@10 against exact
    index_key: str = ""  # a faiss factory string instead of the automatic choice
    queries: int = 1000  # held-out queries for tuning
    rebuild: bool = False  # build from scratch even where an index exists
    seed: int = 0
    use_gpu: bool = True  # train and add on GPU when faiss has one


def choose_index(n: int, dim: int, memory_budget_bytes: float) -> tuple[str, str]:
    """``(faiss factory key, why)`` for ``n`` vectors of ``dim`` under the memory budget."""
    raw = n * (dim * 4 + 8)
    nlist = 2 ** max(6, min(16, round(math.log2(max(1.0, 4 * math.sqrt(n))))))
    if n <= FLAT_MAX:
        return "Flat", f"{n} vectors: exact search is fast at this size"
    if raw <= memory_budget_bytes:
        return f"IVF{nlist},Flat", (f"{n} vectors, {raw / 1e9:.2f} GB raw fits the {memory_budget_bytes / 1e9:.1f} GB "
                                    f"budget: inverted lists with exact distances")
    for m in (64, 48, 32, 16, 8):
        if dim % m == 0 and n * (m + 8) <= memory_budget_bytes:
            return (f"OPQ{m},IVF{nlist}_HNSW32,PQ{m}",
                    f"{n} vectors, {raw / 1e9:.1f} GB raw exceeds the {memory_budget_bytes / 1e9:.1f} GB budget: "
                    f"product quantisation at {m} bytes a vector")
    raise IndexBuildError(f"{n} vectors of dimension {dim} do not fit a memory budget of {memory_budget_bytes / 1e9:.2f} "
                      f"GB even at 8 bytes a vector; raise --memory-budget-gb")


# ---------------------------------------------------------------------------------------------
# Reading the parts


def complete_parts(embeddings: str) -> dict[str, int]:
    """Part name -> rows, for every part whose marker exists, in part order."""
    from pipeline.writer import ShardWriterConfig, finished_shards, read_json
    from shards import format as fmt

    root = embeddings.rstrip("/")
    if read_json(f"{root}/{fmt.RUN_FILE}") is None:
        raise IndexBuildError(f"--embeddings {embeddings} holds no embedding run ({fmt.RUN_FILE} is missing); give the "
                          "output folder of clipvip embed")
    done = finished_shards(ShardWriterConfig(output_dir=root, prefix=parts.PREFIX), range(10**7))
    return {parts.part_name(i): int(st["samples"]) for i, st in sorted(done.items())}


def read_parts(embeddings: str, names: list[str]):
    """The Arrow table of ``names`` (row order: part order, then row order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = embeddings.rstrip("/")
    tables = []
    for name in names:
        t = pq.read_table(f"{root}/{name}.parquet")
        tables.append(t.append_column("part", pa.array([name] * t.num_rows, pa.string())))
    return pa.concat_tables(tables, promote_options="default") if tables else None


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


def _train_and_add(key: str, vectors: np.ndarray, use_gpu: bool, seed: int):
    import faiss

    dim = vectors.shape[1]
    index = faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    on_gpu = use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    work = faiss.index_cpu_to_all_gpus(index) if on_gpu and not key.startswith("OPQ") else index
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist if "IVF" in key else 256
        rng = np.random.default_rng(seed)
        size = min(len(vectors), max(40 * nlist, 50_000))  # faiss wants >= 39 points a centroid
        sample = vectors[np.sort(rng.choice(len(vectors), size=size, replace=False))].astype(np.float32)
        work.train(sample)
    add_batches(work, vectors)
    return faiss.index_gpu_to_cpu(work) if work is not index else index


def add_batches(index, vectors: np.ndarray, batch: int = 1 << 17) -> None:
    for i in range(0, len(vectors), batch):
        index.add(np.ascontiguousarray(vectors[i:i + batch], dtype=np.float32))


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


def build(cfg: IndexConfig) -> dict[str, Any]:
    """Build ``cfg.out`` from ``cfg.embeddings``, or add the parts it lacks; returns ``index.json``."""
    import faiss
    import pyarrow as pa

    from common.files import replace_dir, temp_dir_beside

    out = Path(cfg.out)
    available = complete_parts(cfg.embeddings)
    if not available:
        raise IndexBuildError(f"--embeddings {cfg.embeddings} has no complete part yet; run clipvip embed first")
    info = None
    if (out / INFO_FILE).is_file() and not cfg.rebuild:
        info = json.loads((out / INFO_FILE).read_text())
        if info.get("format") != FORMAT:
            raise IndexBuildError(f"--out {out} holds an index of format {info.get('format')}; rebuild it (--rebuild)")
    elif out.exists() and any(out.iterdir()) and not (out / INFO_FILE).is_file():
        raise IndexBuildError(f"--out {out} is a non-empty folder that holds no index; give a new or empty folder")
    held = dict(info["parts"]) if info else {}
    changed = [p for p in held if p in available and available[p] != held[p]]
    if changed:
        raise IndexBuildError(f"parts {changed[:3]} changed since they were indexed (another embedding run in the same "
                          "folder?); rebuild the index (--rebuild)")
    new = [p for p in available if p not in held]
    if info is not None and not new:
        logger.info("index %s already holds all %d parts", out, len(held))
        return info
    t0 = time.perf_counter()
    table = read_parts(cfg.embeddings, new)
    model_id, dim = check_model(table, info, f"--embeddings {cfg.embeddings}")
    new_vectors = parts.to_numpy(table[parts.VECTOR])
    if info is None:
        vectors = new_vectors
        key, why = (cfg.index_key, "given (--index-key)") if cfg.index_key else \
            choose_index(len(vectors), dim, cfg.memory_budget_gb * 1e9)
        logger.info("building %s over %d vectors: %s", key, len(vectors), why)
        index = _train_and_add(key, vectors, cfg.use_gpu, cfg.seed)
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
    if info is None:
        choice, table_m = tune.tune(index, queries, truth, target_recall=cfg.target_recall,
                                    latency_budget_ms=cfg.latency_budget_ms, exclude_self=loo, self_ids=self_ids)
    else:
        choice = tune.measure(index, queries, truth, info["search"]["param"], loo, self_ids)
        table_m = [choice]
    from pipeline.writer import read_json

    # The embedding run's config says where its model is, for text queries (search, serve).
    loaded_from = read_json(f"{cfg.embeddings.rstrip('/')}/config.json") or {}
    suggestion = choose_index(len(vectors), dim, cfg.memory_budget_gb * 1e9)[0]
    info = {"format": FORMAT, "model_id": model_id, "dim": dim, "count": int(index.ntotal), "index_key": key,
            "why": why, "knob": tune.knob(index),
            "model": loaded_from.get("model", ""), "tokenizer": loaded_from.get("tokenizer", ""), "parts": {**held, **{p: available[p] for p in new}},
            "embeddings": str(Path(cfg.embeddings).resolve()) if "://" not in cfg.embeddings else cfg.embeddings,
            "search": {"param": choice.param, **tune.as_dict(choice), "queries": len(queries),
                       "queries_kind": "leave-one-out collection vectors" if loo else "held-out text vectors",
                       "target_recall": cfg.target_recall, "latency_budget_ms": cfg.latency_budget_ms},
            "sweep": [tune.as_dict(m) for m in table_m], "build_s": round(build_s, 3),
            "rebuild_suggested": suggestion.split(",")[0] != key.split(",")[0] and suggestion != key,
            "updated_at": time.time()}
    if info["rebuild_suggested"]:
        logger.warning("the collection has grown to %d vectors, for which %s would be chosen; --rebuild to switch",
                       len(vectors), suggestion)
    tmp = temp_dir_beside(out)
    try:
        _write_folder(tmp, index, meta, vectors, info)
        replace_dir(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _loo_truth(vectors: np.ndarray, queries: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    add_batches(flat, vectors)
    _, ids = flat.search(np.ascontiguousarray(queries, dtype=np.float32), tune.K + 1)
    return tune._drop_self(ids, tune.K, True, self_ids)
