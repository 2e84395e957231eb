"""End-to-end curate throughput: the Ray pipeline vs a bare extraction loop on the same cores.

Both do the same per-clip work (``process_clip``: middle frame JPEG + 3 fps 240p H.264 re-encode;
with captions on, a tiny random BLIP captions each middle frame). The bare loop is a
``multiprocessing`` pool of one process per core with no Ray, no crash isolation and no shard
writing; the pipeline is ``pipeline.run.run`` on a local Ray with the same number of CPUs,
writing real shards. Ray start-up and a short warm-up run are excluded (a cluster is up before a job starts);
The pipeline's planning (manifest scan tasks, key check) for the measured run is included.

Run: ``.venv/bin/python -m bench.curate [--clips-dir runs/bench_clips] [-n 200] [--cpus 2]``; with
``--ofa-batches 8,64`` it times the pipeline with a tiny OFA captioning inline at each ``caption.batch_size``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

from bench.clips import bench_clips
from caption.protocol import DecodeSettings
from video.frames import FrameConfig, process_clip

SETTINGS = DecodeSettings(beam=2, max_new_tokens=8)
_CAPTIONER = None


def _init(model: str) -> None:
    global _CAPTIONER
    import torch

    torch.set_num_threads(1)
    if model:
        from caption.registry import load_captioner

        _CAPTIONER = load_captioner(model, device="cpu", settings=SETTINGS)


def _work(rows: list[dict]) -> int:
    import io

    from PIL import Image

    outs = [process_clip(r["path"], None, None, FrameConfig()) for r in rows]
    if _CAPTIONER is not None:
        _CAPTIONER.generate([Image.open(io.BytesIO(o.jpg)).convert("RGB") for o in outs])
    return len(outs)


def bare_loop(rows: list[dict], cpus: int, model: str, batch: int) -> float:
    chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    with mp.get_context("spawn").Pool(cpus, initializer=_init, initargs=(model,)) as pool:
        pool.map(_work, chunks[:cpus])  # warm-up: imports and model load, like actor start-up
        t0 = time.perf_counter()
        done = sum(pool.map(_work, chunks, chunksize=1))
    return done / (time.perf_counter() - t0)


def ray_pipeline(manifest: Path, cpus: int, model: str, batch: int, placement: str = "inline",
                 per_shard: int = 50) -> float:
    """Whole-run clips/s of the pipeline: one Ray task per shard of ``per_shard`` clips writes its
    own shard; captions run inside each shard task (``inline``) or in one actor (``actors``)."""
    from pipeline.manifest import ManifestConfig
    from pipeline.run import CurateConfig, RayConfig, run
    from pipeline.caption_service import CaptionConfig
    from pipeline.writer import ShardWriterConfig

    out = Path(tempfile.mkdtemp(prefix="bench_curate_"))
    try:
        actor_cpus = 0.5 if placement == "actors" else 1.0
        cfg = CurateConfig(manifest=ManifestConfig(path=str(manifest)),
                           caption=CaptionConfig(model=model, device="cpu", batch_size=batch, num_cpus=actor_cpus,
                                                 placement=placement, decode=SETTINGS),
                           # With one actor holding half a CPU, shard tasks take the rest of the cores.
                           writer=ShardWriterConfig(output_dir=str(out / "shards"), samples_per_shard=per_shard,
                                                    num_cpus=1.0 - (0.5 / cpus if model and placement == "actors"
                                                                    else 0.0)),
                           ray=RayConfig(num_cpus=cpus), progress_every_s=1e9)
        # Warm-up on a few clips: Ray workers import and start their decode children, inline
        # captioners load in the workers (the bare loop gets the same warm-up). Actors are started
        # per run, so their start-up counts against the measured run.
        warm = out / "warm.jsonl"
        warm.write_text("".join(manifest.read_text().splitlines(keepends=True)[: 2 * cpus * batch]))
        run(dataclasses.replace(cfg, manifest=ManifestConfig(path=str(warm)),
                                writer=dataclasses.replace(cfg.writer, output_dir=str(out / "warm"),
                                                           samples_per_shard=batch)))
        t0 = time.perf_counter()
        summary = run(cfg)
        rate = summary["rows"] / (time.perf_counter() - t0)
        assert summary["counts"] == {"ok": summary["rows"]}, summary["counts"]
        return rate
    finally:
        shutil.rmtree(out, ignore_errors=True)


def ofa_batches(manifest: Path, args: argparse.Namespace, batches: list[int]) -> int:
    """Pipeline clips/s with the tiny OFA (random weights, 64 px) captioning inline at each batch size."""
    import ray

    from demo.tiny_ofa import write_tiny_ofa

    model_dir = Path(tempfile.mkdtemp(prefix="bench_ofa_"))
    model = f"ofa:{write_tiny_ofa(model_dir)}"
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rates = {}
    for b in batches:
        # Shards of 2 * batch rows, so each shard task makes whole calls of caption.batch_size frames.
        rates[b] = ray_pipeline(manifest, args.cpus, model, b, "inline", per_shard=max(args.per_shard, 2 * b))
        print(f"tiny OFA inline, caption.batch_size {b:>4}: {rates[b]:7.1f} clips/s", flush=True)
    lo, hi = batches[0], batches[-1]
    print(f"caption.batch_size {hi} / {lo}: {rates[hi] / rates[lo]:.2f}x clips/s (whole pipeline: decode, "
          "re-encode, caption, write)")
    # The captioner alone on the same middle frames, one thread, as a replica would call it.
    import io

    import torch
    from PIL import Image

    from caption.registry import load_captioner

    torch.set_num_threads(1)
    frames = [Image.open(io.BytesIO(process_clip(json.loads(line)["path"], None, None, FrameConfig()).jpg)).convert("RGB")
              for line in manifest.read_text().splitlines()]
    alone = {}
    for b in batches:
        cap = load_captioner(model, device="cpu", settings=SETTINGS, batch_size=b)
        cap.generate(frames[:b])  # warm-up
        t0 = time.perf_counter()
        cap.generate(frames)
        alone[b] = len(frames) / (time.perf_counter() - t0)
        print(f"tiny OFA alone, batch {b:>4}: {alone[b]:7.1f} frames/s", flush=True)
    print(f"captioner alone, batch {hi} / {lo}: {alone[hi] / alone[lo]:.2f}x frames/s")
    ray.shutdown()
    shutil.rmtree(model_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    import ray

    from jobs.common import offline_defaults

    offline_defaults()  # Ray on loopback, no hub downloads
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips-dir", default="runs/bench_clips")
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--only-caption", action="store_true", help="skip the caption-off comparison")
    p.add_argument("--per-shard", type=int, default=50, help="writer.samples_per_shard of the pipeline run")
    p.add_argument("--ofa-batches", default="", help="instead: the pipeline with a tiny OFA captioning inline at "
                   "these caption.batch_size values, e.g. 8,64, and their ratio")
    args = p.parse_args(argv)
    manifest = bench_clips(args.clips_dir, args.n)
    if args.ofa_batches:
        return ofa_batches(manifest, args, [int(b) for b in args.ofa_batches.split(",")])
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    model_dir = Path(tempfile.mkdtemp(prefix="bench_blip_"))
    from demo.tiny_hf import write_debug_model

    model = f"hf:{write_debug_model(model_dir)}"
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    print(f"{len(rows)} clips, {args.cpus} CPUs; clips/s (higher is better)")
    variants = (("caption off", "", "inline"), ("caption on, inline", model, "inline"),
                ("caption on, 1 actor", model, "actors"))
    for label, spec, placement in variants:
        if args.only_caption and not spec:
            continue
        bare = bare_loop(rows, args.cpus, spec, args.batch)
        piped = ray_pipeline(manifest, args.cpus, spec, args.batch, placement, args.per_shard)
        print(f"{label:<22} bare loop {bare:7.1f}   Ray pipeline {piped:7.1f}   pipeline/bare {piped / bare:5.2f}",
              flush=True)
    ray.shutdown()
    shutil.rmtree(model_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
