"""OFA-Caption decoding throughput: encoder shared across beams vs recomputed per beam (fairseq's way).

Random weights at the real shapes, beam 5, at most 16 tokens, default 480 px. Random weights almost
never emit EOS, so every hypothesis runs the full 16 steps plus the forced EOS: the worst case for
decoding (a trained model stops earlier). Preprocessing (PIL resize) is not timed: the frames are
tensors already, as when decoded frames arrive pre-resized from the CPU workers.

    python bench/caption.py --device cpu --sizes debug,tiny --batches 1,4
    python bench/caption.py --device cuda --sizes base,large --batches 32,128,256 --check

Needs only torch, numpy, pillow and this repository. Prints one row per (size, batch) with images/s
for both modes, their ratio, and the encoder alone (ResNet + transformer encoder + cross-attention K/V,
shared mode), so what remains is decoding. Both modes run the inference model the captioner runs
(batch norms folded, channels-last ResNet on GPU). ``--check`` first verifies on the device that both
modes give identical tokens in fp32, and how often the reduced precision keeps fp32's best caption.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caption.ofa.beam import BeamConfig  # noqa: E402
from caption.ofa.checkpoint import build_model  # noqa: E402
from caption.ofa.config import FLAVOURS, debug_config, flavour  # noqa: E402
from caption.ofa.generate import OFAGenerator  # noqa: E402

VOCAB = 59457
PROMPT = [0, 99, 473, 5, 1, 1, 1, 2]  # bos, 6 prompt pieces, eos: the length of OFA's encoded caption prompt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(gen: OFAGenerator, pixels: torch.Tensor, iters: int, device: torch.device) -> float:
    gen.generate(pixels)  # warm-up (kernels, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        gen.generate(pixels)
    _sync(device)
    return pixels.shape[0] * iters / (time.perf_counter() - start)


def _encode_rate(model, prompt: torch.Tensor, pixels: torch.Tensor, iters: int, device: torch.device) -> float:
    with torch.inference_mode():
        model.cross_kv(model.encode(pixels, prompt.to(device)))
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            model.cross_kv(model.encode(pixels, prompt.to(device)))
        _sync(device)
    return pixels.shape[0] * iters / (time.perf_counter() - start)


def _check(size: str, device: torch.device, dtype: torch.dtype, beam: BeamConfig, batch: int = 8) -> None:
    """fp32: shared == per-beam token for token; then the reduced precision's agreement with fp32."""
    cfg = debug_config(VOCAB) if size == "debug" else flavour(size)
    torch.manual_seed(0)
    model = build_model(cfg).prepare_for_inference(device, torch.float32)
    prompt = torch.tensor(PROMPT)
    pixels = torch.randn(batch, 3, cfg.patch_image_size, cfg.patch_image_size, generator=torch.Generator().manual_seed(1))
    shared = OFAGenerator(model, prompt, beam).generate(pixels)
    per_beam = OFAGenerator(model, prompt, beam, share_encoder=False).generate(pixels)
    same = sum([h.tokens for h in a] == [h.tokens for h in b] for a, b in zip(shared, per_beam))
    print(f"# check {size} fp32 on {device}: shared vs per-beam, all {beam.beam} hypotheses identical for {same}/{batch} images")
    if dtype != torch.float32:
        reduced = OFAGenerator(model.to(dtype), prompt, beam).generate(pixels)
        top = sum(a[0].tokens == b[0].tokens for a, b in zip(shared, reduced))
        print(f"# check {size} {dtype} vs fp32: best caption identical for {top}/{batch} images (random weights give near-flat "
              "next-token distributions, where rounding flips ties; trained weights are far more decisive)")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _preprocess_rates(workers: int, n: int = 96, size: int = 480) -> None:
    """Frames/s of the captioner's resize (854x480 frames to size x size, PIL bicubic), 1 thread vs ``workers``."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image

    from caption.ofa.preprocess import resize_batch

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (480, 854, 3), dtype=np.uint8)) for _ in range(n)]
    rates = {}
    with ThreadPoolExecutor(workers) as pool:
        for label, p in (("1 thread", None), (f"{workers} threads", pool)):
            resize_batch(frames[:4], size, p)
            best = float("inf")
            for _ in range(3):  # best of three: the CPU box is shared
                start = time.perf_counter()
                resize_batch(frames, size, p)
                best = min(best, time.perf_counter() - start)
            rates[label] = n / best
    a, b = rates.values()
    print(f"# preprocessing 854x480 -> {size}x{size}: " + ", ".join(f"{k} {v:.0f} frames/s" for k, v in rates.items())
          + f" ({b / a:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="base,large", help=f"comma list of debug,{','.join(FLAVOURS)}")
    parser.add_argument("--batches", default="32,128,256")
    parser.add_argument("--resolution", type=int, default=None, help="default: 480 (64 for debug)")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop starting new measurements after this")
    parser.add_argument("--modes", default="shared,per-beam")
    parser.add_argument("--per-beam-max-batch", type=int, default=128, help="skip the per-beam baseline above this batch (its cross K/V grows K-fold)")
    parser.add_argument("--check", action="store_true", help="first check mode and precision agreement on the device")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--preprocess-workers", type=int, default=0,
                        help="also time the captioner's frame resize with 1 thread vs this many (0: skip)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    modes = args.modes.split(",")
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"# OFA caption bench on {name}, torch {torch.__version__}, {precision}, beam {args.beam}, 16 tokens")
    beam = BeamConfig(beam=args.beam, max_len=16)
    if args.preprocess_workers:
        _preprocess_rates(args.preprocess_workers)
    if args.check:
        for size in args.sizes.split(","):
            _check(size, device, dtype, beam)
    print(f"{'size':>7} {'res':>4} {'batch':>5} " + " ".join(f"{m + ' img/s':>16}" for m in modes) + "  ratio  encoder-only img/s")
    for size in args.sizes.split(","):
        if size == "debug":
            cfg = debug_config(VOCAB)
        else:
            cfg = flavour(size)
        if args.resolution:
            cfg = dataclasses.replace(cfg, patch_image_size=args.resolution)
        torch.manual_seed(0)
        model = build_model(cfg, device=device).prepare_for_inference(device, dtype)
        prompt = torch.tensor(PROMPT)
        gens = {m: OFAGenerator(model, prompt, beam, share_encoder=(m == "shared")) for m in modes}
        for batch in map(int, args.batches.split(",")):
            if time.perf_counter() - t0 > args.max_seconds:
                print(f"{size:>7} {cfg.patch_image_size:>4} {batch:>5}  skipped: --max-seconds reached")
                continue
            pixels = torch.randn(batch, 3, cfg.patch_image_size, cfg.patch_image_size, device=device, dtype=dtype)
            if device.type == "cuda":
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            rates: dict[str, float | str] = {}
            for mode, gen in gens.items():
                if mode == "per-beam" and batch > args.per_beam_max_batch:
                    rates[mode] = "skipped"
                    continue
                try:
                    rates[mode] = _time(gen, pixels, args.iters, device)
                except torch.cuda.OutOfMemoryError:
                    rates[mode] = "OOM"
                    torch.cuda.empty_cache()
            cells = " ".join(f"{r:>16.4g}" if isinstance(r, float) else f"{r:>16}" for r in rates.values())
            vals = list(rates.values())
            ratio = f"{vals[0] / vals[1]:.2f}x" if len(vals) == 2 and all(isinstance(v, float) for v in vals) else "-"
            try:
                enc = f"{_encode_rate(model, prompt, pixels, args.iters, device):.4g}"
            except torch.cuda.OutOfMemoryError:
                enc = "OOM"
                torch.cuda.empty_cache()
            print(f"{size:>7} {cfg.patch_image_size:>4} {batch:>5} {cells}  {ratio:>5}  {enc}", flush=True)
        del model, gens
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"# total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
