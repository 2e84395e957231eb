"""``clipvip demo``: the whole CLIP-ViP recipe on synthesised clips, on a laptop, offline, in minutes.

1. synthesise clips of moving coloured shapes with ASR-like subtitles (mostly off-topic speech; the
   pretraining set), clips with clean descriptions (a downstream-style fine-tuning, validation and
   test set) and a labelled set for the captioner, sharing no clip with the others;
2. fine-tune a tiny OFA on the labelled set's middle frames with OFA's caption recipe (colour and
   shape, never direction) and measure its caption accuracy on held-out frames;
3. curate the pretraining clips with the Ray pipeline (local Ray), captioning middle frames;
4. write the NMI domain-gap report: subtitles, captions and the downstream descriptions;
5. post-pretrain small CLIP-ViP models from the shards: proxy-guided attention with subtitles only,
   with subtitles + captions (OCL) and with captions only, each at several seeds, and full joint
   attention and CLIP4Clip mean pooling with OCL; fine-tune the proxy model on the downstream-style
   set (checkpoint chosen on its validation split); two runs at a time;
6. evaluate text-to-video retrieval zero-shot on the held-out clips (with and without DSL) and the
   motion-direction probe (``model/direction.py``), where order-blind pooling is at chance, and the
   fine-tuned model again;
7. write ``report.md`` with the tables, caption examples, loss curves and NMI heatmap, and the
   commands that made them.

With a CLIP (``clip_model``) or captioner (``caption_model``) given, the same run uses those
weights; with none it says plainly that the models are tiny.
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
from jobs.demo_variants import VARIANTS

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
    subtitles: str = "asr"  # pretraining subtitles: "asr" (mostly off-topic speech) | "narrated" (about the clip)
    n_finetune: int = 96  # downstream-style training clips (clean descriptions)
    n_val: int = 32  # downstream-style validation clips: fine-tune checkpoint selection
    n_test: int = 96  # held-out test clips: every table
    # The captioner's labelled clips (their middle frames): fine-tuning and held-out accuracy.
    n_caption_train: int = 512
    n_caption_heldout: int = 64
    caption_steps: int = 150  # 0 keeps caption_model as given
    caption_batch_size: int = 32
    caption_lr: float = 1e-3  # the tiny random OFA only; a given OFA keeps the recipe's 1e-5
    num_frames: int = 8  # per clip in training and evaluation (12 in the paper; 8 costs a third less here)
    image_size: int = 32  # the debug flavour's input; 224 with a real CLIP
    flavour: str = "debug"
    clip_model: str = ""  # "" tiny random CLIP-ViP | HF CLIP dir or hub id
    caption_model: str = ""  # "" tiny OFA fine-tuned here | "ofa:<ckpt>" (fine-tuned here) | "hf:<model>" (as is)
    pretrain_steps: int = 120
    # Post-pretraining runs: every variant at ``seed``; the claim variants again at seed+1 .. seed+seeds-1.
    variants: tuple[str, ...] = ("proxy_subtitles", "proxy_ocl", "proxy_captions", "joint_ocl", "meanpool_ocl")
    claim_variants: tuple[str, ...] = ("proxy_subtitles", "proxy_ocl", "proxy_captions")
    seeds: int = 2
    finetune_steps: int = 120
    finetune_lr: float = 1e-3
    finetune_variants: tuple[str, ...] = ("proxy_ocl",)  # before/after table
    batch_size: int = 32
    lr: float = 2e-3  # random-init tiny models; a real CLIP wants ~5e-6 (the paper's)
    # Tiny models trained from scratch start at CLIP's from-scratch temperature; CLIP weights keep 4.60.
    logit_scale_init: float = 2.66
    # From-scratch models only (CLIP weights keep the official zeros): at zeros a random-init tower
    # is blind to frame order and stays so; N(0, 0.5) learnt direction in ~500 steps on clean text.
    temporal_init_std: float = 0.5
    short_side: int = 64  # training copies in the shards; 240 (HD-VILA-like) with a real 224 px CLIP
    nmi_n: int = 200  # sentences per corpus in the NMI report
    ray_num_cpus: int = 2
    num_workers: int = 0  # loader worker processes per training run (0: the run's own process decodes)
    train_workers: int = 2  # training runs at once, each in its own process with cores / train_workers threads
    synth_workers: int = 2  # processes encoding the synthetic clips


def small(cfg: DemoConfig) -> DemoConfig:
    """The reduced size CI runs: every stage, fewer clips and steps."""
    return dataclasses.replace(cfg, n_pretrain=48, n_finetune=24, n_val=8, n_test=12, pretrain_steps=12,
                               finetune_steps=6, batch_size=8, nmi_n=40, n_caption_train=24, n_caption_heldout=8,
                               caption_steps=4, caption_batch_size=8)


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
    with clock("fine-tune the captioner (OFA caption stage 1)"):
        caption_model = st.train_captioner(cfg, out, data, results)
    with clock("curate shards with Ray (middle frames + captions)"):
        shards = st.curate(cfg, out, data, caption_model, results)
    with clock("NMI domain-gap report"):
        st.nmi_report(cfg, out, shards, data, results)
    tokenizer_dir = st.tokenizer(cfg, out, shards, data)
    with clock(f"post-pretrain {len(st.pretrain_runs(cfg))} CLIP-ViP runs and fine-tune {len(cfg.finetune_variants)}, "
               f"{cfg.train_workers} at a time"):
        runs = st.train_all(cfg, out, shards, tokenizer_dir, data, results)
    with clock("evaluate retrieval and the direction probe"):
        st.evaluate_variants(cfg, out, runs, tokenizer_dir, data, results)
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
    unknown = [v for v in (*cfg.variants, *cfg.claim_variants, *cfg.finetune_variants) if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    missing = [v for v in (*cfg.claim_variants, *cfg.finetune_variants) if v not in cfg.variants]
    if missing:
        raise UserError(f"claim_variants and finetune_variants must be among variants {list(cfg.variants)}; "
                        f"add {missing} to variants")
    if cfg.seeds < 1:
        raise UserError(f"seeds {cfg.seeds} must be at least 1")
    if cfg.subtitles not in ("asr", "narrated"):
        raise UserError(f"subtitles {cfg.subtitles!r}: choose asr or narrated")
    if Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise UserError(f"out_dir {cfg.out_dir} is a file; give a new or existing folder (--out)")
    run(cfg, argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main("clipvip demo", main))
