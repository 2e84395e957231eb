"""The index at 100k and 1M synthetic 512-d vectors: build time, peak memory, recall@10 against exact
search and single-query latency, for the index ``clipvip index`` chooses (and exact Flat beside it).

Each size runs in its own process so its peak RSS is its own. Vectors are clustered unit vectors
(``demo/vectors.py``: 100 per topic, cosine ~0.7 to their topic's centre) because uniform random
512-d vectors have no near neighbours and say nothing about real embeddings; 1000 held-out queries
come from the same mixture.

Run: ``.venv/bin/python bench/index.py --sizes 100000 1000000``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(n: int, dim: int, queries: int, budget_gb: float, latency_ms: float, target: float) -> dict:
    import faiss
    import numpy as np

    from demo.vectors import clustered
    from search import index as idx
    from search import tune

    topics = max(10, n // 100)
    both = clustered(n + queries, dim, topics=topics, noise=1.0, seed=0)
    vectors, q = both[:n], both[n:]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    key, why = idx.choose_index(n, dim, budget_gb * 1e9)
    t0 = time.perf_counter()
    index = idx._train_and_add(key, vectors, use_gpu=False, seed=0)
    build_s = time.perf_counter() - t0
    peak_build_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    truth = tune.exact_neighbours(vectors, q, tune.K)
    exact_s = time.perf_counter() - t0
    choice, sweep = tune.tune(index, q, truth, target_recall=target, latency_budget_ms=latency_ms)
    flat = faiss.IndexFlatIP(dim)
    idx.add_batches(flat, vectors)
    flat_m = tune.measure(flat, q[:200], truth[:200], None)
    return {"n": n, "dim": dim, "index": key, "why": why, "build_s": round(build_s, 1),
            "peak_rss_mb_after_build": round(peak_build_mb), "rss_mb_data_only": round(rss0 / 1024),
            "index_bytes": int(faiss.serialize_index(index).nbytes), "param": choice.param,
            "recall_at_10": round(choice.recall_at_10, 4), "p50_ms": round(choice.p50_ms, 3),
            "p99_ms": round(choice.p99_ms, 3), "sweep": [tune.as_dict(m) for m in sweep],
            "flat_p50_ms": round(flat_m.p50_ms, 2), "exact_ground_truth_s": round(exact_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--memory-budget-gb", type=float, default=8.0)
    p.add_argument("--latency-budget-ms", type=float, default=10.0)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dim, args.queries, args.memory_budget_gb, args.latency_budget_ms,
                             args.target_recall)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(args.dim), "--queries",
                              str(args.queries), "--memory-budget-gb", str(args.memory_budget_gb),
                              "--latency-budget-ms", str(args.latency_budget_ms), "--target-recall",
                              str(args.target_recall)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| vectors | index | build s | peak RSS MB | index MB | nprobe | recall@10 | p50 ms | p99 ms | Flat p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['index']} | {r['build_s']} | {r['peak_rss_mb_after_build']} | "
              f"{r['index_bytes'] / 1e6:.0f} | {r['param']} | {r['recall_at_10']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['flat_p50_ms']} |")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        growth = (b["build_s"] / a["build_s"]) / (b["n"] / a["n"])
        print(f"\nbuild time grew {b['build_s'] / a['build_s']:.1f}x for {b['n'] / a['n']:.0f}x the vectors "
              f"({growth:.2f}x per vector)")


if __name__ == "__main__":
    main()
