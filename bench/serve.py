"""What the server costs: vector queries through ``clipvip serve``'s HTTP API under 1, 4 and 16
concurrent clients, against the same queries through the library's ``Searcher.search`` in one
process, on a 1M-vector index of synthetic 512-d embeddings (``demo/vectors.py``).

The index is built once through the real path (parts written as the embed job writes them, then
``search.index.build``) and kept in ``--work``. The server runs in its own process on loopback
(rate limit lifted); clients are threads with keep-alive connections. Raw-vector queries keep the
text encoder out of the measurement (its batching is tested separately).

Run: ``.venv/bin/python bench/serve.py --n 1000000 --queries 2000``
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = """
import sys
sys.path.insert(0, {root!r})
from aiohttp import web
from search.query import Searcher
from search.server import ServeConfig, create_app
searcher = Searcher.open([{index!r}])
cfg = ServeConfig(port={port}, rate_per_s=1e9, burst=10**9)
web.run_app(create_app(searcher, cfg), host="127.0.0.1", port={port}, access_log=None, print=lambda *a: print("up", flush=True))
"""


def build_index(work: Path, n: int, dim: int) -> Path:
    import pyarrow.parquet as pq

    from demo.vectors import clustered
    from search import parts
    from search.index import IndexConfig, build

    index = work / f"index-{n}"
    if (index / "index.json").is_file():
        return index
    emb = work / f"parts-{n}"
    emb.mkdir(parents=True, exist_ok=True)
    (emb / "_run.json").write_text(json.dumps({"format": 1, "model_id": "sha256:synthetic"}))
    vectors = clustered(n, dim, topics=max(10, n // 100), seed=0)
    per = 100_000
    for i in range(0, n, per):
        v = vectors[i:i + per]
        rows = [{"key": f"c{i + r:08d}", "duration": float(1 + (i + r) % 9), "caption": f"topic {(i + r) % 50}",
                 "subtitle": "", "meta": {}} for r in range(len(v))]
        table = parts.build_table(rows, v, {}, "sha256:synthetic", dim)
        name = parts.part_name(i // per)
        pq.write_table(table, emb / f"{name}.parquet")
        (emb / f"{name}_stats.json").write_text(json.dumps({"counts": {"ok": len(v)}, "samples": len(v)}))
    build(IndexConfig(embeddings=str(emb), out=str(index), queries=500))
    return index


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def run_clients(port: int, queries: np.ndarray, clients: int) -> dict[str, float]:
    def worker(chunk: np.ndarray) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        out = []
        for q in chunk:
            body = json.dumps({"vector": q.tolist(), "k": 10})
            t = time.perf_counter()
            conn.request("POST", "/api/search", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            out.append((time.perf_counter() - t) * 1e3)
            assert resp.status == 200, resp.status
        conn.close()
        return out

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(worker, np.array_split(queries, clients)) for x in part]
    wall = time.perf_counter() - t
    return {"clients": clients, "qps": round(len(queries) / wall, 1), **percentiles(lat)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--work", default="/tmp/clipvip-bench-serve")
    args = p.parse_args()
    from demo.vectors import clustered
    from search.query import Searcher

    index = build_index(Path(args.work), args.n, args.dim)
    queries = clustered(args.n + args.queries, args.dim, topics=max(10, args.n // 100), seed=0)[args.n:]
    lib = Searcher.open([str(index)])
    name = next(iter(lib.stores))
    for q in queries[:50]:
        lib.search(name, vector=q, k=10)  # warm the memory-mapped lists
    lat = []
    t = time.perf_counter()
    for q in queries:
        s = time.perf_counter()
        lib.search(name, vector=q, k=10)
        lat.append((time.perf_counter() - s) * 1e3)
    library = {"qps": round(len(queries) / (time.perf_counter() - t), 1), **percentiles(lat)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), index=str(index), port=port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        run_clients(port, queries[:100], 4)  # warm-up
        rows = [run_clients(port, queries, c) for c in (1, 4, 16)]
    finally:
        proc.terminate()
        proc.wait(30)
    info = lib.stores[name].info
    print(json.dumps({"n": args.n, "index": info["index_key"], "search_param": info["search"]["param"],
                      "library_one_process": library, "server": rows}))
    print("\n| path | clients | queries/s | p50 ms | p99 ms | server / library queries/s |")
    print("|---|---|---|---|---|---|")
    print(f"| library call | 1 | {library['qps']} | {library['p50_ms']} | {library['p99_ms']} | 1.00 |")
    for r in rows:
        print(f"| HTTP API | {r['clients']} | {r['qps']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['qps'] / library['qps']:.2f} |")


if __name__ == "__main__":
    main()
