"""Loader throughput per worker process: shards -> model-ready tensors vs loose mp4 files.

Makes ``--clips`` synthetic HD-VILA-like clips (3 fps, 240p, ~13 s), writes them into shards, then
in ONE process with one thread (= one loader worker on one core) measures clips/s for:

  shards, worker resize   ShardStream: tar read, shuffle, decode 12 frames + middle JPEG, bicubic
                          squash to 224 and CLIP norm for both, tokenise subtitle and caption
  shards, device resize   the same, shipping uint8 frames (the squash runs on the GPU, same numbers)
  loose mp4 files         decode the same clips from files + the same preprocessing (no text)

and prints how many cores one GPU needs at the training step rates measured on one H100
(below, in GPU_RATES).

    .venv/bin/python -m bench.loader --clips 64
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Training rates measured on one H100 80GB (torch 2.11, bf16): clips/s one GPU consumes.
GPU_RATES = {"B/32 bs64 compiled": 723, "B/16 bs32 compiled": 244, "B/16 bs16 eager (official-like)": 82}


def make_shards(n: int, out: Path, per_shard: int) -> tuple[str, list[Path]]:
    import webdataset as wds
    from PIL import Image

    from demo.synth import COLORS, SHAPES, ClipSpec, describe, encode_h264, render_frames

    clips = []
    for i in range(n):
        spec = ClipSpec(key=f"c{i:06d}", color=list(COLORS)[i % 8], shape=SHAPES[i % 3], direction="left",
                        width=426 if i % 2 else 320, height=240, fps=3, seconds=13.4, gop=9, seed=i)
        frames = render_frames(spec)
        path = out / f"{spec.key}.mp4"
        encode_h264(frames, path, spec.fps, spec.gop)
        buf = io.BytesIO()
        Image.fromarray(frames[len(frames) // 2]).save(buf, format="JPEG", quality=90)
        clips.append((spec, path, buf.getvalue()))
    n_shards = (n + per_shard - 1) // per_shard
    for s in range(n_shards):
        with wds.TarWriter(str(out / f"b-{s:06d}.tar")) as sink:
            for spec, path, jpg in clips[s * per_shard:(s + 1) * per_shard]:
                sink.write({"__key__": spec.key, "mp4": path.read_bytes(), "jpg": jpg,
                            "subtitle.txt": f"um so here we have a {spec.color} {spec.shape} and it goes left " * 4,
                            "caption.txt": describe(spec.color, spec.shape, spec.direction), "json": {}})
    return str(out / f"b-{{000000..{n_shards - 1:06d}}}.tar"), [c[1] for c in clips]


def time_shards(pattern: str, tok, n: int, device_resize: bool, batch: int = 16) -> float:
    from train.data import ShardDataConfig, ShardStream

    cfg = ShardDataConfig(shards=pattern, batch_size=batch, num_workers=0, num_frames=12, image_size=224,
                          max_text_len=70, shuffle_buffer=64, resize_on_device=device_resize)
    it = ShardStream(cfg, tok).worker_batches(0)
    next(it)  # warm-up batch
    t0, done = time.perf_counter(), 0
    while done < n:
        done += len(next(it)["keys"])
    return done / (time.perf_counter() - t0)


def time_files(paths: list[Path], n: int) -> float:
    from train.video import decode_video_file, preprocess

    t0, done = time.perf_counter(), 0
    while done < n:
        for p in paths:
            preprocess(decode_video_file(str(p), 12, train=True, rng=np.random.default_rng(done)), 224)
            done += 1
            if done >= n:
                break
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--measure", type=int, default=96, help="clips timed per variant")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one loader worker = one core
    from model.tokenizer import load_tokenizer, train_clip_bpe

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        pattern, paths = make_shards(args.clips, out, per_shard=16)
        tok = load_tokenizer(str(train_clip_bpe(["um so here we have a red circle and it goes left"] * 3, out / "tok")))
        res = {"shards, worker resize": time_shards(pattern, tok, args.measure, False),
               "shards, device resize": time_shards(pattern, tok, args.measure, True),
               "loose mp4 files, worker resize": time_files(paths, args.measure)}
    base = res["loose mp4 files, worker resize"]
    print("clips/s per worker process (1 core), 12 frames of 3 fps 240p clips -> 224x224:")
    for k, v in res.items():
        print(f"  {k:32s} {v:7.1f} clips/s   ({v / base:4.2f}x loose files)")
    print("cores to feed one GPU:")
    for name, rate in GPU_RATES.items():
        cols = "  ".join(f"{k.split(',')[1].strip()}: {rate / v:5.1f}" for k, v in res.items() if k.startswith("shards"))
        print(f"  {name:34s} {rate:4d} clips/s -> {cols}")
    print(json.dumps({k: round(v, 2) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
