"""``clipvip index``: build (or grow) a faiss index over embedding parts, tuned to a latency budget.

Example::

    clipvip index --embeddings embeddings/ --out index/ --memory-budget-gb 16 --latency-budget-ms 10

Run it again after embedding more parts into the same folder: it adds the new parts without a
rebuild. Prints the index chosen, why, and its measured recall@10 and latency (also in index.json).
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import UserError, cli_main, offline_defaults, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip index", description=__doc__.splitlines()[0])
    p.add_argument("--embeddings", required=True, help="the output folder of clipvip embed")
    p.add_argument("--out", required=True, help="the index folder")
    p.add_argument("--memory-budget-gb", type=float, default=8.0)
    p.add_argument("--latency-budget-ms", type=float, default=10.0, help="p50 per query")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 against exact search")
    p.add_argument("--index-key", default="", help="a faiss factory string instead of the automatic choice")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries for tuning")
    p.add_argument("--rebuild", action="store_true", help="build anew even where an index exists")
    args = p.parse_args(argv)
    setup_logging("INFO")
    offline_defaults()
    problems = []
    if args.memory_budget_gb <= 0 or args.latency_budget_ms <= 0:
        problems.append("--memory-budget-gb and --latency-budget-ms must be > 0")
    if not 0 < args.target_recall <= 1:
        problems.append(f"--target-recall {args.target_recall} must be in (0, 1]")
    if args.queries < 10:
        problems.append(f"--queries {args.queries} must be at least 10")
    if problems:
        raise UserError("; ".join(problems))
    from search.index import IndexConfig, build

    info = build(IndexConfig(embeddings=args.embeddings, out=args.out, memory_budget_gb=args.memory_budget_gb,
                             latency_budget_ms=args.latency_budget_ms, target_recall=args.target_recall,
                             index_key=args.index_key, queries=args.queries, rebuild=args.rebuild))
    s = info["search"]
    knob = f"{info['knob']}={s['param']}" if info["knob"] else "exact"
    print(f"index {args.out}: {info['index_key']} over {info['count']} vectors ({info['why']})")
    print(f"search {knob}: recall@10 {s['recall_at_10']:.4f} against exact on {s['queries']} {s['queries_kind']}, "
          f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms (target recall {s['target_recall']}, budget "
          f"{s['latency_budget_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip index", main))
