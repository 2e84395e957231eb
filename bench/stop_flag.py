"""What the per-step stop flag (train/preempt.py) costs a distributed step.

Two gloo processes on loopback run the same DDP step of a small MLP (forward, backward, gradient
all-reduce, SGD) in alternating blocks: without the flag, then with ``StopOnSignal.requested()``
after every step (an async all-reduce of one int on its own gloo group, waited a step later).
Prints each variant's median step time over the blocks and their ratio, measured side by side in
one run.

Run: .venv/bin/python bench/stop_flag.py [--steps 200] [--blocks 6] [--width 512]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(rank: int, world: int, port: int, steps: int, blocks: int, width: int, out: dict) -> None:
    from train.preempt import StopOnSignal, flag_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = flag_group(world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, width)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, width)

    def block(with_flag: bool) -> float:
        with StopOnSignal(world, group, announce=False) as stop:
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                model(x).square().mean().backward()
                opt.step()
                if with_flag:
                    stop.requested()
            return (time.perf_counter() - t0) / steps

    block(False)  # warm-up
    times = {False: [], True: []}
    for _ in range(blocks):
        for with_flag in (False, True):
            times[with_flag].append(block(with_flag))
    if rank == 0:
        out.update({k: v for k, v in times.items()})
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="steps per block")
    p.add_argument("--blocks", type=int, default=6, help="blocks per variant, alternating")
    p.add_argument("--width", type=int, default=512, help="MLP width (sets the step's compute)")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, port, args.steps, args.blocks, args.width, out), nprocs=2, join=True)
        plain, flagged = statistics.median(out[False]), statistics.median(out[True])
    print(f"2 gloo processes, DDP MLP width {args.width}, {args.steps} steps x {args.blocks} blocks each, alternating")
    print(f"without the stop flag: {plain * 1e3:.3f} ms/step (median of blocks)")
    print(f"with the stop flag:    {flagged * 1e3:.3f} ms/step")
    print(f"ratio with/without:    {flagged / plain:.3f}  (+{(flagged - plain) * 1e6:.0f} us/step)")


if __name__ == "__main__":
    main()
