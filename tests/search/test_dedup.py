"""``clipvip dedup`` (search/dedup.py, search/dedup_report.py) against hand-made near-duplicates (the same
clips re-encoded smaller and at another quality), and the trainer's loader skipping the result.
Run: ``.venv/bin/python -m pytest tests/search/test_dedup.py -q``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from common.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def reencode(src: str, dst: Path, crf: int = 34, scale: float = 0.75) -> None:
    """The clip again: decoded and re-encoded with libx264 at ``scale`` of its size and another quality."""
    with av.open(src) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        w, h = int(stream.width * scale) // 2 * 2, int(stream.height * scale) // 2 * 2
        enc = out.add_stream("libx264", rate=stream.average_rate)
        enc.width, enc.height, enc.pix_fmt, enc.options = w, h, "yuv420p", {"crf": str(crf)}
        for frame in inp.decode(stream):
            for packet in enc.encode(frame.reformat(width=w, height=h, format="yuv420p")):
                out.mux(packet)
        for packet in enc.encode():
            out.mux(packet)


def test_reencodes_are_found_and_only_they(synth_clips, search_model, tmp_path):
    from search.dedup import semantic_dedup
    from search.dedup_report import write
    from search.encoder import Encoder

    rows = [r for r in read_jsonl(synth_clips) if "start" not in r][:10]
    specs, keys, partner = [], [], {}
    for r in rows:
        specs.append(r["path"])
        keys.append(r["key"])
    for i, r in enumerate(rows[:4]):
        dst = tmp_path / f"re{i}.mp4"
        reencode(r["path"], dst, crf=30 + 2 * i, scale=0.5 + 0.1 * i)
        specs.append(str(dst))
        keys.append(f"{r['key']}_re")
        partner[f"{r['key']}_re"] = r["key"]
    enc = Encoder.load(search_model[0], tokenizer=search_model[1], device="cpu", num_frames=4)
    vectors = enc.encode_videos(specs)
    sims = vectors @ vectors.T
    n = len(rows)
    pair_sims = [sims[n + i, i] for i in range(4)]
    distinct = sims[:n, :n][~np.eye(n, dtype=bool)]
    assert min(pair_sims) > distinct.max(), "re-encodes must sit above every distinct pair for this test to mean anything"
    threshold = float((min(pair_sims) + distinct.max()) / 2)
    result = semantic_dedup(keys, vectors, threshold, n_clusters=2)
    dropped = {keys[i]: keys[result.nearest[i]] for i in result.dropped}
    # Exactly one clip of each pair goes, and what stays in its place is its partner.
    assert len(dropped) == 4
    for gone, kept in dropped.items():
        assert partner.get(gone) == kept or partner.get(kept) == gone
    summary = write(result, tmp_path / "dedup", {"source": "test"})
    assert summary["dropped"] == 4 and (tmp_path / "dedup" / "similarity.png").stat().st_size > 1000
    assert sorted((tmp_path / "dedup" / "drop_keys.txt").read_text().split()) == sorted(dropped)
    assert "| threshold | clips dropped |" in (tmp_path / "dedup" / "report.md").read_text()


def test_max_similarity_is_against_earlier_members_only():
    """Three identical vectors and one apart, one cluster: the first identical is kept, two dropped."""
    from search.dedup import semantic_dedup

    v = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    result = semantic_dedup(["a", "b", "c", "d"], v, 0.99, n_clusters=1)
    assert sorted(result.keys[i] for i in result.dropped) == ["b", "d"]
    assert {result.keys[result.nearest[i]] for i in result.dropped} == {"a"}
    assert result.max_similarity[0] == -1.0 and result.max_similarity[2] < 0.99


def test_the_trainers_loader_skips_the_exclusion_list(synth_shards, synth_tokenizer, tmp_path):
    from shards.format import expand_pattern, raw_samples
    from train.data import ShardDataConfig, ShardStream

    all_keys = [s["__key__"] for s in raw_samples(expand_pattern(synth_shards), lambda e: None, wanted=lambda e: False)]
    drop = all_keys[1::3]
    (tmp_path / "drop_keys.txt").write_text("# near-duplicates\n" + "\n".join(drop) + "\n")
    cfg = ShardDataConfig(shards=synth_shards, batch_size=4, num_workers=1, num_frames=4, image_size=32,
                          max_text_len=16, shuffle_buffer=4, exclude_keys=str(tmp_path / "drop_keys.txt"))
    stream = ShardStream(cfg, synth_tokenizer)
    seen = []
    for batch in stream.worker_batches(0):
        seen += batch["keys"]
        if len(seen) >= len(all_keys) - len(drop):
            break
    assert sorted(seen[:len(all_keys) - len(drop)]) == sorted(set(all_keys) - set(drop))


def test_dedup_cli_on_an_embedding_run(embedded, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "dedup", "--embeddings", str(embedded), "--threshold",
                           "0.995", "--out", str(tmp_path / "d")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "d" / "dedup.json").read_text())
    assert summary["clips"] == 24 and f"{summary['dropped']} of 24 clips" in proc.stdout
    assert len((tmp_path / "d" / "drop_keys.txt").read_text().split()) == summary["dropped"]
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "dedup", "--embeddings", str(tmp_path), "--out",
                           str(tmp_path / "e")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "holds no embedding run" in proc.stderr and "Traceback" not in proc.stderr
