"""Shared fixtures. Everything is built here, offline: synthesised H.264 clips, tiny models.

Run the default suite with ``.venv/bin/python -m pytest``; ``-m slow`` and ``-m gpu`` select the
deselected extras.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def synth_clips(tmp_path_factory) -> Path:
    """24 real H.264 clips of mixed size, fps and keyframe interval; returns the manifest path."""
    from pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, 24, seed=3, span_fraction=0.125)


@pytest.fixture(scope="session")
def shared_corpora() -> Path:
    """``../shared/corpora`` beside the checkout; tests that need it skip cleanly when it is absent."""
    path = SHARED / "corpora"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real corpora live beside the checkout, never in it)")
    return path
