"""Manifest reading and validation (pipeline/manifest.py): formats, parts, seeking, video2dataset
input, and errors that name the part, row and column. Run:
``.venv/bin/python -m pytest tests/pipeline/test_manifest.py -q``."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from pipeline.manifest import (CHECKPOINT_EVERY, ManifestConfig, ManifestError, list_parts, read_rows, scan_local,
                               scan_part)


def _rows(n: int = 5) -> list[dict]:
    return [{"key": f"k{i}", "path": f"/v/{i}.mp4", "text": f"text {i}", "color": "red"} for i in range(n)]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "jsonl.gz"])
def test_reads_every_format_the_same(tmp_path, fmt):
    df = pd.DataFrame(_rows())
    df.loc[1, "start"], df.loc[1, "end"] = 1.5, 3.0
    path = tmp_path / f"m.{fmt}"
    records = [{k: v for k, v in r.items() if not pd.isna(v)} for r in df.to_dict("records")]
    if fmt == "jsonl":
        _jsonl(path, records)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    out = scan_local(ManifestConfig(path=str(path)))
    assert [r["key"] for r in out] == [f"k{i}" for i in range(5)]
    assert out[1]["start"] == 1.5 and out[1]["end"] == 3.0 and out[0]["start"] is None
    assert out[3]["extra"] == {"color": "red"}
    assert [r["row"] for r in out] == list(range(5)) and {r["status"] for r in out} == {"ok"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_integers_stay_integers_when_some_rows_lack_the_column(tmp_path, fmt):
    rows = _rows(3)
    rows[0]["duration_s"] = 60
    rows[2]["duration_s"] = 7
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        _jsonl(path, rows)
    elif fmt == "csv":
        path.write_text("key,path,text,color,duration_s\n" + "".join(
            f"{r['key']},{r['path']},{r['text']},{r['color']},{r.get('duration_s', '')}\n" for r in rows))
    else:
        pd.DataFrame(rows).astype({"duration_s": "Int64"}).to_parquet(path)
    out = scan_local(ManifestConfig(path=str(path)))
    values = [r["extra"].get("duration_s") for r in out]
    assert values == [60, None, 7] and all(type(v) is int for v in (values[0], values[2]))
    assert json.dumps(out[0]["extra"]) == '{"color": "red", "duration_s": 60}'


def test_fsspec_url_and_rename(tmp_path):
    rows = [{"id": r["key"], "video": r["path"], "subtitle": r["text"]} for r in _rows(3)]
    path = _jsonl(tmp_path / "m.jsonl", rows)
    cfg = ManifestConfig(path=f"file://{path}", rename={"id": "key", "video": "path", "subtitle": "text"})
    out = scan_local(cfg)
    assert [r["path"] for r in out] == ["/v/0.mp4", "/v/1.mp4", "/v/2.mp4"]
    assert [r["text"] for r in out] == ["text 0", "text 1", "text 2"]


def test_parts_from_a_folder_a_glob_or_a_list_number_rows_in_sorted_order(tmp_path):
    rows = _rows(10)
    folder = tmp_path / "parts"
    folder.mkdir()
    _jsonl(folder / "b.jsonl", rows[4:8])
    _jsonl(folder / "a.jsonl", rows[:4])
    pd.DataFrame(rows[8:]).to_parquet(folder / "c.parquet")
    (folder / "_SUCCESS").write_text("")  # marker files of other tools are not parts
    expected = [r["key"] for r in rows]
    for spec in (str(folder), f"{folder}/*", f"{folder}/a.jsonl::{folder}/b.jsonl::{folder}/c.parquet",
                 f"{folder}/{{a,b}}.jsonl::{folder}/c.parquet"):
        out = scan_local(ManifestConfig(path=spec))
        assert [r["key"] for r in out] == expected, spec
        assert [r["row"] for r in out] == list(range(10))
    assert [p.format for p in list_parts(ManifestConfig(path=str(folder)))] == ["jsonl", "jsonl", "parquet"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_read_rows_seeks_to_any_slice(tmp_path, fmt):
    n = 3 * CHECKPOINT_EVERY + 17
    rows = _rows(n)
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        _jsonl(path, rows)
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path, row_group_size=100)
    cfg = ManifestConfig(path=str(path))
    part = list_parts(cfg)[0]
    scan = scan_part(part, cfg)
    assert scan.rows == n and len(scan.checkpoints) == 4
    for start, end in ((0, 5), (CHECKPOINT_EVERY - 1, CHECKPOINT_EVERY + 2), (2 * CHECKPOINT_EVERY + 10, n)):
        got = list(read_rows(part, cfg, start, end, scan.checkpoints, first_row=1000 + start, shard=7))
        assert [r["key"] for r in got] == [f"k{i}" for i in range(start, end)]
        assert [r["row"] for r in got] == list(range(1000 + start, 1000 + end)) and {r["shard"] for r in got} == {7}


def test_video2dataset_shards_are_a_manifest(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"{i:09d}", "mp4": b"fake mp4 %d" % i, "txt": f"asr line {i}",
                        "json": {"url": f"https://example.invalid/{i}", "subtitles": f"sub {i}", "status": "success"}})
    cfg = ManifestConfig(path=str(tmp_path / "*.tar"))
    out = scan_local(cfg)
    assert [r["key"] for r in out] == ["000000000", "000000001", "000000002"]
    assert [r["text"] for r in out] == ["asr line 0", "asr line 1", "asr line 2"]
    assert out[1]["member"] == b"fake mp4 1" and out[1]["path"] == str(tmp_path / "00000.tar")
    assert out[1]["extra"]["url"] == "https://example.invalid/1" and out[1]["extra"]["source_member"] == "000000001.mp4"
    by_json = scan_local(ManifestConfig(path=str(tmp_path / "00000.tar"), subtitle_field="json:subtitles"))
    assert [r["text"] for r in by_json] == ["sub 0", "sub 1", "sub 2"]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda rows: [{k: v for k, v in r.items() if k != "text"} for r in rows], "missing column(s) ['text']"),
    (lambda rows: rows[:2] + [{**rows[2], "key": "k0"}], "row 2, column 'key': duplicate key 'k0'"),
    (lambda rows: rows[:1] + [{**rows[1], "key": "a.b"}], "row 1, column 'key': key 'a.b'"),
    (lambda rows: rows[:3] + [{**rows[3], "key": "a/b"}], "row 3, column 'key': key 'a/b'"),
    (lambda rows: rows[:1] + [{**rows[1], "path": ""}], "row 1, column 'path': empty path"),
    (lambda rows: rows[:4] + [{**rows[4], "start": "soon"}], "row 4, column 'start': 'soon' is not a number"),
])
def test_validation_names_row_and_column(tmp_path, mutate, fragment):
    path = _jsonl(tmp_path / "m.jsonl", mutate(_rows()))
    with pytest.raises(ManifestError) as err:
        scan_local(ManifestConfig(path=path))
    assert fragment in str(err.value) and path in str(err.value)


def test_empty_missing_binary_and_unnamed_manifests(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("key,path,text\n")
    with pytest.raises(ManifestError, match="has no rows"):
        scan_local(ManifestConfig(path=str(path)))
    with pytest.raises(ManifestError, match=r"rename names column\(s\) \['video'\]"):
        scan_local(ManifestConfig(path=_jsonl(tmp_path / "r.jsonl", _rows(2)), rename={"video": "path"}))
    with pytest.raises(ManifestError, match="does not exist|matches no file"):
        scan_local(ManifestConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(ManifestError, match="cannot tell the format"):
        (tmp_path / "m.txt").write_text("x")
        scan_local(ManifestConfig(path=str(tmp_path / "m.txt")))
    (tmp_path / "bin.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ManifestError, match="line at byte .*: not valid JSON"):
        scan_local(ManifestConfig(path=str(tmp_path / "bin.jsonl")))
    with pytest.raises(ManifestError, match="manifest.path is empty"):
        scan_local(ManifestConfig())
