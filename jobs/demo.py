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
   motion-direction probe (``demo/direction.py``), where order-blind pooling is at chance, and the
   fine-tuned model again;
7. embed the curated clips with the fine-tuned model, index them and search them with a few text
   queries (``search_examples.png``), printing the ``clipvip search`` and ``clipvip serve`` commands;
8. write ``report.md`` with the tables, caption examples, loss curves and NMI heatmap, and the
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

from common.errors import UserError
from common.jsonio import config_json, strict_json
from jobs import config as config_io
from jobs.common import cli_main, offline_defaults, setup_logging
from jobs.help import HelpFormatter
from demo.config import VARIANTS, DemoConfig, fields_help, small

logger = logging.getLogger("clipvip.demo")


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
    from demo import stages as st
    from demo import training

    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config_json(cfg))
    clock = StageClock(total=8)
    results: dict[str, Any] = {"config": strict_json(cfg), "commands": [], "notes": st.weights_notes(cfg)}
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
    with clock(f"post-pretrain {len(training.pretrain_runs(cfg))} CLIP-ViP runs and fine-tune "
               f"{len(training.finetune_runs(cfg))}, "
               f"{cfg.train_workers} at a time"):
        runs = training.train_all(cfg, out, shards, tokenizer_dir, data, results)
    with clock("evaluate retrieval and the direction probe"):
        st.evaluate_variants(cfg, out, runs, tokenizer_dir, data, results)
    with clock("embed, index and search the clips"):
        from demo.search_stage import search_stage

        # The first fine-tuned run (the first fine-tuned variant at the first seed), else the first
        # post-pretrained one.
        model_dir = next((r["best_dir"] for r in results["finetune"]["runs"].values()), None) \
            or next(iter(runs.values()))
        search_stage(cfg, out, shards, model_dir, results)
    with clock("write the report"):
        results["timings_s"] = dict(clock.times, total=round(clock.elapsed, 2))
        report = st.write_report(cfg, out, results)
    print(f"\nreport: {report}\ntotal time: {clock.elapsed:.1f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="clipvip demo", description=__doc__, formatter_class=HelpFormatter,
                                epilog="fields (--set FIELD=VALUE, or a --config file), with their defaults:\n"
                                       + fields_help())
    p.add_argument("--config", help="TOML/YAML file with the fields below")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (below)")
    p.add_argument("--out", help="output folder (default demo_out)")
    p.add_argument("--small", action="store_true", help="the reduced size CI runs: a smoke test of every stage in "
                   "about 3 minutes, whose numbers mean nothing")
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
