"""Benchmark the NMI domain-gap report: 9 real corpora x 1000 sentences x 3 seeds, before and after, in one run.

"Before" is the ``analysis/`` package at a baseline commit (default: the last one before the
K-means, encoder-loading and cache rework), unpacked from git into a temporary folder; "after" is
this checkout. Each report runs in its own Python process, as ``clipvip nmi`` would, so imports
and encoder loading count:

1. cold: an empty embedding cache (every sentence is encoded);
2. warm: the same report again on that cache (``--warm-runs`` times, median kept; before and after
   interleaved so a change in the machine's load hits both alike).

Printed: the time split (read, load encoder, encode, cluster, ...) side by side with the
before/after ratio, process CPU time, and how far the NMI values of the two moved (the K-means
backend changed, so single values may move within K-means' own run-to-run noise). With
``--backends`` the after-tree warm report also runs with faiss (the old default) and
scikit-learn K-means, to isolate the clustering; with ``--compare-float32`` the after tree also
encodes cold in float32, against the default precision (bfloat16 where the CPU has it).

Usage (2-core CPU box): ``.venv/bin/python bench/nmi.py [--corpora ../shared/corpora] [--n 1000]
[--seeds 0 1 2] [--baseline 141aed4] [--warm-runs 3] [--encoder SPEC] [--backends] [--compare-float32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# analysis/ before the rework this script measures: faiss K-means, the encoder always loaded, S20 cache keys.
BASELINE = "141aed4"

PRETRAIN = {"asr": "youtube_asr_anet.jsonl", "how2": "how2_transcripts.jsonl", "cc3m": "cc3m.jsonl",
            "coco": "coco.jsonl", "msrvtt_train": "msrvtt_train.jsonl"}
DOWNSTREAM = {"msrvtt_test": "msrvtt_test1ka.jsonl", "didemo": "didemo.jsonl", "anet": "activitynet.jsonl",
              "youcook2": "youcook2_val.jsonl"}
STEPS = ("read", "load_encoder", "encode", "cluster", "score", "bootstrap", "project")

# Runs in a fresh interpreter with the tree to measure first on sys.path; prints one JSON line.
DRIVER = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
tree, spec = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, tree)
from analysis.report import NMIConfig, run
from analysis.render import write_report
import dataclasses
overrides = {key: spec.pop(key) for key in ("cluster", "encoder") if key in spec}
cfg = NMIConfig(**spec)
for key, values in overrides.items():
    cfg = dataclasses.replace(cfg, **{key: dataclasses.replace(getattr(cfg, key), **values)})
t_import = time.perf_counter() - t0
report = run(cfg)
t = time.perf_counter()
write_report(report, cfg.out_dir)
render = time.perf_counter() - t
values = {f"{p.a}|{p.b}": list(p.nmi.values) for p in report.pairs}
values["all"] = list(report.joint.nmi.values)
print("BENCH " + json.dumps({"timings": report.timings, "render": render, "import": t_import,
                             "cpu": time.process_time() - c0, "values": values,
                             "backend": report.settings.get("kmeans_backend")}))
"""


def unpack_baseline(rev: str, dest: Path) -> Path | None:
    """``analysis/`` at ``rev`` (read from git, nothing in the checkout changes) -> ``dest``."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "analysis"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"baseline {rev} unavailable ({e}); measuring this checkout only")
        return None
    return dest


def run_report(tree: Path, spec: dict) -> dict:
    """One report in a fresh process; the wall time is the whole process, start-up and imports included."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(tree))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tree), json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=str(tree))
    wall = time.perf_counter() - t
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"report in {tree} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(line[len("BENCH "):])
    out["wall"] = wall
    return out


def median_run(runs: list[dict]) -> dict:
    """The run with the median process wall time (its split stays self-consistent)."""
    return sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]


def _row(label: str, before: float | None, after: float) -> str:
    if before is None:
        return f"| {label} | - | {after:.2f} | - |"
    ratio = f"{before / after:.1f}x" if after > 0.005 else "-"
    return f"| {label} | {before:.2f} | {after:.2f} | {ratio} |"


def print_split(title: str, before: dict | None, after: dict) -> None:
    print(f"\n### {title}\n\n| step (s) | before | after | before / after |\n|---|---|---|---|")
    for k in STEPS:
        if before and k in before["timings"]:
            print(_row(k, before["timings"][k], after["timings"].get(k, 0.0)))
        elif k in after["timings"]:  # a step the baseline did not have (or did not time apart)
            print(f"| {k} | - | {after['timings'][k]:.2f} | {'new' if before else '-'} |")
    print(_row("render (JSON, Markdown, 2 PNGs)", before["render"] if before else None, after["render"]))
    print(_row("imports before the report starts", before["import"] if before else None, after["import"]))
    print(_row("**process wall**", before["wall"] if before else None, after["wall"]))
    print(_row("process CPU", before["cpu"] if before else None, after["cpu"]))


def agreement(a: dict, b: dict) -> tuple[float, float, int]:
    """Max and mean absolute difference of every per-seed NMI value, and how many values there are."""
    diffs = [abs(x - y) for key in a["values"] for x, y in zip(a["values"][key], b["values"][key])]
    return max(diffs), sum(diffs) / len(diffs), len(diffs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baseline", default=BASELINE, help="git revision whose analysis/ is 'before'")
    p.add_argument("--warm-runs", type=int, default=3, help="warm reports per tree (median kept)")
    p.add_argument("--backends", action="store_true",
                   help="also time the after-tree warm report with faiss and scikit-learn K-means")
    p.add_argument("--encoder", help="encoder spec for both trees (default: the report's, the bundled MiniLM), "
                   "e.g. st:<local sentence-transformers folder> or clip:<local CLIP folder>")
    p.add_argument("--compare-float32", action="store_true",
                   help="also encode cold in float32 and compare encode time and NMI with the default precision")
    args = p.parse_args()
    c = Path(args.corpora).resolve()
    if not c.is_dir():
        print(f"{c} is absent; pass --corpora")
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "before").mkdir()
        trees = {"after": ROOT}
        base = unpack_baseline(args.baseline, tmp / "before")
        if base is not None:
            trees = {"before": base, "after": ROOT}

        def spec(name: str, **extra) -> dict:
            return {"pretrain": [f"{k}={c / v}" for k, v in PRETRAIN.items()],
                    "downstream": [f"{k}={c / v}" for k, v in DOWNSTREAM.items()],
                    "n": args.n, "seeds": args.seeds, "cache_dir": str(tmp / f"cache-{name}"),
                    "out_dir": str(tmp / f"out-{name}"), "progress": False,
                    **({"encoder": {"spec": args.encoder}} if args.encoder else {}), **extra}

        cold = {name: run_report(tree, spec(name)) for name, tree in trees.items()}
        warm_runs: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.warm_runs):
            for name, tree in trees.items():
                warm_runs[name].append(run_report(tree, spec(name)))
        warm = {name: median_run(runs) for name, runs in warm_runs.items()}
        extra = {}
        if args.backends:
            for backend in ("faiss", "sklearn"):
                extra[backend] = run_report(ROOT, spec("after", cluster={"backend": backend}))
        fp32 = (run_report(ROOT, spec("fp32", encoder={"spec": args.encoder or "minilm", "dtype": "float32"}))
                if args.compare_float32 else None)

    load = os.getloadavg()
    print(f"## NMI report: {len(PRETRAIN) + len(DOWNSTREAM)} corpora x {args.n} texts x seeds {args.seeds}, "
          f"encoder {args.encoder or 'minilm'}\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"before = analysis/ at {args.baseline if 'before' in trees else '(unavailable)'}, after = this checkout; "
          f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.")
    print_split("Cold cache (every sentence encoded)", cold.get("before"), cold["after"])
    print_split(f"Warm cache (median of {args.warm_runs})", warm.get("before"), warm["after"])
    print("\nwarm process wall, every run (s): " + "; ".join(
        f"{name} " + ", ".join(f"{r['wall']:.1f}" for r in runs) for name, runs in warm_runs.items()))
    if "before" in trees:
        hi, mean, n = agreement(warm["before"], warm["after"])
        print(f"\nNMI values before vs after ({n} per-seed values): max abs diff {hi:.3f}, mean {mean:.4f} "
              f"(K-means backend {warm['before']['backend']} -> {warm['after']['backend']})")
    if extra:
        a = warm["after"]
        print("\n| warm report, K-means backend | cluster s | process wall s | max abs NMI diff vs numpy |\n"
              "|---|---|---|---|")
        print(f"| numpy (default) | {a['timings']['cluster']:.2f} | {a['wall']:.1f} | 0 |")
        for backend, r in extra.items():
            print(f"| {backend} | {r['timings']['cluster']:.2f} | {r['wall']:.1f} | {agreement(a, r)[0]:.3f} |")
    if fp32 is not None:
        base, t32 = cold["after"], fp32["timings"]["encode"]
        hi, mean, _ = agreement(base, fp32)
        print(f"\nencoder float32 vs the default precision, cold: encode {t32:.1f} s vs {base['timings']['encode']:.1f} s "
              f"({t32 / base['timings']['encode']:.1f}x); NMI max abs diff {hi:.3f}, mean {mean:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
