"""Small helpers every job entrypoint shares: logging set-up and offline defaults."""

from __future__ import annotations

import logging
import os

from common.errors import UserError


def setup_logging(level: str | int = "INFO") -> None:
    """Configure logging once, in the entrypoint (libraries only call ``logging.getLogger``)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # faiss says at INFO, on every import, which SIMD build it loaded: not news to a user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def offline_defaults() -> None:
    """Keep Ray on loopback and Hugging Face libraries off the network unless the user says otherwise."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cli_main(prog: str, main, argv: list[str] | None = None) -> int:
    """Run a job's ``main(argv)``: a :class:`common.errors.UserError` is one line on stderr and exit
    code 2, never a traceback. Nothing broader is caught: any other exception is a bug, and its
    traceback reaches stderr (exit code 1).

    ``--debug`` anywhere in argv re-raises a user error too, for a developer who wants the traceback.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
