"""Shard writing (pipeline/writer.py): names, contents, atomic renames, markers, summary. Run:
``.venv/bin/python -m pytest tests/pipeline/test_writer.py -q``."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import webdataset as wds

from pipeline import writer
from pipeline.record import ClipRecord
from pipeline.writer import ShardWriter, ShardWriterConfig
from shards import format as fmt


def _row(shard: int, row: int, status: str = "ok") -> ClipRecord:
    ok = status == "ok"
    rec = ClipRecord(key=f"s{shard}r{row}", path=f"/v/{row}.mp4", text=f"sub {row}", shard=shard, row=row,
                     extra={"color": "red"}, decode_s=0.01, caption_info={"model": "hf:x"})
    if ok:
        rec.jpg, rec.mp4 = b"\xff\xd8jpg", b"mp4" * 3
        rec.clip = {"start": 1.0, "end": 3.0, "fps": 3.0}
        rec.caption = f"caption {shard} {row}"
    else:
        rec.fail("InvalidDataError: bad")
    return rec


def test_names_are_zero_padded_from_the_input_shard():
    cfg = ShardWriterConfig(output_dir="s3://bucket/out/", prefix="hdvila")
    assert fmt.shard_name("hdvila", 7) == "hdvila-000007"
    assert fmt.shard_files(cfg.output_dir, cfg.prefix, 12) == {"tar": "s3://bucket/out/hdvila-000012.tar",
                                                               "parquet": "s3://bucket/out/hdvila-000012.parquet",
                                                               "stats": "s3://bucket/out/hdvila-000012_stats.json"}


def test_shard_round_trip_through_webdataset(tmp_path):
    cfg = ShardWriterConfig(output_dir=str(tmp_path), prefix="t")
    w = ShardWriter(cfg, 3, expected=3)
    w.write(_row(3, 9))
    with pytest.raises(ValueError, match="row 9 arrived after row 9"):
        w.write(_row(3, 9))  # rows stream in manifest order, so a shard's bytes never depend on timing
    for r in (_row(3, 10, "failed"), _row(3, 11)):
        w.write(r)
    stats = w.close()
    assert stats["counts"] == {"ok": 2, "failed": 1} and stats["samples"] == 2
    samples = list(wds.WebDataset(str(tmp_path / "t-000003.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["s3r9", "s3r11"]
    first = samples[0]
    assert set(first) - {"__key__", "__url__", "__local_path__"} == {"mp4", "jpg", "subtitle.txt", "caption.txt", "json"}
    assert first["caption.txt"] == b"caption 3 9" and first["subtitle.txt"] == b"sub 9"
    meta = json.loads(first["json"])
    assert meta["color"] == "red" and meta["duration"] == 2.0 and meta["caption"] == {"model": "hf:x"}
    table = pd.read_parquet(tmp_path / "t-000003.parquet")
    assert list(table["key"]) == ["s3r9", "s3r10", "s3r11"] and list(table["status"]) == ["ok", "failed", "ok"]
    marker = json.loads((tmp_path / "t-000003_stats.json").read_text())
    assert marker["rows"] == 3 and marker["written_by"]["pid"] == os.getpid() and marker["written_by"]["host"]
    assert marker["failures"] == {"InvalidDataError": 1}


def test_interrupted_write_leaves_no_final_file(tmp_path, monkeypatch):
    cfg = ShardWriterConfig(output_dir=str(tmp_path), prefix="t")
    w = ShardWriter(cfg, 0, expected=1)
    w.write(_row(0, 0))

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(writer.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        w.close()
    names = os.listdir(tmp_path)
    assert names and all(writer.TMP_MARK in n for n in names)  # only temporaries, never a final name
    assert writer.finished_shards(cfg, [0]) == {}
    monkeypatch.undo()
    assert writer.remove_stale_temp_files(cfg) == len(names) and os.listdir(tmp_path) == []


def test_reopen_and_summary(tmp_path):
    cfg = ShardWriterConfig(output_dir=str(tmp_path), prefix="t")
    for shard in (0, 1):
        w = ShardWriter(cfg, shard, expected=2)
        w.write(_row(shard, 2 * shard))
        w.write(_row(shard, 2 * shard + 1, "failed" if shard else "ok"))
        w.close()
    finished = writer.finished_shards(cfg, range(3))
    assert sorted(finished) == [0, 1] and finished[1].count("failed") == 1 and finished[0].count("failed") == 0
    assert finished[1] == writer.ShardCounts(samples=1, counts=(("failed", 1), ("ok", 1)))
    summary = writer.write_summary(cfg, 3)
    assert summary["counts"] == {"ok": 3, "failed": 1} and summary["shards_complete"] == 2
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"t-000000.tar": 2, "t-000001.tar": 1}
    writer.reopen_shard(cfg, 1)
    assert sorted(writer.finished_shards(cfg, range(3))) == [0]
    assert (tmp_path / "t-000001.tar").exists()  # data stays until the rerun replaces it atomically


def test_summary_trusts_the_listing_and_reads_only_markers_it_does_not_hold(tmp_path, monkeypatch):
    """At the end of a run the driver already holds every shard's stats; on an object store each
    marker read is a request. The listing still decides which shards are complete."""
    cfg = ShardWriterConfig(output_dir=str(tmp_path), prefix="t")
    returned = {}
    for shard in (0, 1):
        w = ShardWriter(cfg, shard, expected=2)
        w.write(_row(shard, 2 * shard))
        w.write(_row(shard, 2 * shard + 1, "failed" if shard else "ok"))
        returned[shard] = w.close()
    reads = []
    real_read = writer.read_json
    monkeypatch.setattr(writer, "read_json", lambda path: reads.append(path) or real_read(path))
    # Shard 0 as its task returned it; shard 1 unknown (read from its marker); shard 2 "known" but
    # without a marker on disk (a stale belief): not complete.
    known = {0: writer.summary_fields(returned[0]), 2: writer.ShardCounts(samples=5, counts=(("ok", 5),))}
    summary = writer.write_summary(cfg, 3, known=known)
    assert summary["counts"] == {"ok": 3, "failed": 1} and summary["shards_complete"] == 2
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"t-000000.tar": 2, "t-000001.tar": 1}
    assert [p.rsplit("/", 1)[-1] for p in reads] == ["t-000001_stats.json"]
    assert summary == writer.write_summary(cfg, 3)  # the same as reading every marker
