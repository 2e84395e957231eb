"""``clipvip dedup``: semantic near-duplicates of an embedded collection, with a report to choose
the threshold by and the exclusion list the trainer reads (``data.exclude_keys``).

Example::

    clipvip dedup --embeddings embeddings/ --threshold 0.95 --out dedup/
    clipvip pretrain --config pretrain_b32 data.exclude_keys=dedup/drop_keys.txt ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.common import UserError, cli_main, offline_defaults, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip dedup", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="the output folder of clipvip embed")
    src.add_argument("--index", help="an index folder (its memory-mapped vectors)")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine at or above which a clip is dropped")
    p.add_argument("--clusters", type=int, default=0, help="K-means clusters (default: about 100 clips each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for drop_keys.txt, pairs.parquet, report.md, dedup.json")
    args = p.parse_args(argv)
    setup_logging("INFO")
    offline_defaults()
    if not 0 < args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold} must be in (0, 1]")
    if args.clusters < 0:
        raise UserError(f"--clusters {args.clusters} must be >= 0")
    if Path(args.out).is_file():
        raise UserError(f"--out {args.out} is a file; give a folder")
    from search import parts
    from search.dedup import semantic_dedup
    from search.dedup_report import write
    from search.store import Store

    if args.embeddings:
        names = list(parts.complete_parts(args.embeddings))
        if not names:
            raise UserError(f"--embeddings {args.embeddings} has no complete part yet")
        table = parts.read_parts(args.embeddings, names)
        keys, vectors = table["key"].to_pylist(), parts.to_numpy(table[parts.VECTOR])
        model_id = table["model_id"][0].as_py()
    else:
        store = Store(args.index)
        keys, vectors, model_id = store.meta["key"].to_pylist(), store.vectors, store.model_id
    result = semantic_dedup(keys, vectors, args.threshold, n_clusters=args.clusters, seed=args.seed)
    summary = write(result, args.out, {"source": args.embeddings or args.index, "model_id": model_id})
    print(f"{summary['dropped']} of {summary['clips']} clips are near-duplicates at cosine >= {args.threshold:g} "
          f"({summary['clusters']} clusters); by threshold: {summary['drops_by_threshold']}")
    print(f"exclusion list: {Path(args.out) / 'drop_keys.txt'}; report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip dedup", main))
