"""``clipvip demo``: the whole CLIP-ViP recipe on synthesised clips, on a laptop, offline, in minutes.

1. synthesise clips of moving coloured shapes with ASR-like subtitles (pretraining set), clips with
   clean descriptions (a downstream-style fine-tuning set) and held-out test clips;
2. curate the pretraining clips with the Ray pipeline (local Ray), captioning middle frames;
3. write the NMI domain-gap report: subtitles, captions and the downstream descriptions;
4. post-pretrain small CLIP-ViP models from the shards: proxy-guided attention, full joint
   attention and CLIP4Clip mean pooling with the OCL losses, and proxy attention on subtitles only;
5. evaluate text-to-video retrieval on the held-out clips (with and without DSL) and the
   motion-direction probe (``model/direction.py``), where order-blind pooling is at chance;
6. fine-tune the proxy model on the downstream-style set (checkpoint chosen on its validation
   split) and evaluate again;
7. write ``report.md`` with the tables, loss curves and NMI heatmap, and the commands that made them.

With a CLIP (``clip_model``) or captioner (``caption_model``) given, the same run uses those
weights; with none it says plainly that the models are tiny and randomly initialised.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from jobs import config as config_io
from jobs.common import UserError, cli_main, offline_defaults, setup_logging

logger = logging.getLogger("clipvip.demo")


@dataclasses.dataclass(kw_only=True, frozen=True)
class DemoConfig:
    """Sizes of the default demo; ``--small`` shrinks them for CI."""

    out_dir: str = "demo_out"
    seed: int = 0
    n_pretrain: int = 720  # curated into shards
    # A smaller palette than the synthesiser's full one: each training batch then holds clips that
    # differ only in motion direction, the negatives that make direction worth learning.
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square")
    n_finetune: int = 96  # downstream-style training clips (clean descriptions)
    n_val: int = 32  # downstream-style validation clips: fine-tune checkpoint selection
    n_test: int = 48  # held-out test clips: every table
    num_frames: int = 12
    image_size: int = 32  # the debug flavour's input; 224 with a real CLIP
    flavour: str = "debug"
    clip_model: str = ""  # "" tiny random CLIP-ViP | HF CLIP dir or hub id
    caption_model: str = ""  # "" tiny random OFA | "ofa:<ckpt>" | "hf:<model>"
    pretrain_steps: int = 250
    finetune_steps: int = 250
    finetune_lr: float = 1e-3
    finetune_variants: tuple[str, ...] = ("proxy_ocl", "meanpool_ocl")  # before/after tables, side by side
    batch_size: int = 32
    lr: float = 2e-3  # random-init tiny models; a real CLIP wants ~5e-6 (the paper's)
    # Tiny models trained from scratch start at CLIP's from-scratch temperature; CLIP weights keep 4.60.
    logit_scale_init: float = 2.66
    # From-scratch models only (CLIP weights keep the official zeros): at zeros a random-init tower
    # is blind to frame order and stays so; N(0, 0.5) learnt direction in ~500 steps on clean text.
    temporal_init_std: float = 0.5
    short_side: int = 64  # training copies in the shards; 240 (HD-VILA-like) with a real 224 px CLIP
    variants: tuple[str, ...] = ("proxy_ocl", "proxy_subtitles", "joint_ocl", "meanpool_ocl")
    nmi_n: int = 200  # sentences per corpus in the NMI report
    ray_num_cpus: int = 2
    num_workers: int = 1  # loader worker processes per training run


# variant -> (attention, loss terms, what it shows)
VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "proxy_ocl": ("proxy", ("vsc", "fc"), "CLIP-ViP: proxy-guided attention, L(V-SC) + L(F-C)"),
    "proxy_subtitles": ("proxy", ("vs",), "proxy-guided attention, subtitles only: L(V-S)"),
    "joint_ocl": ("joint", ("vsc", "fc"), "full joint attention over all tokens, L(V-SC) + L(F-C)"),
    "meanpool_ocl": ("meanpool", ("vsc", "fc"), "CLIP4Clip mean pooling of frame features, L(V-SC) + L(F-C)"),
}


def small(cfg: DemoConfig) -> DemoConfig:
    """The reduced size CI runs: every stage, fewer clips and steps."""
    return dataclasses.replace(cfg, n_pretrain=48, n_finetune=24, n_val=8, n_test=12, pretrain_steps=12,
                               finetune_steps=6, batch_size=8, nmi_n=40)


class StageClock:
    """Prints a clear line when each stage starts and ends, and keeps the split of wall time."""

    def __init__(self, total: int) -> None:
        self.total, self.index, self.times = total, 0, {}
        self.t0 = time.monotonic()

    def __call__(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                clock.index += 1
                self.start = time.monotonic()
                print(f"\n=== [{clock.index}/{clock.total}] {name}: started", flush=True)

            def __exit__(self, *exc):
                dt = time.monotonic() - self.start
                clock.times[name] = round(dt, 2)
                if exc[0] is None:
                    print(f"=== [{clock.index}/{clock.total}] {name}: done in {dt:.1f} s", flush=True)
                return False

        return _Stage()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def run(cfg: DemoConfig, argv: list[str]) -> dict[str, Any]:
    """Run every stage; return the results dict that ``report.md`` is written from."""
    from jobs import demo_stages as st

    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_io.write_resolved(cfg, out / "config.json")
    clock = StageClock(total=7)
    results: dict[str, Any] = {"config": config_io.to_dict(cfg), "commands": [], "notes": st.weights_notes(cfg)}
    results["commands"].append("clipvip demo " + " ".join(shlex.quote(a) for a in argv))
    for line in results["notes"]:
        print(f"note: {line}")

    with clock("synthesise clips"):
        data = st.synthesise(cfg, out, results)
    with clock("curate shards with Ray (middle frames + captions)"):
        shards = st.curate(cfg, out, data, results)
    with clock("NMI domain-gap report"):
        st.nmi_report(cfg, out, shards, data, results)
    tokenizer_dir = st.tokenizer(cfg, out, shards, data)
    with clock(f"post-pretrain {len(cfg.variants)} CLIP-ViP variants"):
        runs = st.pretrain_variants(cfg, out, shards, tokenizer_dir, data, results)
    with clock("evaluate retrieval and the direction probe"):
        st.evaluate_variants(cfg, out, runs, tokenizer_dir, data, results)
    with clock(f"fine-tune {len(cfg.finetune_variants)} variants and evaluate again"):
        st.finetune(cfg, out, runs, tokenizer_dir, data, results)
    with clock("write the report"):
        results["timings_s"] = dict(clock.times, total=round(clock.elapsed, 2))
        report = st.write_report(cfg, out, results)
    print(f"\nreport: {report}\ntotal time: {clock.elapsed:.1f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="clipvip demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML/YAML file with DemoConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    p.add_argument("--out", help="output folder (default demo_out)")
    p.add_argument("--small", action="store_true", help="the reduced size CI runs")
    args = p.parse_args(argv)
    offline_defaults()
    setup_logging("WARNING")
    logging.getLogger("clipvip.demo").setLevel(logging.INFO)
    base = small(DemoConfig()) if args.small else DemoConfig()
    cfg = config_io.load(DemoConfig, args.config, args.set, base=base)
    if args.out:
        cfg = dataclasses.replace(cfg, out_dir=args.out)
    if cfg.clip_model and cfg.flavour == "debug":
        # Real CLIP weights: real input size and the paper's post-pretraining learning rate.
        cfg = dataclasses.replace(cfg, flavour="B/32", image_size=224, short_side=240, lr=5e-6)
        print("note: clip_model given: 224 px frames, 240 px training copies, lr 5e-6 (override with --set)")
    unknown = [v for v in (*cfg.variants, *cfg.finetune_variants) if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    if Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise UserError(f"out_dir {cfg.out_dir} is a file; give a new or existing folder (--out)")
    run(cfg, argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip demo", main))
