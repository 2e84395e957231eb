"""What refusing damaged weights costs when an OFA model loads: reading a converted model and
building it (``load_converted`` + ``build_model``, the captioner's and fine-tuning's load path)
with ``check_finite`` against the same with the check skipped, alternated in one run, on a
converted model of a real OFA size (random weights of the flavour's shapes, written to a temporary
folder first).

    .venv/bin/python -m bench.ofa_load --flavour large --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from caption.ofa import checkpoint
    from caption.ofa.config import flavour

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flavour", default="large", choices=("tiny", "medium", "base", "large", "huge"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = flavour(args.flavour, vocab_size=59457)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in checkpoint.port_shapes(cfg).items()}
    n_params = sum(t.numel() for t in state.values())
    out = Path(tempfile.mkdtemp(prefix="bench_ofa_load_"))
    real_check = checkpoint.check_finite
    try:
        checkpoint.save_converted(out, cfg, state, {})
        del state

        def load(check: bool) -> float:
            checkpoint.check_finite = real_check if check else (lambda state, source: None)
            t0 = time.perf_counter()
            c, weights, _ = checkpoint.load_converted(out)
            checkpoint.build_model(c, weights)
            return time.perf_counter() - t0

        with_check, without = [], []
        for _ in range(args.repeats):  # alternated, so drift of a shared machine hits both alike
            without.append(load(False))
            with_check.append(load(True))
        weights = checkpoint.load_converted(out)[1]
        t0 = time.perf_counter()
        real_check(weights, out)
        alone = time.perf_counter() - t0
        size = (out / checkpoint.WEIGHTS_FILE).stat().st_size / 2**30
        print(f"OFA-{args.flavour}: {n_params / 1e6:.0f}M parameters, {size:.2f} GiB; best of {args.repeats}")
        print(f"load + build, no check      {min(without):7.3f} s")
        print(f"load + build, check_finite  {min(with_check):7.3f} s")
        print(f"check_finite on loaded weights {alone:7.3f} s")
        print(f"ratio with / without        {min(with_check) / min(without):7.3f}x")
    finally:
        checkpoint.check_finite = real_check
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
