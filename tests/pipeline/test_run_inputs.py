"""What a curation run accepts and refuses (pipeline/run.py): manifests in parts, video2dataset
input, the run fingerprint, cluster and model checks, and the failure threshold, on an in-process
Ray. Run: ``.venv/bin/python -m pytest tests/pipeline/test_run_inputs.py -q``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds

from pipeline.manifest import ManifestConfig, ManifestError
from pipeline.errors import CurationError, SetupError
from pipeline.run import CurateConfig, RayConfig, check_outcome, resolve_paths, run
from pipeline.caption_service import CaptionConfig
from pipeline.writer import ShardWriterConfig


def _cfg(manifest, out, **writer) -> CurateConfig:
    return CurateConfig(manifest=ManifestConfig(path=str(manifest)),
                        writer=ShardWriterConfig(output_dir=str(out), prefix="t", **{"samples_per_shard": 5, **writer}),
                        ray=RayConfig(num_cpus=2), progress_every_s=1.0)


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _samples(out: Path) -> dict[str, list[str]]:
    """Keys per tar, read back with webdataset."""
    return {p.name: [s["__key__"] for s in wds.WebDataset(str(p), shardshuffle=False)] for p in sorted(out.glob("t-*.tar"))}


def _status_keys(out: Path) -> list[str]:
    return sorted(pd.concat([pd.read_parquet(p) for p in out.glob("t-*.parquet")])["key"])


def test_a_manifest_in_parts_gives_the_same_shards_as_one_file(local_ray, synth_clips, tmp_path):
    rows = _rows(synth_clips)
    one = run(_cfg(synth_clips, tmp_path / "one"))
    parts = tmp_path / "parts"
    parts.mkdir()
    _write(parts / "part-0.jsonl", rows[:7])
    pd.DataFrame(rows[7:15]).to_parquet(parts / "part-1.parquet")
    _write(parts / "part-2.jsonl", rows[15:])
    many = run(_cfg(parts, tmp_path / "many"))
    assert many["counts"] == one["counts"] == {"ok": len(rows)}
    assert _samples(tmp_path / "many") == _samples(tmp_path / "one")  # shards span parts, same names and keys
    assert _status_keys(tmp_path / "many") == sorted(r["key"] for r in rows)


def test_duplicate_keys_across_parts_are_refused_before_anything_is_written(local_ray, synth_clips, tmp_path):
    rows = _rows(synth_clips)
    parts = tmp_path / "parts"
    parts.mkdir()
    _write(parts / "a.jsonl", rows[:10])
    _write(parts / "b.jsonl", rows[10:] + [rows[3]])
    with pytest.raises(ManifestError) as err:
        run(_cfg(parts, tmp_path / "out"))
    msg = str(err.value)
    assert f"duplicate key {rows[3]['key']!r}" in msg and "a.jsonl" in msg and "b.jsonl" in msg
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_another_fingerprint_is_refused_then_overwritten(local_ray, synth_clips, tmp_path):
    out = tmp_path / "out"
    first = run(_cfg(synth_clips, out, samples_per_shard=8))
    files = sorted(p.name for p in out.iterdir())
    with pytest.raises(SetupError, match=r"samples_per_shard: 8 there, 4 now.*writer.overwrite=true"):
        run(_cfg(synth_clips, out, samples_per_shard=4))
    shorter = _write(tmp_path / "shorter.jsonl", _rows(synth_clips)[1:])
    with pytest.raises(SetupError, match=r"manifest.rows: 24 there, 23 now"):
        run(_cfg(shorter, out, samples_per_shard=8))
    assert sorted(p.name for p in out.iterdir()) == files  # refusals touch nothing
    # overwrite: the old run's files go first, so no key lands twice and none is stale.
    redo = run(_cfg(shorter, out, samples_per_shard=4, overwrite=True))
    assert redo["shards"] == 6 and redo["counts"] == {"ok": 23} and first["counts"] == {"ok": 24}
    keys = [k for ks in _samples(out).values() for k in ks]
    assert sorted(keys) == sorted(r["key"] for r in _rows(shorter)) == _status_keys(out)
    # The same fingerprint with overwrite still resumes (it never discards its own finished shards).
    again = run(_cfg(shorter, out, samples_per_shard=4, overwrite=True))
    assert again["this_run"]["shards"] == 0 and again["this_run"]["skipped_shards"] == 6


def test_a_folder_holding_shards_without_a_fingerprint_is_refused(local_ray, synth_clips, tmp_path):
    out = tmp_path / "out"
    run(_cfg(synth_clips, out))
    (out / "_run.json").unlink()
    with pytest.raises(SetupError, match=r"no _run.json"):
        run(_cfg(synth_clips, out))


def test_video2dataset_shards_curate_like_a_manifest(local_ray, synth_clips, tmp_path):
    rows = _rows(synth_clips)[:9]
    src = tmp_path / "v2d"
    src.mkdir()
    for t in range(2):
        with wds.TarWriter(str(src / f"{t:05d}.tar")) as sink:
            for i, r in enumerate(rows[t * 5:(t + 1) * 5]):
                sink.write({"__key__": f"{t:05d}{i:04d}", "mp4": Path(r["path"]).read_bytes(),
                            "json": {"subtitle": r["text"], "url": f"https://example.invalid/{r['key']}",
                                     "color": r["color"]}, "txt": r["caption_gt"]})
    cfg = dataclasses.replace(_cfg(src, tmp_path / "out"),
                              manifest=ManifestConfig(path=str(src), subtitle_field="json:subtitle"))
    summary = run(cfg)
    assert summary["counts"] == {"ok": 9}
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("t-*.tar")), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002", "000000003", "000000004",
                                               "000010000", "000010001", "000010002", "000010003"]
    meta = json.loads(samples[6]["json"])
    assert samples[6]["subtitle.txt"].decode() == rows[6]["text"] and meta["color"] == rows[6]["color"]
    assert meta["path"] == str(src / "00001.tar") and meta["source_member"] == "000010001.mp4"
    assert meta["n_frames"] > 0 and samples[6]["mp4"][4:8] == b"ftyp"


def test_cluster_and_model_checks_fail_at_once(local_ray, synth_clips, tmp_path):
    cfg = _cfg(synth_clips, tmp_path / "out")
    gpus = dataclasses.replace(cfg, caption=CaptionConfig(model="hf:/nonexistent", num_gpus=1, concurrency=2))
    with pytest.raises(SetupError, match=r"caption.concurrency=2 replicas each needing .*GPU=1.*room for 0"):
        run(gpus)
    pinned = dataclasses.replace(cfg, writer=dataclasses.replace(cfg.writer, resources={"curate_writer": 1}))
    with pytest.raises(SetupError, match=r"no node can run a shard task, which needs CPU=1, curate_writer=1"):
        run(pinned)
    missing = dataclasses.replace(cfg, caption=CaptionConfig(model=f"ofa:{tmp_path / 'no_model'}"))
    with pytest.raises(SetupError, match=r"caption.model directory .*no_model does not exist on node"):
        run(missing)
    assert not (tmp_path / "out").exists()


def test_relative_paths_are_refused_inside_a_ray_job(monkeypatch, tmp_path):
    cfg = CurateConfig(manifest=ManifestConfig(path="runs/m.jsonl"),
                       writer=ShardWriterConfig(output_dir=str(tmp_path)))
    monkeypatch.chdir(tmp_path)
    assert resolve_paths(cfg).manifest.path == str(tmp_path / "runs/m.jsonl")  # local: against the cwd
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(SetupError, match=r"manifest.path='runs/m.jsonl' is relative; inside a Ray job"):
        resolve_paths(cfg)


def test_too_many_failed_rows_end_the_run_non_zero(local_ray, curate_manifest, tmp_path):
    cfg = dataclasses.replace(_cfg(curate_manifest, tmp_path / "out"), max_failed_fraction=0.1)
    summary = run(cfg)
    failed = summary["counts"]["failed"]
    assert 0.1 < failed / summary["rows"] < 0.5
    with pytest.raises(CurationError, match=rf"{failed} of {summary['rows']} rows failed, more than "
                                            r"max_failed_fraction=0.1; most common: "):
        check_outcome(summary)
    check_outcome({**summary, "max_failed_fraction": 0.5})  # the default tolerates it
