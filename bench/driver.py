"""The curation driver's memory per shard and the bytes it receives, at 100 against 10,000 shards.

Goals: under 2 KB of resident driver memory per shard, above the driver's post-import baseline,
from 100 to 10,000 shards (so a million-shard run needs no more than a few GB on the head); what
the driver receives from the cluster is metadata only, under 1 KB per row.

What is measured. Each size is a fresh process of its own that imports clipvip, starts a local
Ray with ``--cpus`` CPUs and notes its resident memory (the baseline); then runs
``pipeline.run.run`` (captions off) to the end and runs it again (the resume: every shard is
found complete by its marker). The first run is planning (scan task, key check), every shard task
reading its rows, decoding each clip in its crash-isolated decode child (middle-frame JPEG and
3 fps re-encode) and writing its tar, status parquet and marker, with the driver's progress
polls, the listing of markers and the summary; every shard task logs one line, which Ray streams
to the driver. The resume lists the output folder, reads every marker (the driver holds none from
a previous run) and rewrites the summary. The manifest cycles over four real 16x16, 0.5 s H.264
clips under distinct keys, ``--per-shard`` rows per shard: the clips are tiny so that 10,000
shards of real decoding fit in minutes on two cores; the driver never sees a clip.

- peak RSS: ``VmHWM`` of the driver process at the end of the resume, which covers its imports,
  its Ray core worker and everything it held; growth is that peak above the baseline. The local
  Ray's own processes (GCS, raylet, workers) are not the driver and are not counted.
- bytes received: ``stats["bytes_received"]`` from ``run(cfg, stats=...)`` over both runs, the
  pickled size of every value the driver got with ``ray.get``.

Run: ``.venv/bin/python -m bench.driver [--shards 100,10000] [--per-shard 2] [--cpus 2]``
(about 20 minutes on 2 cores; the shards go to a temporary folder that is removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIPS = (("red", "circle", "left"), ("blue", "square", "right"), ("green", "triangle", "up"),
         ("yellow", "circle", "down"))


def tiny_clips(out_dir: Path) -> list[dict]:
    """Four real H.264 clips, 16x16 pixels, 0.5 s at 6 fps; returns their manifest rows."""
    from demo import synth

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    return [synth.write_clip(synth.ClipSpec(key=f"tiny{i}", color=c, shape=s, direction=d, width=16, height=16,
                                            fps=6, seconds=0.5, gop=3, seed=i), out_dir, rng)
            for i, (c, s, d) in enumerate(CLIPS)]


def write_manifest(path: Path, clips: list[dict], n: int) -> Path:
    """``n`` rows with distinct keys, cycling over ``clips``."""
    with open(path, "w") as f:
        for i in range(n):
            clip = clips[i % len(clips)]
            f.write(json.dumps({"key": f"row{i:08d}", "path": clip["path"], "text": clip["text"]}) + "\n")
    return path


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(manifest: str, out: str, per_shard: int, cpus: int) -> dict:
    """One run and its resume in this process (the driver); returns what was measured."""
    from jobs.common import offline_defaults, setup_logging

    setup_logging("INFO")
    offline_defaults()
    from video.frames import FrameConfig
    from pipeline.manifest import ManifestConfig
    from pipeline.run import CurateConfig, RayConfig, init_ray, run
    from pipeline.writer import ShardWriterConfig

    cfg = CurateConfig(manifest=ManifestConfig(path=manifest),
                       # min_side: the clips are 16 px.
                       frames=FrameConfig(min_side=16),
                       writer=ShardWriterConfig(output_dir=out, samples_per_shard=per_shard),
                       ray=RayConfig(num_cpus=cpus), progress_every_s=30.0)
    init_ray(cfg.ray)
    baseline_kb = _status_kb("VmRSS")
    # Sample RSS while the runs go, to say when the peak happened.
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append((time.monotonic(), _status_kb("VmRSS")))

    sampler = threading.Thread(target=sample, daemon=True)
    stats: dict[str, int] = {}
    t0 = time.monotonic()
    sampler.start()
    summary = run(cfg, stats=stats)
    wall = time.monotonic() - t0
    after_run_kb = _status_kb("VmHWM")
    t1 = time.monotonic()
    resumed = run(cfg, stats=stats)
    resume_wall = time.monotonic() - t1
    stop.set()
    sampler.join()
    rows = summary["rows"]
    assert summary["shards_complete"] == summary["shards"] and summary["counts"] == {"ok": rows}, summary
    assert resumed["this_run"]["skipped_shards"] == summary["shards"], resumed["this_run"]
    peak_kb = _status_kb("VmHWM")
    peak_at = max(samples, key=lambda s: s[1])[0] - t0 if samples else 0.0
    return {"rows": rows, "shards": summary["shards"], "wall_s": round(wall, 1), "resume_wall_s": round(resume_wall, 1),
            "rows_per_s": round(rows / wall, 1), "bytes_received": stats["bytes_received"],
            "objects_received": stats["objects_received"], "baseline_rss_mb": baseline_kb / 1024,
            "peak_after_run_mb": after_run_kb / 1024, "peak_rss_mb": peak_kb / 1024,
            "growth_mb": (peak_kb - baseline_kb) / 1024,
            "growth_per_shard_kb": (peak_kb - baseline_kb) / summary["shards"],
            "peak_sampled_at_s": round(peak_at, 1)}


def measure(shards: int, clips: list[dict], work: Path, per_shard: int, cpus: int) -> dict:
    """Run one size in a fresh Python process and return its measurements."""
    manifest = write_manifest(work / f"manifest_{shards}.jsonl", clips, shards * per_shard)
    out = work / f"shards_{shards}"
    cmd = [sys.executable, "-m", "bench.driver", "--child", str(manifest), "--out", str(out),
           "--per-shard", str(per_shard), "--cpus", str(cpus)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {shards}-shard run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="100,10000", help="shards per run, comma-separated")
    p.add_argument("--per-shard", type=int, default=2, help="writer.samples_per_shard")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--child", metavar="MANIFEST", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.out, args.per_shard, args.cpus)), flush=True)
        return 0

    sizes = [int(s) for s in args.shards.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_driver_"))
    try:
        clips = tiny_clips(work / "clips")
        results = {}
        for n in sizes:
            results[n] = measure(n, clips, work, args.per_shard, args.cpus)
            print(f"{n} shards done: {json.dumps(results[n])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.cpus} CPUs, {args.per_shard} rows per shard, captions off, 16x16 0.5 s clips decoded for real; "
          "each size a run then its resume")
    rows = [("shards", "shards", "{:d}"), ("rows", "rows", "{:d}"), ("wall s (run)", "wall_s", "{:.1f}"),
            ("wall s (resume)", "resume_wall_s", "{:.1f}"),
            ("driver RSS after imports + ray.init, MB", "baseline_rss_mb", "{:.1f}"),
            ("driver peak RSS after the run, MB", "peak_after_run_mb", "{:.1f}"),
            ("driver peak RSS after the resume, MB", "peak_rss_mb", "{:.1f}"),
            ("growth above baseline, MB", "growth_mb", "{:.2f}"),
            ("growth per shard, KB", "growth_per_shard_kb", "{:.2f}"),
            ("objects received", "objects_received", "{:d}"), ("bytes received", "bytes_received", "{:d}")]
    lo, hi = results[sizes[0]], results[sizes[-1]]
    print(f"{'':<42}" + "".join(f"{n:>14,d}" for n in sizes) + f"{'ratio':>10}")
    for label, key, spec in rows:
        ratio = hi[key] / lo[key] if lo[key] else float("nan")
        print(f"{label:<42}" + "".join(f"{spec.format(results[n][key]):>14}" for n in sizes) + f"{ratio:>10.3f}")
    per_row = {n: results[n]["bytes_received"] / results[n]["rows"] for n in sizes}
    print(f"{'bytes received per row':<42}" + "".join(f"{per_row[n]:>14.3f}" for n in sizes))
    marginal = (hi["growth_mb"] - lo["growth_mb"]) * 1024 / (sizes[-1] - sizes[0])
    print(f"\ndriver memory per added shard, {sizes[0]:,} -> {sizes[-1]:,} shards: {marginal:.2f} KB (goal < 2 KB): "
          f"{'met' if marginal < 2 else 'MISSED'}; at {sizes[-1]:,} shards {hi['growth_per_shard_kb']:.2f} KB per shard "
          "above the baseline")
    worst = max(per_row.values())
    print(f"bytes received per row: at most {worst:.3f} (goal < 1024): {'met' if worst < 1024 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
