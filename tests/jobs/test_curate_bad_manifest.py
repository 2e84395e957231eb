"""A bad manifest through the real CLI (``python -m jobs.curate`` in a subprocess, local Ray): when
several parts are bad, each scanned by its own Ray task, the user sees one line and exit code 2,
with none of Ray's "Unhandled error" tracebacks after it (a scan task has many returns, and each
failed one used to print its own). Run: ``.venv/bin/python -m pytest tests/jobs/test_curate_bad_manifest.py -q``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from jobs.curate import REPO_ROOT

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _bad_jsonl_parts(folder: Path, synth_clips: Path, v2d_shard) -> str:
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    for p in range(4):
        good = "".join(json.dumps(r) + "\n" for r in rows[p * 3:(p + 1) * 3])
        (folder / f"part-{p}.jsonl").write_text(good + '{"key": broken\n')
    return "not valid JSON"


def _cut_v2d_parts(folder: Path, synth_clips: Path, v2d_shard) -> str:
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    for shard in range(4):
        inputs = [{"url": f"u{i}", "caption": r["text"], "mp4": Path(r["path"]).read_bytes()}
                  for i, r in enumerate(rows[shard * 3:(shard + 1) * 3])]
        tar = v2d_shard(folder, shard, inputs)
        with tarfile.open(tar) as t:
            boundary = [m.offset for m in t.getmembers()][-3]  # the last sample's first member
        os.truncate(tar, boundary)
    return "is cut short"


@pytest.mark.parametrize("make", [_bad_jsonl_parts, _cut_v2d_parts], ids=["bad json lines", "cut video2dataset tars"])
def test_several_bad_parts_give_one_line_and_exit_2(synth_clips, v2d_shard, tmp_path, make):
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    fragment = make(manifest, synth_clips, v2d_shard)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jobs.curate", "--set", f"manifest.path={manifest}",
                           "--set", f"writer.output_dir={out}", "--set", "ray.num_cpus=2"],
                          cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("clipvip curate")]
    assert len(lines) == 1 and f"manifest part {manifest}/" in lines[0] and fragment in lines[0], err[-3000:]
    assert "Unhandled error" not in err and "Traceback" not in err and '  File "' not in err, err[-3000:]
    assert not out.exists()
