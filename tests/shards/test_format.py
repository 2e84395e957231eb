"""The shard format module (shards/format.py): one pattern syntax, names, and a reader checked
against webdataset's own. Run: ``.venv/bin/python -m pytest tests/shards/test_format.py -q``."""

from __future__ import annotations

import json
import tarfile

import pytest
import webdataset as wds

from shards import format as fmt


def _touch(folder, *names):
    for n in names:
        (folder / n).write_bytes(b"")


def test_one_pattern_syntax_braces_globs_and_lists(tmp_path):
    _touch(tmp_path, "s-000002.tar", "s-000000.tar", "s-000001.tar", "t-0.tar", "t-1.tar")
    d = str(tmp_path)
    assert fmt.expand_pattern(f"{d}/s-{{000000..000002}}.tar") == [f"{d}/s-00000{i}.tar" for i in range(3)]
    assert fmt.expand_pattern(f"{d}/s-*.tar") == [f"{d}/s-00000{i}.tar" for i in range(3)]  # globs sorted
    # '::' keeps the order of its parts; a part may be a glob or a brace range.
    assert fmt.expand_pattern(f"{d}/t-*.tar::{d}/s-{{000001..000002}}.tar") == [
        f"{d}/t-0.tar", f"{d}/t-1.tar", f"{d}/s-000001.tar", f"{d}/s-000002.tar"]
    assert fmt.expand_pattern([f"{d}/t-0.tar", f"{d}/t-{{1..1}}.tar"]) == [f"{d}/t-0.tar", f"{d}/t-1.tar"]
    assert fmt.expand_pattern(f"file://{d}/t-*.tar") == [f"file://{d}/t-0.tar", f"file://{d}/t-1.tar"]
    # A brace range may name shards that do not exist yet (the loader skips them) unless asked.
    assert len(fmt.expand_pattern(f"{d}/u-{{0..3}}.tar")) == 4
    with pytest.raises(fmt.PatternError, match="does not exist"):
        fmt.expand_pattern(f"{d}/u-{{0..3}}.tar", must_exist=True)
    with pytest.raises(fmt.PatternError, match="names no file"):
        fmt.expand_pattern(f"{d}/nothing-*.tar")


def test_names_parse_back():
    files = fmt.shard_files("s3://b/out/", "hdvila", 12)
    assert files == {"tar": "s3://b/out/hdvila-000012.tar", "parquet": "s3://b/out/hdvila-000012.parquet",
                     "stats": "s3://b/out/hdvila-000012_stats.json"}
    assert fmt.parse_shard_file("hdvila-000012_stats.json") == ("hdvila", 12, "_stats.json")
    assert fmt.parse_shard_file("my-prefix-000003.tar") == ("my-prefix", 3, ".tar")
    assert fmt.parse_shard_file("_summary.json") is None and fmt.parse_shard_file("x-12.tar") is None


def _shard(path, n=3):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            meta = fmt.merge_passthrough({"key": f"k{i}", "path": "/v.mp4"}, {"key": "clash", "color": "red"})
            for name, data in fmt.sample_members(f"k{i}", mp4=b"M" * (700 + i), jpg=b"J" * 9, subtitle=f"sub {i}",
                                                 caption=f"cap {i}", meta=meta):
                fmt.add_member(tar, name, data)
    return path


def test_written_samples_read_the_same_through_webdataset_and_our_reader(tmp_path):
    path = str(_shard(tmp_path / "a.tar"))
    ours = list(fmt.iter_tar_samples(path))
    theirs = list(wds.WebDataset(path, shardshuffle=False))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs] == ["k0", "k1", "k2"]
    for a, b in zip(ours, theirs):
        assert {k: a[k] for k in fmt.MEMBERS} == {k: b[k] for k in fmt.MEMBERS}
    meta = json.loads(ours[1]["json"])
    assert meta["key"] == "k1" and meta["manifest_key"] == "clash" and meta["color"] == "red"
    texts = list(fmt.iter_tar_samples(path, wanted={fmt.CAPTION}.__contains__))
    assert texts[2][fmt.CAPTION] == b"cap 2" and texts[2][fmt.MP4] is None  # clip bytes skipped, not read


def test_member_offsets_point_at_the_members_bytes_in_the_tar(tmp_path):
    """``offsets=True``: each member's (offset, size) reads its bytes straight out of the file, as the
    search server streams clips; checked against tarfile's own random-access read of each member."""
    path = _shard(tmp_path / "a.tar")
    blob = path.read_bytes()
    with tarfile.open(path) as tar:
        for sample in fmt.iter_tar_samples(str(path), offsets=True, wanted=lambda ext: ext != fmt.MP4):
            assert sample[fmt.MP4] is None and set(sample["__offsets__"]) == set(fmt.MEMBERS)
            for ext, (offset, size) in sample["__offsets__"].items():
                assert blob[offset:offset + size] == tar.extractfile(f"{sample['__key__']}.{ext}").read()
    assert "__offsets__" not in next(fmt.iter_tar_samples(str(path)))


def test_a_cut_or_missing_tar_is_reported_once_by_url(tmp_path):
    path = _shard(tmp_path / "a.tar", n=4)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    errors = []
    got = list(fmt.raw_samples([str(path), str(tmp_path / "gone.tar")], errors.append))
    assert 1 <= len(got) < 4 and len(errors) == 2
    assert str(errors[0]).startswith(f"{path}: ") and str(errors[1]).startswith(f"{tmp_path / 'gone.tar'}: ")
    assert all(isinstance(e, fmt.ShardReadError) for e in errors)


def test_a_sample_with_a_repeated_member_is_an_error(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("k.txt", "k.txt"):
            fmt.add_member(tar, name, b"x")
    with pytest.raises(fmt.ShardReadError, match="two 'txt' members"):
        list(fmt.iter_tar_samples(str(path)))

