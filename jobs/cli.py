"""The ``clipvip`` command: one subcommand per job, each a thin module in ``jobs/``.

Each job module exposes ``main(argv) -> int`` and also runs as ``python -m jobs.<name>`` (the form
``ray job submit`` uses). Modules load lazily so ``clipvip --help`` stays fast. Both ways run
``main`` through :func:`jobs.common.cli_main`: a user error is one line on stderr and exit code 2
(``--debug`` anywhere shows the traceback instead).
"""

from __future__ import annotations

import importlib
import sys

from jobs.common import cli_main

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("jobs.demo", "the whole recipe on synthesised clips: curate, caption, NMI, pretrain, evaluate"),
    "synth": ("jobs.synth", "write synthetic H.264 clips with moving shapes and a manifest"),
    "curate": ("jobs.curate", "manifest -> middle frames -> captions -> WebDataset shards (Ray)"),
    "caption": ("jobs.caption", "caption images with a captioner; convert official OFA checkpoints"),
    "nmi": ("jobs.nmi", "the NMI domain-gap report between text corpora"),
    "pretrain": ("jobs.pretrain", "post-pretrain CLIP-ViP on curated shards (OCL losses)"),
    "finetune": ("jobs.finetune", "fine-tune CLIP-ViP for text-video retrieval"),
    "evaluate": ("jobs.evaluate", "evaluate retrieval (R@K, MdR, MnR, with and without DSL)"),
    "encode": ("jobs.encode", "texts and videos to normalised embeddings with a trained model"),
    "embed": ("jobs.embed", "embed curated shards or a video manifest into parquet parts (Ray)"),
    "index": ("jobs.index", "build or grow a faiss index over embedding parts, tuned to a latency budget"),
    "search": ("jobs.search", "text, more-like-this or vector queries over an index, with filters"),
    "dedup": ("jobs.dedup", "semantic near-duplicates: a report and the trainer's exclusion list"),
    "serve": ("jobs.serve", "an HTTP JSON API and a web page over one or more indices"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: clipvip <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'clipvip <command> --help' for a command's options; add --debug for tracebacks."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"clipvip: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (clipvip --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # Every command's user errors (common.errors.UserError and its subclasses) become one line on
    # stderr and exit code 2 here, whatever the module; --debug shows the traceback instead. Any other
    # exception is a bug and keeps its traceback.
    return cli_main(f"clipvip {name}", module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
