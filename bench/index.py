"""Index kinds side by side at 100k and 1M synthetic 512-d vectors: build time, peak memory, index
size, recall@10 against exact search and single-query latency (p50/p99), each tuned as
``clipvip index`` tunes it (``search.tune.tune``: the smallest efSearch/nprobe reaching the target
recall with p50 within the latency budget, else the best recall within it).

Kinds: ``auto`` (what ``search.index.choose_index`` picks under the memory budget), ``hnsw``
(``HNSW32``, efConstruction ``search.index.EF_CONSTRUCTION``; ``hnsw80``: efConstruction 80),
``ivf`` (``IVF{nlist},Flat`` with the product's ``nlist``, about 4 sqrt(n)), ``ivf2x`` (twice the
lists), ``opq`` (``OPQ64,IVF{nlist}_HNSW32,PQ64``, the large-collection kind, its candidates
re-scored with the float16 vectors as searches do) and ``flat`` (exact search's latency).

Each (size, kind) runs in its own process, so its peak RSS is its own; the vectors and the exact
ground truth are made once per size and read from disk. Vectors are clustered unit vectors
(``demo/vectors.py``: 100 per topic, cosine ~0.7 to their topic's centre) because uniform random
512-d vectors have no near neighbours and say nothing about real embeddings; 1000 held-out queries
come from the same mixture.

Run: ``.venv/bin/python bench/index.py --sizes 100000 1000000``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("flat", "auto", "hnsw", "hnsw80", "ivf", "ivf2x", "opq")


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, in MB. Not ``ru_maxrss``:
    Linux keeps that across fork and exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def key_of(kind: str, n: int, dim: int, budget_gb: float) -> str:
    from search import index as idx

    nlist = idx.ivf_lists(n)
    return {"flat": "Flat", "auto": idx.choose_index(n, dim, budget_gb * 1e9)[0], "hnsw": f"HNSW{idx.HNSW_M}",
            "hnsw80": f"HNSW{idx.HNSW_M}", "ivf": f"IVF{nlist},Flat", "ivf2x": f"IVF{2 * nlist},Flat",
            "opq": f"OPQ64,IVF{nlist}_HNSW32,PQ64"}[kind]


def one(data: Path, n: int, kind: str, budget_gb: float, latency_ms: float, target: float) -> dict:
    import faiss
    import numpy as np

    from search import index as idx
    from search import tune

    vectors = np.load(data / f"vectors{n}.npy")
    queries, truth = np.load(data / "queries.npy"), np.load(data / f"truth{n}.npy")
    dim = vectors.shape[1]
    key = key_of(kind, n, dim, budget_gb)
    rss_data = _status_mb("VmRSS")
    efc = 80 if kind == "hnsw80" else idx.EF_CONSTRUCTION
    t0 = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        idx.add_batches(index, vectors)
    else:
        index = idx.new_index(key, vectors, use_gpu=False, seed=0, ef_construction=efc)
    build_s = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    stored = vectors.astype(np.float16) if tune.compressed(key) else None
    if kind == "flat":
        choice = tune.measure(index, queries[:200], truth[:200], None)
        sweep = [choice]
    else:
        choice, sweep = tune.tune(index, queries, truth, target_recall=target, latency_budget_ms=latency_ms,
                                  vectors=stored)
    with tempfile.NamedTemporaryFile(dir=data, suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        size_mb = os.path.getsize(f.name) / 1e6
    return {"n": n, "kind": kind, "index": key, "build_s": round(build_s, 1), "peak_rss_mb": round(peak),
            "data_rss_mb": round(rss_data), "index_mb": round(size_mb), "knob": tune.knob(index),
            "param": choice.param, "recall_at_10": round(choice.recall_at_10, 4), "p50_ms": round(choice.p50_ms, 2),
            "p99_ms": round(choice.p99_ms, 2), "sweep": [tune.as_dict(m) for m in sweep],
            "ef_construction": efc if key.startswith("HNSW") else None,
            "load": [round(x, 1) for x in os.getloadavg()]}


def make_data(data: Path, sizes: list[int], dim: int, queries: int) -> None:
    """The vectors of every size (the same mixture: topics scale with n) and their exact top-10."""
    import numpy as np

    from demo.vectors import clustered
    from search import tune

    for n in sizes:
        both = clustered(n + queries, dim, topics=max(10, n // 100), noise=1.0, seed=0)
        np.save(data / f"vectors{n}.npy", both[:n])
        if n == sizes[0]:
            np.save(data / "queries.npy", both[n:])
        q = np.load(data / "queries.npy")
        np.save(data / f"truth{n}.npy", tune.exact_neighbours(both[:n], q, tune.K))
        print(f"data: {n} vectors and their exact top-10 for {len(q)} queries", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--memory-budget-gb", type=float, default=8.0)
    p.add_argument("--latency-budget-ms", type=float, default=10.0)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--data", help="folder for the vectors and ground truth (default: a temporary one)")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.data), int(args.one[0]), args.one[1], args.memory_budget_gb,
                             args.latency_budget_ms, args.target_recall)))
        return
    with tempfile.TemporaryDirectory(dir=args.data) as tmp:
        data = Path(tmp)
        make_data(data, args.sizes, args.dim, args.queries)
        rows = []
        for n in args.sizes:
            for kind in args.kinds:
                out = subprocess.run([sys.executable, __file__, "--one", str(n), kind, "--data", str(data),
                                      "--memory-budget-gb", str(args.memory_budget_gb), "--latency-budget-ms",
                                      str(args.latency_budget_ms), "--target-recall", str(args.target_recall)],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n| vectors | kind | index | build s | peak RSS MB (data) | index MB | knob | recall@10 | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        knob = f"{r['knob']} {r['param']}" if r["knob"] else "exact"
        print(f"| {r['n']:,} | {r['kind']} | {r['index']} | {r['build_s']} | {r['peak_rss_mb']:,} ({r['data_rss_mb']:,}) | "
              f"{r['index_mb']:,} | {knob} | {r['recall_at_10']} | {r['p50_ms']} | {r['p99_ms']} |")


if __name__ == "__main__":
    main()
