"""Do the caption replicas stay busy? Curation with simulated GPUs on a multi-node loopback cluster.

Each run starts its own cluster of ``ray.cluster_utils.Cluster`` nodes on 127.0.0.1: a head (the
driver), ``--decode-nodes`` nodes whose CPUs run the shard tasks (``curate_writer`` resource), and
one node per simulated GPU offering the ``captioner`` resource its caption actor asks for. The
captioner is ``bench/sim_gpu.py``: each ``generate`` call of ``n`` frames sleeps
``time_scale * (a + b * n)`` seconds with ``a`` and ``b`` fitted to OFA-large on an H100, in the
actor's own process. The clips are tiny (16x16, 0.5 s) so that two cores can decode faster than
the simulated GPUs caption; ``--time-scale`` slows every simulated GPU by the same factor so the
decoders can keep up on this machine (it scales the ceiling, not the ratios).

Reported per run, from the simulated GPUs' own call log (start and end of every call):
- each actor's busy fraction: its time inside ``generate`` over the captioning window (first call
  start to last call end, across all actors);
- frames/s over that window against the actors' combined ceiling, ``actors * B / (time_scale *
  (a + b * B))`` at ``B = --batch`` (what the GPUs could do fed full batches).

``--before DIR`` runs the same measurement in another checkout (an earlier commit, see
BENCHMARKS.md) in a subprocess whose workers import that checkout's code. Both checkouts need this
file and ``bench/sim_gpu.py``; an earlier one also needs a ``py:`` captioner backend, and then
takes the simulated GPU's settings from the ``CLIPVIP_SIM_GPU`` environment variable.

Also reported: the frames per batch at the quartiles, and with ``BENCH_TIMELINE=1`` every batch's
start and size. The defaults stream (shards of 1000 rows, 256 frames in flight per task, 8 tasks):
tasks that each decode a whole small shard at once and then wait for its captions arrive in
waves, and between waves the replicas get a few frames at a time.

Run: ``.venv/bin/python -m bench.caption_service [--rows 8000] [--actors 4] [--batch 128]
[--time-scale 20] [--before /path/to/old/checkout --before-rows 1000 --before-per-shard 250]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _busy(spy: Path) -> dict:
    """Per actor (pid): frames, calls, busy seconds; and the captioning window over all of them."""
    calls = [line.split() for f in spy.glob("*.done") for line in f.read_text().splitlines()]
    if not calls:
        return {"actors": {}, "window_s": 0.0, "frames": 0}
    start = min(float(c[2]) for c in calls)
    end = max(float(c[3]) for c in calls)
    actors: dict[str, dict] = {}
    for pid, n, s, e in calls:
        a = actors.setdefault(pid, {"frames": 0, "calls": 0, "busy_s": 0.0})
        a["frames"] += int(n)
        a["calls"] += 1
        a["busy_s"] += float(e) - float(s)
    window = end - start
    sizes = sorted(int(c[1]) for c in calls)
    by_start = sorted(calls, key=lambda c: float(c[2]))
    for a in actors.values():
        a["busy_fraction"] = a["busy_s"] / window if window else 0.0
        a["mean_batch"] = a["frames"] / a["calls"]
    return {"actors": actors, "window_s": window, "frames": sum(a["frames"] for a in actors.values()),
            "batch_quartiles": [sizes[len(sizes) * q // 4] for q in (1, 2, 3)], "batches": len(sizes),
            "timeline": [(round(float(c[2]) - start, 1), int(c[1])) for c in by_start]}


def child(args: argparse.Namespace) -> None:
    """One measured run in this checkout (the current directory), printing one JSON line."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    from jobs.config import load
    from pipeline.run import CurateConfig, run

    work = Path(args.work)
    spy = work / "spy"
    options = {"time_scale": args.time_scale, "spy_dir": str(spy)}
    os.environ["CLIPVIP_SIM_GPU"] = json.dumps(options)  # for a checkout whose config has no caption.options
    temp = tempfile.mkdtemp(prefix="rbc", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp})
    for _ in range(args.decode_nodes):
        cluster.add_node(num_cpus=args.decode_cpus, resources={"curate_writer": args.decode_cpus})
    for _ in range(args.actors):
        cluster.add_node(num_cpus=0, resources={"captioner": 1})
    ray.init(address=cluster.address)
    overrides = [f"manifest.path={args.manifest}", f"writer.output_dir={work / 'out'}",
                 f"writer.samples_per_shard={args.per_shard}", "writer.resources={curate_writer: 1}",
                 "frames.min_side=16", "caption.model=py:bench.sim_gpu:SimulatedGPU", "caption.placement=actors",
                 f"caption.concurrency={args.actors}", "caption.num_cpus=0", f"caption.batch_size={args.batch}",
                 "caption.resources={captioner: 1}", "progress_every_s=10"]
    if args.new_api:
        overrides += [f"caption.options={json.dumps(options)}", f"caption.batch_wait_s={args.batch_wait}",
                      f"caption.max_in_flight_per_task={args.window}"]
    cfg = load(CurateConfig, None, overrides)
    t0 = time.monotonic()
    summary = run(cfg)
    wall = time.monotonic() - t0
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    print("RESULT " + json.dumps({"wall_s": wall, "rows": summary["rows"], "complete": summary["shards_complete"],
                                  "shards": summary["shards"], **_busy(spy)}))


def measure(tree: Path, manifest: Path, rows: int, per_shard: int, args: argparse.Namespace, new_api: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_caption_service_"))
    cmd = [sys.executable, "-m", "bench.caption_service", "--child", "--work", str(work), "--manifest", str(manifest),
           "--actors", str(args.actors), "--batch", str(args.batch), "--time-scale", str(args.time_scale),
           "--batch-wait", str(args.batch_wait), "--decode-nodes", str(args.decode_nodes),
           "--decode-cpus", str(args.decode_cpus), "--per-shard", str(per_shard), "--window", str(args.window)]
    if new_api:
        cmd.append("--new-api")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"the run in {tree} printed no result:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return json.loads(line[len("RESULT "):])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(name: str, r: dict, ceiling: float) -> None:
    rate = r["frames"] / r["window_s"] if r["window_s"] else 0.0
    busy = sorted(a["busy_fraction"] for a in r["actors"].values())
    batches = [round(a["mean_batch"], 1) for a in r["actors"].values()]
    print(f"{name}: {r['frames']} frames in a {r['window_s']:.1f} s captioning window ({r['wall_s']:.1f} s whole run, "
          f"{r['complete']}/{r['shards']} shards): {rate:.1f} frames/s = {rate / ceiling:.2f} of the ceiling "
          f"{ceiling:.1f}; busy fraction per actor {', '.join(f'{b:.3f}' for b in busy)}; mean batch per actor "
          f"{batches}; {r.get('batches', '?')} batches, frames per batch at the quartiles {r.get('batch_quartiles')}")
    if os.environ.get("BENCH_TIMELINE"):
        print("timeline (start s, frames):", r.get("timeline"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--actors", type=int, default=4)
    p.add_argument("--batch", type=int, default=128, help="caption.batch_size")
    p.add_argument("--batch-wait", type=float, default=0.2, help="caption.batch_wait_s")
    p.add_argument("--time-scale", type=float, default=20.0, help="slow every simulated GPU down by this factor")
    p.add_argument("--decode-nodes", type=int, default=2)
    p.add_argument("--decode-cpus", type=int, default=4, help="shard tasks per decode node at once")
    p.add_argument("--per-shard", type=int, default=1000, help="writer.samples_per_shard (its default)")
    p.add_argument("--window", type=int, default=256,
                   help="caption.max_in_flight_per_task: 8 tasks x 256 frames keep two batches at each of 4 replicas")
    p.add_argument("--before", type=Path, default=None, help="an earlier checkout to measure the same way")
    p.add_argument("--before-rows", type=int, default=1000)
    p.add_argument("--before-per-shard", type=int, default=250,
                   help="the earlier checkout pins a shard to an actor: a shard per actor keeps all four working")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--new-api", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    from bench.driver import tiny_clips, write_manifest
    from bench.sim_gpu import OFA_LARGE_H100_A, OFA_LARGE_H100_B

    clips_dir = Path(tempfile.mkdtemp(prefix="bench_cs_clips_"))
    try:
        clips = tiny_clips(clips_dir / "clips")
        ceiling = args.actors * args.batch / (args.time_scale * (OFA_LARGE_H100_A + OFA_LARGE_H100_B * args.batch))
        print(f"{args.actors} simulated GPUs (OFA-large on an H100, slowed {args.time_scale:g}x), batch {args.batch}: "
              f"combined ceiling {ceiling:.1f} frames/s")
        if args.before:
            before = measure(args.before, write_manifest(clips_dir / "before.jsonl", clips, args.before_rows),
                             args.before_rows, args.before_per_shard, args, new_api=False)
            report(f"before ({args.before})", before, ceiling)
        after = measure(HERE, write_manifest(clips_dir / "after.jsonl", clips, args.rows), args.rows, args.per_shard, args,
                        new_api=True)
        report("after (this checkout)", after, ceiling)
        if args.before:
            b = before["frames"] / before["window_s"]
            a = after["frames"] / after["window_s"]
            print(f"after / before: {a / b:.2f}x frames/s")
    finally:
        shutil.rmtree(clips_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
