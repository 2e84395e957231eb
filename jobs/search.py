"""``clipvip search``: the top clips of an index for a text, a clip ("more like this") or a vector.

Examples::

    clipvip search --index index/ --text "a red circle moving left" -k 5
    clipvip search --index index/ --like clip000123 --duration-min 2 --where color=red --fold

Prints rank, score, key, duration, subtitle and caption; ``--json`` prints the page as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import UserError, cli_main, offline_defaults, setup_logging


def add_filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration-min", type=float)
    p.add_argument("--duration-max", type=float)
    p.add_argument("--subtitle", default="", help="substring of the subtitle (any case)")
    p.add_argument("--caption", default="", help="substring of the caption (any case)")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="a metadata (manifest) column equal to a value, compared as text (repeatable)")


def add_model_args(p: argparse.ArgumentParser, first: str = "the index") -> None:
    """The model that encodes text queries (search and serve)."""
    p.add_argument("--model", default="", help=f"default: the model {first} was embedded with")
    p.add_argument("--tokenizer", default="", help="default: the one recorded with that model")
    p.add_argument("--device", default="auto")


def filters_from(args: argparse.Namespace) -> dict:
    cols = {}
    for w in args.where:
        col, sep, value = w.partition("=")
        if not sep or not col:
            raise UserError(f"--where {w!r}: write COLUMN=VALUE")
        cols[col] = value
    return {"duration_min": args.duration_min, "duration_max": args.duration_max, "subtitle": args.subtitle,
            "caption": args.caption, "columns": cols}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip search", description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="index folder (clipvip index --out)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a text query")
    q.add_argument("--like", metavar="KEY", help="more like this clip")
    q.add_argument("--vector", metavar="FILE.npy", help="a query vector saved with numpy")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--fold", action="store_true", help="fold near-duplicates into the better-ranked clip")
    p.add_argument("--fold-threshold", type=float, default=0.95)
    add_model_args(p)
    p.add_argument("--json", action="store_true")
    add_filter_args(p)
    args = p.parse_args(argv)
    setup_logging("WARNING")
    offline_defaults()
    from search.query import Searcher, read_query_vector

    vector = read_query_vector(args.vector) if args.vector else None
    searcher = Searcher.open([args.index], model=args.model, tokenizer=args.tokenizer, device=args.device,
                             fold_threshold=args.fold_threshold)
    name = next(iter(searcher.stores))
    page = searcher.search(name, text=args.text, key=args.like, vector=vector, k=args.k, offset=args.offset,
                           filters=filters_from(args), fold=args.fold)
    if args.json:
        print(json.dumps(page.to_dict(), indent=1, default=str))
        return 0
    what = f"text {args.text!r}" if args.text else (f"more like {args.like}" if args.like else "vector")
    print(f"{what} in {args.index} ({page.mode}): results {page.offset + 1}-{page.offset + len(page.hits)}"
          f"{', more follow' if page.has_more else ''}")
    for i, h in enumerate(page.hits, page.offset + 1):
        dur = f"{h.duration:.1f}s" if h.duration is not None else "-"
        dups = f"  (+{len(h.duplicates)} near-duplicates)" if h.duplicates else ""
        print(f"{i:3d}  {h.score:.4f}  {h.key}  {dur}  subtitle: {h.subtitle[:60]!r}  caption: {h.caption[:60]!r}{dups}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip search", main))
