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


def write_test_shards(manifest: Path, out_dir: Path, per_shard: int = 4, prefix: str = "train") -> str:
    """WebDataset shards with the pipeline's sample keys, straight from a synth manifest.

    Stand-in for the curation pipeline in trainer tests: the clip bytes go in unchanged, the middle
    frame is decoded with decord and stored as JPEG, the subtitle is the manifest's noisy ``text``
    and the caption its clean ``caption_gt``. Returns the brace pattern of the shards.
    """
    import io
    import json

    import decord
    import webdataset as wds
    from PIL import Image

    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(rows) + per_shard - 1) // per_shard
    sizes = {}
    for s in range(n_shards):
        name = f"{prefix}-{s:06d}.tar"
        chunk = rows[s * per_shard:(s + 1) * per_shard]
        with wds.TarWriter(str(out_dir / name)) as sink:
            for row in chunk:
                data = Path(row["path"]).read_bytes()
                vr = decord.VideoReader(row["path"], num_threads=1)
                middle = vr[len(vr) // 2].asnumpy()
                buf = io.BytesIO()
                Image.fromarray(middle).save(buf, format="JPEG", quality=90)
                meta = {k: row[k] for k in ("caption_gt", "color", "shape", "direction")}
                sink.write({"__key__": row["key"], "mp4": data, "jpg": buf.getvalue(),
                            "subtitle.txt": row["text"], "caption.txt": row["caption_gt"], "json": meta})
        sizes[name] = len(chunk)
    (out_dir / "sizes.json").write_text(json.dumps(sizes))
    return str(out_dir / f"{prefix}-{{000000..{n_shards - 1:06d}}}.tar")


@pytest.fixture(scope="session")
def synth_shards(synth_clips, tmp_path_factory) -> str:
    """Six 4-sample shards of the 24 synthesised clips; returns their brace pattern."""
    return write_test_shards(synth_clips, tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def synth_tokenizer(synth_clips, tmp_path_factory):
    """A tiny CLIP-format BPE tokenizer learnt offline from the synthesised subtitles and captions."""
    import json

    from model.tokenizer import load_tokenizer, train_clip_bpe

    rows = [json.loads(line) for line in Path(synth_clips).read_text().splitlines()]
    texts = [r["text"] for r in rows] + [r["caption_gt"] for r in rows]
    return load_tokenizer(str(train_clip_bpe(texts, tmp_path_factory.mktemp("tok"), num_merges=200)))


@pytest.fixture(scope="session")
def curate_manifest(synth_clips, tmp_path_factory) -> Path:
    """The 24 synthesised clips plus one row per failure the curate pipeline must turn into data.

    Extra rows (key -> expected error fragment): zero-byte, truncated, not-a-video and garbage files,
    a missing path, empty text, a span outside its video, and ``crash_*`` whose path makes the
    decode child SIGSEGV when ``CLIPVIP_DECODE_CRASH_ON=crashme`` is set.
    """
    import json
    import shutil

    from pipeline.synth import write_broken_files

    out = tmp_path_factory.mktemp("curate_in")
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    good = next(r for r in rows if "start" not in r)
    broken = write_broken_files(out / "broken", good["path"])
    crash = out / "crashme.mp4"
    shutil.copy(good["path"], crash)
    base = {k: v for k, v in good.items() if k not in ("key", "path", "start", "end")}
    for name, path in broken.items():
        rows.append({**base, "key": f"broken_{name}", "path": str(path)})
    rows.append({**base, "key": "broken_missing", "path": str(out / "does_not_exist.mp4")})
    rows.append({**base, "key": "broken_empty_text", "path": good["path"], "text": "  "})
    rows.append({**base, "key": "broken_span", "path": good["path"], "start": 100.0, "end": 104.0})
    rows.append({**base, "key": "crash_decoder", "path": str(crash)})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
