"""``clipvip synth``: write synthetic H.264 clips (moving coloured shapes) and a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import UserError
from jobs.common import cli_main
from demo.synth import synthesize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip synth", description=__doc__)
    p.add_argument("out_dir", help="folder for the clips and manifest.jsonl")
    p.add_argument("-n", "--num-clips", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="clip", help="key prefix")
    p.add_argument("--uniform", action="store_true", help="one format for all clips (224x224, 6 fps, 4 s)")
    p.add_argument("--span-fraction", type=float, default=0.0,
                   help="fraction of rows that are start/end spans inside longer videos")
    args = p.parse_args(argv)
    problems = []
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        problems.append(f"out_dir {args.out_dir} is a file; give a new or existing folder")
    if args.num_clips < 1:
        problems.append(f"--num-clips {args.num_clips} must be at least 1")
    if not 0.0 <= args.span_fraction <= 1.0:
        problems.append(f"--span-fraction {args.span_fraction} must be between 0 and 1")
    if problems:
        raise UserError("; ".join(problems))
    manifest = synthesize(args.out_dir, args.num_clips, args.seed, prefix=args.prefix,
                          vary_format=not args.uniform, span_fraction=args.span_fraction, progress=True)
    print(f"wrote {args.num_clips} clips and {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip synth", main))
