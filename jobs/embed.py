"""``clipvip embed``: embed curated shards (or a video manifest) into parquet parts, on Ray.

Local (in-process Ray)::

    clipvip embed --model runs/finetune_b32 --shards 'shards/shard-{000000..000099}.tar' \\
        --out embeddings/ --texts subtitle caption

On a cluster: ``ray job submit ... -- python -m jobs.embed --model /shared/runs/finetune_b32 ...
--num-gpus 1 --batch-size 128`` (absolute paths or URLs). Rerunning the same command resumes;
a different model, frame count, text set or input set in the same folder is refused.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import cli_main, offline_defaults, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip embed", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run dir, a model dir or clipvip:<official .pt>")
    p.add_argument("--tokenizer", default="", help="CLIP tokenizer dir or hub id (default: the run's)")
    p.add_argument("--clip-config", default="")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="curated shard pattern (braces, globs, '::'-joined)")
    src.add_argument("--manifest", help="video manifest: key, path, optional start/end, text, other columns")
    p.add_argument("--out", required=True, help="folder for the embedding parts (local or URL)")
    p.add_argument("--texts", nargs="*", default=[], help="also embed these texts: subtitle caption")
    p.add_argument("--rows-per-part", type=int, default=1000, help="manifest input: rows per part")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--frames", type=int, default=0, help="frames per clip (default: the model's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--num-cpus", type=float, default=1.0, help="per actor")
    p.add_argument("--num-gpus", type=float, default=0.0, help="per actor (1: one actor per GPU)")
    p.add_argument("--concurrency", type=int, default=0, help="actors (default: as many as fit)")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="delete another run's parts in --out first")
    p.add_argument("--address", default="", help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray")
    args = p.parse_args(argv)
    setup_logging("INFO")
    offline_defaults()
    from pipeline.run import RayConfig
    from search.embed import EmbedConfig, outcome_problem, run

    cfg = EmbedConfig(model=args.model, tokenizer=args.tokenizer, clip_config=args.clip_config,
                      shards=args.shards or "", manifest=args.manifest or "", output_dir=args.out,
                      texts=tuple(args.texts), rows_per_part=args.rows_per_part, batch_size=args.batch_size,
                      num_frames=args.frames, device=args.device, precision=args.precision, num_cpus=args.num_cpus,
                      num_gpus=args.num_gpus, concurrency=args.concurrency, decode_workers=args.decode_workers,
                      overwrite=args.overwrite, ray=RayConfig(address=args.address, num_cpus=args.ray_num_cpus))
    summary = run(cfg)
    this = summary["this_run"]
    print(f"units complete {summary['units_complete']}/{summary['units']}, clips {summary['counts']}, "
          f"model {summary['model_id']}, {summary['num_frames']} frames; this run {this['rows']} clips in "
          f"{this['wall_s']} s")
    problem = outcome_problem(summary)
    if problem:
        print(f"clipvip embed: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip embed", main))
