"""``jobs/curate.py`` end to end: submitted to a real Ray head through the job API, and killed
with SIGKILL mid-run then resumed. Run: ``.venv/bin/python -m pytest tests/jobs/test_curate_job.py -q``.

Shards are read back with ``webdataset``; every key must appear exactly once across the status
tables and every ok key exactly once across the tars, with a decodable clip and middle frame.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from jobs.curate import REPO_ROOT, main, summary_table

# Loopback only, no usage stats, no token auth (a throwaway head that only this test talks to).
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
RAY = str(Path(sys.executable).with_name("ray"))
# As the README says: Ray started from the project's environment (its bin first on the PATH), so a
# job's `python` is the venv's. The crash hook makes one test clip kill its decoder.
HEAD_ENV = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "CLIPVIP_DECODE_CRASH_ON": "crashme"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_cluster(temp_dir: str) -> None:
    """SIGKILL every process of the cluster rooted at ``temp_dir`` (and no other Ray on the machine,
    which ``ray stop`` would take down too)."""
    for _ in range(50):
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if temp_dir.encode() in f.read():
                        pids.append(int(pid))
            except OSError:
                continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


@pytest.fixture()
def ray_head():
    import uuid

    from ray.job_submission import JobStatus, JobSubmissionClient

    port, gcs_port = _free_port(), _free_port()
    temp_dir = f"/tmp/rh{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths must stay under 108 bytes
    # `ray start` records the head in /tmp/ray/ray_current_cluster whatever --temp-dir says, and a
    # later ray.init() with no address joins whatever that file names: put back what was there.
    current = Path("/tmp/ray/ray_current_cluster")
    before = current.read_text() if current.exists() else None
    subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--disable-usage-stats", "--dashboard-host",
                    "127.0.0.1", "--dashboard-port", str(port), "--port", str(gcs_port), "--temp-dir", temp_dir,
                    # Every port free-chosen, so a second Ray on this machine cannot take the job agent's.
                    "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
                    "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
                    "--ray-client-server-port", str(_free_port())],
                   check=True, env=HEAD_ENV, capture_output=True, timeout=120)
    address = f"http://127.0.0.1:{port}"
    try:
        # The head answers before its job agent does ("No available agent to submit job"): wait for one.
        client, deadline = JobSubmissionClient(address), time.time() + 60
        while True:
            try:
                job = client.submit_job(entrypoint="true")
                break
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED) and time.time() < deadline:
            time.sleep(0.2)
        yield address
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if current.exists() and current.read_text().strip().endswith(f":{gcs_port}"):
            if before is None:
                current.unlink()
            else:
                current.write_text(before)


def _write_config(path: Path, manifest: Path, out: Path, samples_per_shard: int) -> Path:
    path.write_text(f'[manifest]\npath = "{manifest}"\n[writer]\noutput_dir = "{out}"\nprefix = "c"\n'
                    f"samples_per_shard = {samples_per_shard}\n[ray]\nnum_cpus = 2\n")
    return path


def _check_shards(out: Path, keys: list[str], failed: set[str]) -> None:
    table = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("c-*.parquet"))], ignore_index=True)
    assert sorted(table["key"]) == sorted(keys)  # exactly once, none missing
    assert set(table.loc[table["status"] == "failed", "key"]) == failed
    assert (table.loc[table["status"] == "failed", "error"].str.len() > 0).all()
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("c-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(set(keys) - failed)
    for s in samples[:: max(1, len(samples) // 8)]:
        frame = np.asarray(Image.open(io.BytesIO(s["jpg"])))
        meta = json.loads(s["json"])
        assert frame.shape[:2] == (meta["src_height"], meta["src_width"])
        with av.open(io.BytesIO(s["mp4"])) as c:
            assert sum(1 for _ in c.decode(video=0)) == meta["n_frames"]
        assert s["subtitle.txt"].decode() and meta["key"] == s["__key__"]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_the_readme_job_recipe_on_a_fresh_head(ray_head, curate_manifest, tmp_path):
    """The README's commands as written: a head started from the venv, then ``ray job submit`` with
    the repository's runtime env and example config, only addresses and paths changed."""
    out = tmp_path / "shards"
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--runtime-env", "jobs/configs/runtime_env.yaml", "--",
         "python", "-m", "jobs.curate", "--config", "jobs/configs/curate_example.toml",
         "--set", f"manifest.path={curate_manifest}", "--set", f"writer.output_dir={out}",
         "--set", "writer.prefix=c", "--set", "writer.samples_per_shard=8"],
        cwd=REPO_ROOT, env=HEAD_ENV, capture_output=True, text=True, timeout=300)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    assert "samples written" in logs and "clips/s" in logs
    rows = [json.loads(line) for line in curate_manifest.read_text().splitlines()]
    failed = {r["key"] for r in rows if r["key"].startswith(("broken_", "crash_"))}
    _check_shards(out, [r["key"] for r in rows], failed)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["counts"] == {"ok": len(rows) - len(failed), "failed": len(failed)}
    writers = {json.loads(p.read_text())["written_by"]["pid"] for p in out.glob("c-*_stats.json")}
    assert writers and all(pid != os.getpid() for pid in writers)

    # The example config's relative paths are refused in a job, in one line, with nothing written.
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--runtime-env", "jobs/configs/runtime_env.yaml", "--",
         "python", "-m", "jobs.curate", "--config", "jobs/configs/curate_example.toml"],
        cwd=REPO_ROOT, env=HEAD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "is relative; inside a Ray job" in proc.stdout + proc.stderr


def test_sigkill_driver_then_resume(synth_clips, tmp_path):
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    # Many keys over the same files: enough shards that the kill lands mid-run.
    many = [{**r, "key": f"{r['key']}_{i}"} for i in range(10) for r in rows]
    manifest = tmp_path / "many.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in many))
    out = tmp_path / "shards"
    config = _write_config(tmp_path / "curate.toml", manifest, out, samples_per_shard=4)
    cmd = [sys.executable, "-m", "jobs.curate", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not list(out.glob("c-*_stats.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    done_at_kill = len(list(out.glob("c-*_stats.json")))
    assert 0 < done_at_kill < len(many) // 4, "the kill did not land mid-run"
    assert not (out / "_summary.json").exists()

    assert main(["--config", str(config), "--log-level", "WARNING"]) == 0
    import ray

    ray.shutdown()
    _check_shards(out, [r["key"] for r in many], set())
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["this_run"]["skipped_shards"] >= done_at_kill and summary["shards_complete"] == len(many) // 4
    assert "shards complete" in summary_table(summary)

    # Once more: nothing left to do, and the table says so rather than "clips/s None".
    assert main(["--config", str(config), "--log-level", "WARNING"]) == 0
    ray.shutdown()
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["this_run"]["rows"] == 0 and summary["this_run"]["clips_per_s"] is None
    table = summary_table(summary)
    assert "None" not in table and "- (no row to process: every shard was done)" in table


def _curate(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.curate", "--log-level", "WARNING", *args], cwd=REPO_ROOT,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case, fragment", [
    ("missing manifest", "manifest {tmp}/nope.jsonl does not exist"),
    ("duplicate key", "duplicate key 'clip000001'"),
    ("gpus", "caption.concurrency=1 replicas each needing GPU=1"),
    ("typo", "did you mean 'writer.samples_per_shard'"),
])
def test_user_errors_are_one_line_and_exit_2(synth_clips, tmp_path, case, fragment):
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + ([rows[1]] if case == "duplicate key" else [])))
    out = tmp_path / "out"
    args = ["--set", f"manifest.path={tmp_path / 'nope.jsonl' if case == 'missing manifest' else manifest}",
            "--set", f"writer.output_dir={out}", "--set", "ray.num_cpus=1"]
    if case == "gpus":
        args += ["--set", "caption.model=hf:/models/blip", "--set", "caption.num_gpus=1"]
    if case == "typo":
        args += ["--set", "writer.samples_per_shrd=4"]
    proc = _curate(args)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("clipvip curate")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and fragment.format(tmp=tmp_path) in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # nothing is written before the inputs are valid


def test_an_output_dir_that_is_a_file_is_refused_before_ray_starts(synth_clips, tmp_path):
    taken = tmp_path / "shards.tar"
    taken.write_text("not a folder")
    for out, words in ((taken, "is a file"), (taken / "sub", f"lies under {taken}, which is a file")):
        t0 = time.monotonic()
        proc = _curate(["--set", f"manifest.path={synth_clips}", "--set", f"writer.output_dir={out}"])
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
        assert "ray" not in proc.stderr.lower().replace("clipvip curate", "")
        assert time.monotonic() - t0 < 60
    assert taken.read_text() == "not a folder"


def test_a_second_run_into_a_folder_being_written_is_refused(synth_clips, tmp_path):
    """The lock a running curation holds on its output folder (pipeline/lock.py): a second run into
    the folder is refused in one line and touches nothing there."""
    from pipeline.lock import output_lock

    out = tmp_path / "shards"
    out.mkdir()
    (out / "c-000000.tar.tmp-1234abcd").write_bytes(b"the first run's shard, half written")
    with output_lock(str(out)):
        proc = _curate(["--set", f"manifest.path={synth_clips}", "--set", f"writer.output_dir={out}",
                        "--set", "ray.num_cpus=1", "--set", "writer.prefix=c"])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("clipvip curate")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [f"clipvip curate: error: writer.output_dir {out} is being written by another curation run "
                     "right now; wait for it to finish (then rerun to resume) or give another writer.output_dir"]
    assert sorted(p.name for p in out.iterdir()) == ["c-000000.tar.tmp-1234abcd"]  # its temporary file survived


def test_a_stalled_run_says_what_it_waits_for(synth_clips, tmp_path):
    """Caption replicas that cannot start (a GPU the machine lacks, resource check off, as on an
    autoscaling cluster): progress lines keep coming and name what is missing."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.curate", "--set", f"manifest.path={synth_clips}",
                             "--set", f"writer.output_dir={out}", "--set", "ray.num_cpus=2",
                             "--set", "ray.check_resources=false", "--set", "caption.model=hf:/models/blip",
                             "--set", "caption.num_gpus=1", "--set", "caption.placement=actors",
                             "--set", "progress_every_s=1", "--set", "stall_warn_s=2"],
                            cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen, deadline = [], time.time() + 120
    try:
        while time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "0 rows in the last" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stall = [s for s in seen if "0 rows in the last" in s]
    assert stall, "".join(seen[-20:])
    assert "waiting for a node that can run the caption stage (needs GPU=1)" in stall[0]
