"""video2dataset output as a manifest (pipeline/v2d.py, pipeline/manifest.py): its folder as it is,
its failed inputs, its clips, cut tars and counts that disagree with its ``_stats.json``, and the one
rule that carries every field in every manifest format. The fixture writes video2dataset's output
the way video2dataset does (``write_v2d_shard`` in conftest.py); the end-to-end case curates it on
an in-process Ray. Run: ``.venv/bin/python -m pytest tests/pipeline/test_v2d.py -q``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds

from pipeline.manifest import ManifestConfig, ManifestError, list_parts, scan_local
from shards.format import META_FIELDS, merge_passthrough


def _clips(synth_clips: Path) -> list[dict]:
    return [json.loads(line) for line in synth_clips.read_text().splitlines()]


def _inputs(synth_clips: Path, n: int, failed: tuple[int, ...] = ()) -> list[dict]:
    rows = _clips(synth_clips)[:n]
    return [{"url": f"https://example.invalid/{r['key']}", "caption": r["text"], "videoid": r["key"],
             "mp4": None if i in failed else Path(r["path"]).read_bytes()} for i, r in enumerate(rows)]


@pytest.fixture()
def v2d_folder(synth_clips, v2d_shard, tmp_path) -> Path:
    """Two shards: 5 inputs with the second failed, then 4 inputs with the last failed."""
    folder = tmp_path / "v2d"
    v2d_shard(folder, 0, _inputs(synth_clips, 5, failed=(1,)))
    v2d_shard(folder, 1, _inputs(synth_clips, 4, failed=(3,)))
    return folder


@pytest.mark.parametrize("fmt", ["auto", "wds"])
def test_a_video2dataset_folder_is_a_manifest(v2d_folder, synth_clips, fmt):
    clip0 = _clips(synth_clips)[0]
    cfg = ManifestConfig(path=str(v2d_folder), format=fmt)
    assert [(Path(p.url).name, p.format) for p in list_parts(cfg)] == [("00000.tar", "wds"), ("00001.tar", "wds")]
    rows = scan_local(cfg)
    # Failed downloads hold no clip: they are not rows.
    assert [r["key"] for r in rows] == ["000000000", "000000002", "000000003", "000000004",
                                        "000010000", "000010001", "000010002"]
    first = rows[0]
    assert first["member"][4:8] == b"ftyp" and first["path"] == str(v2d_folder / "00000.tar")
    assert first["start"] is None and first["end"] is None  # the mp4 already is the clip
    # Every json field is carried, the caption (subtitle_field=txt) and the status included.
    assert first["extra"] == {"url": f"https://example.invalid/{clip0['key']}", "caption": clip0["text"],
                              "videoid": clip0["key"], "key": "000000000", "status": "success",
                              "error_message": None, "yt_meta_dict": None, "source_member": "000000000.mp4"}
    assert first["text"] == clip0["text"]


def test_clips_cut_from_one_input_match_its_stats(synth_clips, v2d_shard, tmp_path):
    inputs = _inputs(synth_clips, 3, failed=(2,))
    inputs[0]["mp4"] = [inputs[0]["mp4"], inputs[1]["mp4"], inputs[0]["mp4"]]  # three clips of input 0
    v2d_shard(tmp_path, 0, inputs)
    rows = scan_local(ManifestConfig(path=str(tmp_path)))
    assert [r["key"] for r in rows] == ["000000000_00000", "000000000_00001", "000000000_00002", "000000001"]
    assert rows[1]["extra"]["clips"] == [[2.0, 4.0]]


def _member_offsets(tar: Path) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member, as tarfile reads them."""
    with tarfile.open(tar) as t:
        return [(m.name, m.offset, m.offset_data) for m in t.getmembers()]


@pytest.mark.parametrize("cut", ["at a member boundary", "inside a member", "before a member's sibling"])
def test_a_cut_part_is_refused_naming_it(v2d_folder, cut):
    tar = v2d_folder / "00000.tar"
    members = _member_offsets(tar)
    names = [name for name, _, _ in members]
    if cut == "at a member boundary":  # between samples: tarfile alone sees a complete archive
        size = next(off for name, off, _ in members if name.startswith("000000003."))
    elif cut == "inside a member":  # half-way through the last clip
        size = next(data for name, _, data in reversed(members) if name.endswith(".mp4")) + 1000
    else:  # the last sample's mp4 is whole, its txt and json are gone
        last_mp4 = max(i for i, n in enumerate(names) if n.endswith(".mp4"))
        size = members[last_mp4 + 1][1]
    os.truncate(tar, size)
    if cut != "inside a member":
        with tarfile.open(tar) as t:  # tarfile alone reads a shorter archive without a word
            assert len(t.getmembers()) < len(members)
    with pytest.raises(ManifestError) as err:
        scan_local(ManifestConfig(path=str(v2d_folder)))
    msg = str(err.value)
    assert f"manifest part {tar} is cut short after sample '0000000" in msg
    assert "end-of-archive marker" in msg and "download the part again" in msg


def test_a_tar_that_disagrees_with_its_stats_is_refused(v2d_folder):
    """A complete tar missing a sample (rewritten without it) or a stats file of another shard."""
    tar = v2d_folder / "00001.tar"
    samples = [s for s in wds.WebDataset(str(tar), shardshuffle=False) if s["__key__"] != "000010001"]
    with wds.TarWriter(str(tar)) as sink:
        for s in samples:
            sink.write({k: v for k, v in s.items() if k != "__url__"})
    with pytest.raises(ManifestError) as err:
        scan_local(ManifestConfig(path=str(v2d_folder)))
    assert (f"manifest part {tar} holds 2 clip sample(s) from 2 successful input(s) and 1 failed one(s), but "
            f"{v2d_folder / '00001_stats.json'} records successes=3 and 1 failed") in str(err.value)


def test_a_glob_of_a_video2dataset_folder_takes_its_tars_only(v2d_folder):
    parts = list_parts(ManifestConfig(path=f"{v2d_folder}/*"))
    assert [Path(p.url).name for p in parts] == ["00000.tar", "00001.tar"]


def test_every_field_is_carried_by_one_rule_in_every_format(tmp_path, synth_clips, v2d_shard):
    """A field named like one the pipeline writes is kept as manifest_<name>; other names as they are."""
    clip = _clips(synth_clips)[0]
    fields = {"status": "success", "caption": "a caption column", "error": "none", "member": "m", "extra": 1,
              "manifest_caption": "mine", "shard": 7}
    table = tmp_path / "m.jsonl"
    table.write_text(json.dumps({"key": "a", "path": clip["path"], "text": "hello", **fields}) + "\n")
    pd.DataFrame([{"key": "b", "path": clip["path"], "text": "hello", **fields}]).to_parquet(tmp_path / "m.parquet")
    v2d_shard(tmp_path / "v2d", 0, [{"url": "u", "caption": "hello", "mp4": b"\x00" * 16,
                                           "path": "/elsewhere.mp4", "start": 3.0, "end": 9.0, "text": "t",
                                           **{k: v for k, v in fields.items() if k not in ("status", "caption")}}])
    pipeline_meta = {name: f"<{name}>" for name in META_FIELDS}  # what the writer puts in every json
    for path in (table, tmp_path / "m.parquet"):
        (row,) = scan_local(ManifestConfig(path=str(path)))
        meta = merge_passthrough(pipeline_meta, row["extra"])
        assert {k: meta[k] for k in ("status", "manifest_caption", "manifest_manifest_caption", "error", "member",
                                     "extra", "shard")} == {
            "status": "success", "manifest_caption": "mine", "manifest_manifest_caption": "a caption column",
            "error": "none", "member": "m", "extra": 1, "shard": 7}, path
        assert meta["caption"] == "<caption>" and row["member"] == b""
    (row,) = scan_local(ManifestConfig(path=str(tmp_path / "v2d" / "00000.tar")))
    assert (row["text"], row["start"], row["end"], row["member"]) == ("hello", None, None, b"\x00" * 16)
    meta = merge_passthrough(pipeline_meta, row["extra"])
    assert {k: meta[k] for k in ("manifest_key", "manifest_path", "manifest_start", "manifest_end", "text", "status",
                                 "manifest_caption", "manifest_manifest_caption", "error", "member")} == {
        "manifest_key": "000000000", "manifest_path": "/elsewhere.mp4", "manifest_start": 3.0, "manifest_end": 9.0,
        "text": "t", "status": "success", "manifest_caption": "mine", "manifest_manifest_caption": "hello",
        "error": "none", "member": "m"}


def test_a_video2dataset_folder_curates_end_to_end(local_ray, v2d_folder, tmp_path):
    from pipeline.run import CurateConfig, RayConfig, run
    from pipeline.writer import ShardWriterConfig

    out = tmp_path / "out"
    cfg = CurateConfig(manifest=ManifestConfig(path=str(v2d_folder)),
                       writer=ShardWriterConfig(output_dir=str(out), prefix="t", samples_per_shard=4),
                       ray=RayConfig(num_cpus=2), progress_every_s=1.0)
    summary = run(cfg)
    assert summary["counts"] == {"ok": 7} and summary["shards"] == 2
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("t-*.tar")), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["000000000", "000000002", "000000003", "000000004",
                                               "000010000", "000010001", "000010002"]
    meta = json.loads(samples[4]["json"])
    assert meta["path"] == str(v2d_folder / "00001.tar") and meta["source_member"] == "000010000.mp4"
    assert (meta["status"], meta["manifest_key"], meta["manifest_caption"]) == ("success", "000010000",
                                                                                 samples[4]["subtitle.txt"].decode())
    assert meta["caption"]["model"] == ""  # the pipeline's own field: captioning was off
    assert meta["n_frames"] > 0 and samples[4]["mp4"][4:8] == b"ftyp"
    # A cut part refuses the whole run before anything is written.
    tar = v2d_folder / "00001.tar"
    os.truncate(tar, _member_offsets(tar)[3][1])
    with pytest.raises(ManifestError, match=rf"manifest part {tar} is cut short"):
        run(dataclasses.replace(cfg, writer=dataclasses.replace(cfg.writer, output_dir=str(tmp_path / "out2"))))
    assert not (tmp_path / "out2").exists()
