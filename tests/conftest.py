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
    from demo.synth import synthesize

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
    """Shards written by the pipeline's own writer from a synth manifest, without Ray.

    Each clip goes through the curation's frame extraction (``process_clip``: middle frame and the
    3 fps training copy) and ``ShardWriter`` (the real tar, status parquet and marker); the
    subtitle is the manifest's noisy ``text`` and, standing in for a captioner, the caption is its
    clean ``caption_gt``. Returns the brace pattern of the shards.
    """
    import json

    from pipeline.frames import FrameConfig, process_clip
    from pipeline.writer import ShardWriter, ShardWriterConfig, write_summary

    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    cfg = ShardWriterConfig(output_dir=str(out_dir), prefix=prefix, samples_per_shard=per_shard)
    n_shards = (len(rows) + per_shard - 1) // per_shard
    for s in range(n_shards):
        chunk = rows[s * per_shard:(s + 1) * per_shard]
        writer = ShardWriter(cfg, s, len(chunk))
        for i, row in enumerate(chunk):
            out = process_clip(row["path"], row.get("start"), row.get("end"), FrameConfig())
            extra = {k: v for k, v in row.items() if k not in ("key", "path", "text", "start", "end")}
            writer.write({"key": row["key"], "path": row["path"], "text": row["text"], "extra": extra,
                          "shard": s, "row": s * per_shard + i, "status": "ok", "error": "", "jpg": out.jpg,
                          "mp4": out.mp4, "clip": json.dumps(out.meta()), "caption": row["caption_gt"],
                          "caption_info": json.dumps({"model": "", "note": "caption_gt of the synthetic clip"})})
        writer.close()
    write_summary(cfg, n_shards)
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

    from demo.synth import write_broken_files

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


@pytest.fixture()
def tiny_pretrain(synth_shards):
    """``tiny_pretrain(run_dir, num_workers=0, **changes)``: the TrainConfig of a 6-step CPU pretraining
    run of the debug model on the synthetic shards, checkpointing every 2 steps, no evaluation."""
    import dataclasses

    from train.data import ShardDataConfig
    from train.loop import EvalSection, ModelSection, TrainConfig
    from train.optim import OptimConfig

    def make(run_dir, num_workers: int = 0, **changes):
        base = TrainConfig(task="pretrain", run_dir=str(run_dir), steps=6, device="cpu", precision="fp32",
                           model=ModelSection(flavour="debug"),
                           data=ShardDataConfig(shards=synth_shards, batch_size=4, num_workers=num_workers,
                                                num_frames=4, image_size=32, max_text_len=16, shuffle_buffer=4),
                           optim=OptimConfig(lr=1e-3, warmup_ratio=0.2), eval=EvalSection(every=0, at_start=False),
                           checkpoint_every=2, log_every=1, tensorboard=False)
        return dataclasses.replace(base, **changes)

    return make


@pytest.fixture()
def preempt_training(monkeypatch):
    """``preempt_training(step)``: the trainer's ``train_step`` raises KeyboardInterrupt when it reaches
    ``step`` (a preemption mid-step); returns a function that puts the real step back."""
    import train.loop as loop

    real_step = loop.train_step

    def arm(at: int):
        def dies(*args, step, **kw):
            if step == at:
                raise KeyboardInterrupt(f"simulated preemption during step {at}")
            return real_step(*args, step=step, **kw)

        monkeypatch.setattr(loop, "train_step", dies)
        return lambda: monkeypatch.setattr(loop, "train_step", real_step)

    return arm

