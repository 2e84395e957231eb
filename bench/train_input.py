"""The full pretraining step fed by the input path vs fed from device-resident tensors (GPU).

Both variants run the same compiled bf16 train step (train.loop.train_step: forward of video, frame,
subtitle and caption; OCL loss vsc+fc; backward; clip; AdamW). They differ only in the input:

  device-resident   random normalised pixels and token ids created once on the GPU
  input path        per step a fresh batch from host memory: either uint8 [T,240,W,3] clips from
                    pinned memory (default; needs only torch), copied, squashed bicubic to 224 and
                    normalised on the GPU (``resize_on_device``), or with ``--shards`` real shards
                    through train.data.ShardLoader (needs webdataset, decord2, transformers and a
                    tokenizer; ``--workers`` processes decode, as in training)

The gap (1 - input/device) is what the input pipeline costs the GPU. Decode cost on the CPU side is
measured by bench/loader.py (cores needed per GPU). CPU smoke test:

    .venv/bin/python -m bench.train_input --flavour debug --batch 4 --steps 3 --device cpu
GPU:
    python -m bench.train_input --flavour B/32 --batch 64 --steps 30 --compile
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.clip_vip import CLIPViP, get_config
from model.loss import OCLLoss
from train.optim import OptimConfig, build_optimizer
from train.loop import FiniteGuard, Runtime, train_step


def host_batches(n_distinct: int, batch: int, frames: int, text_len: int, vocab: int, pin: bool):
    """Cycling uint8 clips as the loader ships them with resize_on_device (240p, two aspect ratios)."""
    g = torch.Generator().manual_seed(0)
    pool = []
    for i in range(n_distinct):
        w = 426 if i % 2 else 320
        clips = [torch.randint(0, 256, (frames, 240, w, 3), dtype=torch.uint8, generator=g) for _ in range(batch)]
        mids = [torch.randint(0, 256, (1, 240, w, 3), dtype=torch.uint8, generator=g) for _ in range(batch)]
        if pin:
            clips, mids = [c.pin_memory() for c in clips], [m.pin_memory() for m in mids]
        ids = torch.randint(0, vocab - 1, (2, batch, text_len), generator=g)
        ids[:, :, -1] = vocab - 1
        pool.append({"video": clips, "frames": mids, "subtitle_ids": ids[0], "caption_ids": ids[1],
                     "subtitle_mask": torch.ones(batch, text_len, dtype=torch.long),
                     "caption_mask": torch.ones(batch, text_len, dtype=torch.long)})
    i = 0
    while True:
        yield pool[i % n_distinct]
        i += 1


def device_batches(batch: int, frames: int, size: int, text_len: int, vocab: int, device):
    ids = torch.randint(0, vocab - 1, (2, batch, text_len), device=device)
    ids[:, :, -1] = vocab - 1
    b = {"video": torch.randn(batch, frames, 3, size, size, device=device),
         "frames": torch.randn(batch, 3, size, size, device=device), "subtitle_ids": ids[0], "caption_ids": ids[1],
         "subtitle_mask": torch.ones(batch, text_len, dtype=torch.long, device=device),
         "caption_mask": torch.ones(batch, text_len, dtype=torch.long, device=device)}
    while True:
        yield b


def shard_batches(pattern: str, tokenizer: str, batch: int, workers: int, size: int):
    from train.data import ShardDataConfig, ShardLoader
    from model.tokenizer import load_tokenizer

    cfg = ShardDataConfig(shards=pattern, batch_size=batch, num_workers=workers, image_size=size, max_text_len=70,
                          resize_on_device=True)
    return ShardLoader(cfg, load_tokenizer(tokenizer), pin_memory=torch.cuda.is_available())


def timed(step_fn, batches, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step_fn(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flavour", default="B/32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shards", default="", help="real shards instead of host uint8 clips (needs the loader deps)")
    p.add_argument("--tokenizer", default="", help="with --shards: CLIP tokenizer dir")
    p.add_argument("--workers", type=int, default=12)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = get_config(args.flavour, vocab_size=49408, eot_token_id=49407) if args.flavour != "debug" else \
        get_config("debug", vocab_size=1000, eot_token_id=999)
    size, vocab, text_len = cfg.image_size, cfg.vocab_size, 70 if args.flavour != "debug" else 16
    raw = CLIPViP(cfg).to(device)
    model = torch.compile(raw) if args.compile else raw
    opt = build_optimizer(raw, OptimConfig(lr=1e-6))
    loss_fn = OCLLoss(("vsc", "fc"))
    rt = Runtime(0, 1, device, "bf16" if device.type == "cuda" else "fp32", size)
    counter = {"step": 0}
    guard = FiniteGuard(device)  # as in training: finiteness is checked on the device, read at the end

    def step(batch):
        counter["step"] += 1
        train_step(model, raw, loss_fn, batch, opt, step=counter["step"], grad_clip=5.0, rt=rt, guard=guard)

    res = {}
    res["device-resident"] = timed(step, device_batches(args.batch, args.frames, size, text_len, vocab, device),
                                   args.steps, args.warmup, device)
    if args.shards:
        src = shard_batches(args.shards, args.tokenizer, args.batch, args.workers, size)
        name = f"real shards ({args.workers} workers)"
    else:
        src = host_batches(4, args.batch, args.frames, text_len, vocab, pin=device.type == "cuda")
        name = "host uint8 clips + device squash"
    res[name] = timed(step, src, args.steps, args.warmup, device)
    guard.check()
    dev = res["device-resident"]
    print(f"{args.flavour} batch {args.batch}, {args.frames} frames, compile={args.compile}, {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}):")
    for k, v in res.items():
        print(f"  {k:40s} {args.steps * args.batch / v:8.1f} clips/s  {1000 * v / args.steps:7.1f} ms/step"
              f"  gap {100 * (1 - dev / v):5.1f}%")
    print(json.dumps({k: round(args.steps * args.batch / v, 2) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
