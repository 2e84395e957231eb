"""Planning a run (pipeline/plan.py) where it meets the run's situation: relative clip paths inside
manifest rows are refused up front in a Ray job and resolve against the starting directory outside
one, on an in-process Ray. Run: ``.venv/bin/python -m pytest tests/pipeline/test_plan.py -q``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.manifest import ManifestConfig, ManifestError
from pipeline.plan import plan_manifest
from pipeline.run import CurateConfig, RayConfig, run
from pipeline.writer import ShardWriterConfig


def _relative_manifest(synth_clips: Path, tmp_path: Path, relative: set[int], n: int = 6) -> Path:
    """The first ``n`` synthetic clips, rows in ``relative`` naming their clip relative to its folder."""
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()][:n]
    for i in relative:
        rows[i]["path"] = str(Path(rows[i]["path"]).relative_to(synth_clips.parent))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _cfg(manifest: Path, out: Path) -> CurateConfig:
    return CurateConfig(manifest=ManifestConfig(path=str(manifest)),
                        writer=ShardWriterConfig(output_dir=str(out), samples_per_shard=4),
                        ray=RayConfig(num_cpus=2), progress_every_s=1.0)


def test_a_relative_clip_path_in_a_row_is_refused_inside_a_ray_job(local_ray, synth_clips, tmp_path, monkeypatch):
    """One row of six: before, that row failed quietly and the run exited 0."""
    manifest = _relative_manifest(synth_clips, tmp_path, relative={4})
    rel = json.loads(manifest.read_text().splitlines()[4])["path"]
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what `ray job submit` sets in the entrypoint
    with pytest.raises(ManifestError) as err:
        run(_cfg(manifest, tmp_path / "out"))
    assert str(err.value) == (
        f"manifest part {manifest}, row 4, column 'path': {rel!r} is relative; inside a Ray job it would resolve in "
        "Ray's temporary copy of the working dir, not where you submitted the job: write absolute paths or URLs "
        "(s3://...) into the manifest")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_relative_clip_paths_resolve_against_the_starting_directory_outside_a_job(local_ray, synth_clips, tmp_path,
                                                                                   monkeypatch):
    manifest = _relative_manifest(synth_clips, tmp_path, relative=set(range(6)))
    assert plan_manifest(ManifestConfig(path=str(manifest)), 4).n_rows == 6  # the flag is off by default
    monkeypatch.chdir(synth_clips.parent)
    summary = run(_cfg(manifest, tmp_path / "out"))
    assert summary["counts"] == {"ok": 6}
