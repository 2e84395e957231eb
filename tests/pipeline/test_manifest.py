"""Manifest reading, validation and partitioning (pipeline/manifest.py). Run:
``.venv/bin/python -m pytest tests/pipeline/test_manifest.py -q``."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.manifest import ManifestConfig, ManifestError, load_manifest, normalise, read_manifest


def _rows(n: int = 5) -> list[dict]:
    return [{"key": f"k{i}", "path": f"/v/{i}.mp4", "text": f"text {i}", "color": "red"} for i in range(n)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_reads_every_format_the_same(tmp_path, fmt):
    df = pd.DataFrame(_rows())
    df.loc[1, "start"], df.loc[1, "end"] = 1.5, 3.0
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if not pd.isna(v)}) + "\n"
                                for r in df.to_dict("records")))
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    out = load_manifest(ManifestConfig(path=str(path)), samples_per_shard=2)
    assert list(out["key"]) == [f"k{i}" for i in range(5)]
    assert out.loc[1, "start"] == 1.5 and out.loc[1, "end"] == 3.0 and pd.isna(out.loc[0, "start"])
    assert json.loads(out.loc[3, "extra"]) == {"color": "red"}
    assert list(out["shard"]) == [0, 0, 1, 1, 2] and list(out["row"]) == list(range(5))
    assert set(out["status"]) == {"ok"}


def test_fsspec_url_and_rename(tmp_path):
    rows = [{"id": r["key"], "video": r["path"], "subtitle": r["text"]} for r in _rows(3)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ManifestConfig(path=f"file://{path}", rename={"id": "key", "video": "path", "subtitle": "text"})
    out = load_manifest(cfg, samples_per_shard=10)
    assert list(out["path"]) == ["/v/0.mp4", "/v/1.mp4", "/v/2.mp4"] and set(out["shard"]) == {0}


def test_partition_is_positional_and_stable(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(10)))
    a = load_manifest(ManifestConfig(path=str(path)), samples_per_shard=3)
    b = load_manifest(ManifestConfig(path=str(path)), samples_per_shard=3)
    assert a.equals(b)
    for i in range(4):
        assert list(a.loc[a["shard"] == i, "row"]) == list(range(i * 3, min(10, (i + 1) * 3)))


@pytest.mark.parametrize("mutate, fragment", [
    (lambda rows: [{k: v for k, v in r.items() if k != "text"} for r in rows], "missing column(s) ['text']"),
    (lambda rows: rows[:2] + [{**rows[2], "key": "k0"}], "row 2, column 'key': duplicate key 'k0' (first in row 0)"),
    (lambda rows: rows[:1] + [{**rows[1], "key": "a.b"}], "row 1, column 'key': key 'a.b'"),
    (lambda rows: rows[:3] + [{**rows[3], "key": "a/b"}], "row 3, column 'key': key 'a/b'"),
    (lambda rows: rows[:1] + [{**rows[1], "path": ""}], "row 1, column 'path': empty path"),
    (lambda rows: rows[:4] + [{**rows[4], "start": "soon"}], "row 4, column 'start': 'soon' is not a number"),
    (lambda rows: [{**r, "status": "x"} for r in rows], "reserved"),
])
def test_validation_names_row_and_column(tmp_path, mutate, fragment):
    rows = mutate(_rows())
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ManifestError) as err:
        load_manifest(ManifestConfig(path=str(path)), samples_per_shard=2)
    assert fragment in str(err.value)


def test_empty_manifest_and_bad_rename(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("key,path,text\n")
    with pytest.raises(ManifestError, match="has no rows"):
        load_manifest(ManifestConfig(path=str(path)), samples_per_shard=2)
    df = pd.DataFrame(_rows(2))
    with pytest.raises(ManifestError, match=r"rename names column\(s\) \['video'\]"):
        normalise(df, ManifestConfig(path="x.jsonl", rename={"video": "path"}))
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(ManifestConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(ManifestError, match="cannot tell the format"):
        read_manifest(ManifestConfig(path=str(tmp_path / "m.txt")))
