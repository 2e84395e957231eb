"""One full CLIP-ViP training step (forward, loss, backward, clip, AdamW): clips/s and achieved TFLOP/s.

The step timed is the trainer's own ``train.loop.train_step`` with its device-side finiteness
guard, its fused AdamW (``train.optim.build_optimizer``, the official parameter groups) and, for
"compiled", ``torch.compile`` of the model as ``model.compile=true`` does in training: the numbers
are the product's, not a copy's. Only the first step's loss is read on the host.

Random weights and inputs at real size: a T=12 video at 224px and a 70-token subtitle per clip
(``--ocl`` adds the middle frame and its caption and uses the default L(V<->S,C)+L(F<->C) loss).
Eager and ``torch.compile``d steps run in one process and print a ratio. FLOPs per clip are
counted by ``model.clip_vip.video_flops_per_clip`` (B/16: ~1.28 TFLOP, B/32: ~0.33 TFLOP fwd+bwd,
matmuls and attention counted analytically). The anchor for the official code on one H100 (bf16,
B/16, batch 32) is 97 clips/s.

    python bench/step.py --device cuda --flavours B/16,B/32 --batch 32           # GPU, bf16 autocast
    python bench/step.py --device cuda --flavours B/16 --modes compiled --profile 25   # top kernels
    python bench/step.py --flavours debug --batch 4 --steps 3                    # CPU smoke run

Measured on one H100 (torch 2.11, bf16): B/16 batch 32 compiled 254 clips/s (325 TFLOP/s), 2.6x the
official code's 97.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.clip_vip import CLIPViP, get_config, video_flops_per_clip  # noqa: E402
from model.loss import OCLLoss  # noqa: E402
from train.optim import OptimConfig, build_optimizer  # noqa: E402
from train.loop import FiniteGuard, Runtime, train_step  # noqa: E402

TEXT_LEN, FRAMES = 70, 12


def make_batch(cfg, batch: int, device: str, ocl: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    side = cfg.image_size

    def text() -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, cfg.eot_token_id, (batch, TEXT_LEN), generator=g)
        lengths = torch.randint(8, TEXT_LEN, (batch,), generator=g)
        ids[torch.arange(batch), lengths] = cfg.eot_token_id
        mask = (torch.arange(TEXT_LEN)[None] <= lengths[:, None]).long()
        return ids.to(device), mask.to(device)
    out = {"video": torch.randn(batch, FRAMES, 3, side, side, generator=g).to(device)}
    out["subtitle_ids"], out["subtitle_mask"] = text()
    if ocl:
        out["frames"] = torch.randn(batch, 3, side, side, generator=g).to(device)
        out["caption_ids"], out["caption_mask"] = text()
    return out


def sdpa_priority(name: str):
    """Context preferring one SDPA backend ("default" leaves PyTorch's own order)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "default":
        return contextlib.nullcontext()
    order = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return sdpa_kernel([order[name]] + [b for b in order.values() if b != order[name]] + [SDPBackend.MATH],
                       set_priority=True)


def run(flavour: str, batch: int, compiled: bool, args) -> tuple[float, float, float]:
    """Returns (clips/s, TFLOP/s, peak GiB) of the timed steps."""
    device = args.device
    cfg = get_config(flavour, attention=args.attention)
    torch.manual_seed(0)
    raw = CLIPViP(cfg).to(device).train()
    raw.gradient_checkpointing = args.checkpointing
    model = torch.compile(raw) if compiled else raw
    loss_fn = OCLLoss(("vsc", "fc") if args.ocl else ("vs",))
    opt = build_optimizer(raw, OptimConfig(lr=1e-6))
    data = make_batch(cfg, batch, device, args.ocl)
    rt = Runtime(0, 1, torch.device(device), "bf16" if device == "cuda" else "fp32", cfg.image_size)
    guard = FiniteGuard(rt.device)
    counter = {"step": 0}

    def step():
        counter["step"] += 1
        with sdpa_priority(args.sdpa):  # the chosen kernel is baked into the compiled graph
            return train_step(model, raw, loss_fn, data, opt, step=counter["step"], grad_clip=5.0, rt=rt,
                              guard=guard)["loss"]

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    start = time.perf_counter()
    first = step().item()  # same seed and weights: eager and compiled must agree here
    for _ in range(args.warmup - 1):
        step()
    sync()
    warm_s = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - start
    guard.check()  # raises if any timed step was not finite
    assert torch.isfinite(loss), f"non-finite loss {loss.item()}"
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=acts) as prof:
            step()
            sync()
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile))
    clips = batch * args.steps / elapsed
    flops = video_flops_per_clip(cfg, FRAMES, TEXT_LEN, texts=1)
    if args.ocl:
        flops += video_flops_per_clip(cfg, 1, TEXT_LEN, texts=1)  # the frame (T=1) and its caption
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    print(f"  {flavour:5s} batch {batch:3d} {'compiled' if compiled else 'eager':8s} {clips:8.1f} clips/s "
          f"{clips * flops / 1e12:7.2f} TFLOP/s  {elapsed / args.steps * 1e3:7.1f} ms/step  peak {mem:5.1f} GiB  "
          f"(warm-up {warm_s:.0f} s, first loss {first:.5f})", flush=True)
    del model, raw, opt, data
    if device == "cuda":
        torch.cuda.empty_cache()
    return clips, clips * flops / 1e12, mem


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--flavours", default="B/32,B/16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (>= 1; includes compilation)")
    p.add_argument("--attention", default="proxy")
    p.add_argument("--ocl", action="store_true", help="video+subtitle and frame+caption, loss vsc+fc")
    p.add_argument("--sdpa", default="default", choices=["default", "cudnn", "flash", "efficient"],
                   help="preferred SDPA backend")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS", help="print the top kernels of one step")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per layer")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    print(f"T={FRAMES} text={TEXT_LEN} attention={args.attention} loss={'vsc+fc' if args.ocl else 'vs'} "
          f"sdpa={args.sdpa} checkpointing={args.checkpointing} bf16-autocast={args.device == 'cuda'}")
    for flavour in args.flavours.split(","):
        results = {mode: run(flavour, args.batch, mode == "compiled", args) for mode in args.modes.split(",")}
        if len(results) == 2:
            print(f"  {flavour}: compiled / eager = {results['compiled'][0] / results['eager'][0]:.2f}x")


if __name__ == "__main__":
    main()
