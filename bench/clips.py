"""The benchmark clip set: 200 synthesised H.264 clips of mixed size (224p to 720p) and keyframe
interval (3 to 250 frames), cached in a folder so repeated runs reuse them."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from demo import synth

BIG_SIZES = ((640, 360), (854, 480), (1280, 720))


def bench_clips(out_dir: str | Path, n: int = 200, seed: int = 0) -> Path:
    """Write (once) ``n`` clips and ``manifest.jsonl``; a quarter of them at 360p to 720p."""
    out = Path(out_dir)
    manifest = out / "manifest.jsonl"
    if manifest.exists() and sum(1 for _ in manifest.open()) == n:
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i, spec in enumerate(synth.sample_specs(n, seed, prefix="bench")):
        if i % 4 == 3:
            w, h = BIG_SIZES[(i // 4) % len(BIG_SIZES)]
            spec = dataclasses.replace(spec, width=w, height=h, seconds=min(spec.seconds, 4.0))
        rows.append(synth.write_clip(spec, out, rng))
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
