"""Benchmark the NMI domain-gap report: 8 real corpora x N sentences, time split and faiss vs scikit-learn.

1. The default report, cold embedding cache: time split into read, encoder load, encode, cluster,
   score, render.
2. The same report on the same (now cached) embeddings with scikit-learn K-means, and with a single
   faiss start: K-means time ratio and agreement of every NMI value with the default (faiss, 10
   restarts).

Usage (2-core CPU box): ``.venv/bin/python bench/nmi.py [--corpora ../shared/corpora] [--n 1000] [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from analysis.render import write_report  # noqa: E402
from analysis.report import NMIConfig, NMIReport, run  # noqa: E402

PRETRAIN = {"asr": "youtube_asr_anet.jsonl", "how2": "how2_transcripts.jsonl", "cc3m": "cc3m.jsonl",
            "coco": "coco.jsonl"}
DOWNSTREAM = {"msrvtt_test": "msrvtt_test1ka.jsonl", "msrvtt_train": "msrvtt_train.jsonl",
              "didemo": "didemo.jsonl", "anet": "activitynet.jsonl"}


def _values(r: NMIReport) -> np.ndarray:
    """Every per-seed NMI value of the report: all pairs, then the joint view."""
    return np.array([v for p in r.pairs for v in p.nmi.values] + list(r.joint.nmi.values))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    p.add_argument("--n", type=int, default=NMIConfig().n)
    p.add_argument("--seeds", type=int, nargs="+", default=list(NMIConfig().seeds))
    p.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (the build box has 2 cores)")
    p.add_argument("--compare-float32", action="store_true",
                   help="also encode in float32 (cold) and compare encode time and NMI values with the default dtype")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    c = Path(args.corpora)
    if not c.is_dir():
        print(f"{c} is absent; pass --corpora")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cfg = NMIConfig(pretrain=tuple(f"{k}={c / v}" for k, v in PRETRAIN.items()),
                        downstream=tuple(f"{k}={c / v}" for k, v in DOWNSTREAM.items()),
                        n=args.n, seeds=tuple(args.seeds), cache_dir=f"{tmp}/cache", out_dir=f"{tmp}/out",
                        progress=False)
        t, cpu = time.perf_counter(), time.process_time()
        cold = run(cfg)
        t_render = time.perf_counter()
        write_report(cold, cfg.out_dir)
        render = time.perf_counter() - t_render
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        warm = run(cfg)
        sk = run(dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, backend="sklearn")))
        one = run(dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, restarts=1)))
        fp32 = None
        if args.compare_float32:
            fp32 = run(dataclasses.replace(cfg, cache_dir=f"{tmp}/cache32",
                                           encoder=dataclasses.replace(cfg.encoder, dtype="float32")))

    tm = cold.timings
    print(f"# NMI report: {len(cold.names)} corpora x {args.n} texts, seeds {args.seeds}, "
          f"{torch.get_num_threads()} threads, encoder {cold.settings['encoder']}\n")
    print("| step | seconds |\n|---|---|")
    for k in ("read", "load_encoder", "encode", "cluster", "score"):
        print(f"| {k} | {tm[k]:.2f} |")
    print(f"| render (JSON, Markdown, 2 PNGs) | {render:.2f} |")
    print(f"| **whole report, cold cache** | **{wall:.2f}** (process CPU {cpu:.1f} s; load avg "
          f"{os.getloadavg()[0]:.1f} at the end) |")
    print(f"| whole report, warm cache (compute only) | {warm.timings['total']:.2f} |\n")

    base = _values(cold)
    print("| K-means on the same embeddings | cluster s | vs faiss x10 | max abs NMI diff | mean abs diff |")
    print("|---|---|---|---|---|")
    for label, r in (("faiss, 10 restarts (default)", warm), ("scikit-learn, n_init=10", sk),
                     ("faiss, 1 start", one)):
        d = np.abs(_values(r) - base)
        print(f"| {label} ({r.settings['kmeans_backend']}) | {r.timings['cluster']:.2f} | "
              f"{r.timings['cluster'] / warm.timings['cluster']:.1f}x | {d.max():.3f} | {d.mean():.4f} |")
    print(f"\nfits per report: {len(base)} (pairs x seeds + joint x seeds)\n")
    print("| pair (k=2) | NMI faiss x10 | NMI sklearn | NMI faiss x1 |\n|---|---|---|---|")
    for a, b in cold.focus:
        f, s, o = (r.pair(a, b).nmi for r in (cold, sk, one))
        cells = " | ".join(f"{v.mean:.3f} +- {v.std:.3f}" for v in (f, s, o))
        print(f"| {a} / {b} | {cells} |")
    j = cold.joint.nmi
    print(f"| all {cold.joint.k} (k={cold.joint.k}) | {j.mean:.3f} +- {j.std:.3f} | {sk.joint.nmi.mean:.3f} | "
          f"{one.joint.nmi.mean:.3f} |")
    if fp32 is not None:
        d = np.abs(_values(fp32) - base)
        dtype, t32 = cold.settings["encoder_cache_id"].rsplit(":", 1)[-1], fp32.timings["encode"]
        print(f"\nencoder float32 vs {dtype}: encode {t32:.1f} s vs {tm['encode']:.1f} s ({t32 / tm['encode']:.1f}x); "
              f"NMI max abs diff {d.max():.3f}, mean {d.mean():.4f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
