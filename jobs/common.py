"""Small helpers every job entrypoint shares: logging set-up and offline defaults."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | int = "INFO") -> None:
    """Configure logging once, in the entrypoint (libraries only call ``logging.getLogger``)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def offline_defaults() -> None:
    """Keep Ray on loopback and Hugging Face libraries off the network unless the user says otherwise."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
