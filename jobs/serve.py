"""``clipvip serve``: an HTTP JSON API and a search page over one or more indices.

Example::

    clipvip serve --index demo=demo_out/search/index --port 8080
    # then open http://127.0.0.1:8080/ (from another machine: ssh -L 8080:127.0.0.1:8080 lab-machine)

It binds 127.0.0.1 unless ``--host`` says otherwise, loads the model once (the one the first
index was embedded with, or ``--model``) and folds near-duplicates at ``--fold-threshold`` or the
threshold of a ``clipvip dedup`` report (``--dedup``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs.common import UserError, cli_main, offline_defaults, setup_logging
from jobs.search import add_model_args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip serve", description=__doc__.splitlines()[0])
    p.add_argument("--index", action="append", required=True, metavar="[NAME=]FOLDER", help="repeatable")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    add_model_args(p, first="the first index")
    p.add_argument("--fold-threshold", type=float, default=None, help="default 0.95, or --dedup's threshold")
    p.add_argument("--dedup", help="a clipvip dedup output folder whose threshold folding uses")
    p.add_argument("--rate", type=float, default=20.0, help="API requests a second per client")
    p.add_argument("--max-body-kb", type=int, default=64)
    args = p.parse_args(argv)
    setup_logging("INFO")
    offline_defaults()
    from search.dedup_report import read_threshold

    threshold = args.fold_threshold or (read_threshold(args.dedup) if args.dedup else 0.95)
    if not 0 < threshold <= 1 or args.rate <= 0 or args.max_body_kb < 1 or not 0 < args.port < 65536:
        raise UserError("--fold-threshold must be in (0, 1], --rate and --max-body-kb positive, --port 1-65535")
    from search.query import Searcher
    from search.server import ServeConfig, serve

    searcher = Searcher.open(args.index, model=args.model, tokenizer=args.tokenizer, device=args.device,
                             fold_threshold=threshold)
    searcher.encoder  # one model load, now: a wrong model fails here, not at the first query
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("clipvip.serve").warning("listening on %s: anyone who can reach this address can search "
                                                   "and stream the clips", args.host)
    print(f"serving {', '.join(searcher.stores)} on http://{args.host}:{args.port}/", flush=True)
    serve(searcher, ServeConfig(host=args.host, port=args.port, rate_per_s=args.rate, burst=int(2 * args.rate),
                                max_body_bytes=args.max_body_kb * 1024))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip serve", main))
