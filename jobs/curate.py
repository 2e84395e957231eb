"""``clipvip curate``: manifest -> middle frames -> captions -> WebDataset shards, on Ray.

Local (in-process Ray, ``ray.num_cpus`` CPUs)::

    clipvip curate --config jobs/configs/curate_example.toml --set manifest.path=runs/synth/manifest.jsonl

On a cluster, as a Ray job (the runtime env file keeps .venv, .git, runs and data out of the
uploaded working dir, which Ray caps at 100 MiB)::

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/configs/runtime_env.yaml \\
        -- python -m jobs.curate --config jobs/configs/curate_example.toml

Rerunning the same command resumes: finished shards are skipped (``--set writer.retry_failed=true``
also redoes shards holding failed rows).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from jobs.help import HelpFormatter
from jobs.common import UserError, cli_main, offline_defaults, setup_logging
from jobs.config import load

logger = logging.getLogger("jobs.curate")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Kept out of the uploaded working dir (Ray refuses more than 100 MiB).
RUNTIME_ENV_EXCLUDES = [".venv", ".venv/", ".git", ".git/", "runs/", "data/", "out/", "demo_out/", "models/",
                        "*.mp4", "*.tar", "*.parquet", "*.safetensors", "*.pt", "__pycache__/", ".pytest_cache/",
                        "*.egg-info/"]


def runtime_env() -> dict[str, Any]:
    """The runtime env for shipping this checkout to a cluster (job submission or Ray client)."""
    return {"working_dir": str(REPO_ROOT), "excludes": RUNTIME_ENV_EXCLUDES}


def summary_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the run's outcome."""
    run = summary.get("this_run", {})
    lines = [("shards complete", f"{summary['shards_complete']}/{summary['shards']}"),
             ("rows", summary["rows"]), ("samples written", summary["samples"])]
    lines += [(f"status {k}", v) for k, v in sorted(summary["counts"].items())]
    rate = run.get("clips_per_s")
    lines += [("this run: rows", run.get("rows")), ("this run: shards", run.get("shards")),
              ("this run: skipped (done)", run.get("skipped_shards")), ("this run: wall s", run.get("wall_s")),
              ("this run: clips/s", rate if rate is not None else "- (no row to process: every shard was done)")]
    lines += [(f"failure: {k}", v) for k, v in run.get("failures", {}).items()]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def check_output_dir(output_dir: str) -> None:
    """A local ``writer.output_dir`` that is a file, or lies under one, is refused before Ray starts."""
    if not output_dir:
        raise UserError("writer.output_dir is empty; set --set writer.output_dir=<folder or URL for the shards>")
    if "://" in output_dir and not output_dir.startswith("file://"):
        return
    path = Path(output_dir.removeprefix("file://")).expanduser().absolute()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under {p}, which is a file"
                raise UserError(f"writer.output_dir={output_dir!r} {what}; give a folder (new or holding this "
                                "run's shards) with --set writer.output_dir=<folder>")
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipvip curate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--config", help="TOML/YAML/JSON config (see jobs/configs/curate_example.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE",
                   help="override a config value, e.g. --set manifest.path=clips.jsonl (repeatable)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local in-process Ray)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)

    setup_logging(args.log_level)
    offline_defaults()
    from pipeline.errors import CurationError
    from pipeline.run import CurateConfig, check_outcome, run

    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    cfg = load(CurateConfig, args.config, overrides)
    check_output_dir(cfg.writer.output_dir)
    if cfg.ray.address and cfg.ray.address.startswith("ray://"):
        import ray

        ray.init(address=cfg.ray.address, runtime_env=runtime_env())
    # `ray job stop` and schedulers send SIGTERM: unwind like Ctrl-C, so the caption replicas are
    # deleted and finished shards stay finished.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run(cfg)  # writes config.json and _run.json beside the shards once the inputs are valid
        print(summary_table(summary))
        check_outcome(summary)
    except CurationError as exc:
        print(f"clipvip curate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipvip curate: interrupted; finished shards are kept: rerun the same command to finish the rest",
              file=sys.stderr)
        return 130
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(cli_main("clipvip curate", main))
