"""Curation as a Ray job on a real multi-node cluster: a head and two worker nodes on loopback.

Each node is its own raylet with its own node id, started by ``ray.cluster_utils.Cluster`` with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so that every address is 127.0.0.1 (without it a
container's raylets advertise an address the others cannot reach). The head offers one CPU and no custom resources; only the
worker nodes offer ``curate_writer`` (what shard tasks ask for, ``writer.resources``) and
``captioner`` (what the caption actors ask for, ``caption.resources``). So every shard is read,
decoded, captioned and written on a worker node, while the job's driver runs on the head.

The job is submitted through ``JobSubmissionClient`` with this checkout as its working dir, as
the README's ``ray job submit`` recipe does. The head is started from this test's interpreter,
which is the project's venv, so the job's ``python`` and every worker have its packages.

Checks:

- every manifest key exactly once across the status parquets, every ok key exactly once across
  the tars (read with ``webdataset``), each with a caption from the debug BLIP;
- every ``_stats.json`` names a worker node and a process other than the job's driver;
- a worker node whose raylet is SIGKILLed mid-run (after some shards are done): the run either
  completes through Ray's task retries and actor restarts on the surviving node (then it is
  already exactly-once) or fails, but never hangs; either way the rerun of the same job finishes
  with every key exactly once, the surviving node having written shards the dead one had not,
  and no temporary file left behind (the rerun removes the dead node's).

Run: ``.venv/bin/python -m pytest tests/jobs/test_curate_multinode.py -q``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import webdataset as wds

from jobs.curate import REPO_ROOT, RUNTIME_ENV_EXCLUDES

# A worker node: room for one shard task (curate_writer=1) and both caption actors (captioner=2,
# one CPU each), so that the survivor of a node kill can take over everything.
WORKER_CPUS = 3
WORKER_RESOURCES = {"curate_writer": 1, "captioner": 2}
PREFIX = "m"
ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every node on 127.0.0.1, never the external address
    "RAY_AUTH_MODE": "disabled",  # a throwaway head that only this test talks to
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, dashboard on 127.0.0.1) plus two worker nodes; yields (cluster, dashboard url, workers)."""
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    # Unix socket paths are limited to ~107 bytes: keep the session folder short.
    temp_dir = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    port = _free_port()
    # Cluster records the head's address in ``ray_current_cluster``, by default in /tmp/ray where
    # any other Ray user on the machine keeps theirs (and removes it at shutdown): keep it in this
    # cluster's own temp folder instead. The job supervisor looks for it there; without it, Ray
    # falls back to any GCS process on the machine, which may be somebody else's cluster.
    write = functools.partial(ray._private.utils.write_ray_address, temp_dir=temp_dir)
    reset = functools.partial(ray._common.utils.reset_ray_address, temp_dir=temp_dir)
    with mock.patch.object(ray._private.utils, "write_ray_address", write), \
            mock.patch.object(ray._common.utils, "reset_ray_address", reset):
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
            # Free ports, not Ray's defaults: another Ray head on this machine may hold those.
            "gcs_server_port": _free_port(), "dashboard_agent_listen_port": _free_port(), "temp_dir": temp_dir,
            # Declare a node dead ~2 s after its raylet stops answering (default ~15 s), so the killed
            # node's tasks and actors are rescheduled soon.
            "_system_config": {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                               "health_check_failure_threshold": 3},
        })
    assert ray._private.utils.read_ray_address(temp_dir) == c.head_node.gcs_address
    # Each node gets its own temp folder, as separate machines would: nodes sharing one would also
    # share the unpacked job working dir, and one node's runtime-env agent would delete it from
    # under another node's processes once its own workers are done with it.
    node_dirs = [tempfile.mkdtemp(prefix="rmw", dir="/tmp") for _ in range(2)]
    workers = [c.add_node(num_cpus=WORKER_CPUS, resources=dict(WORKER_RESOURCES), temp_dir=d) for d in node_dirs]
    try:
        yield c, f"http://127.0.0.1:{port}", workers
    finally:
        with mock.patch.object(ray._common.utils, "reset_ray_address", reset):
            c.shutdown()
        for d in [temp_dir, *node_dirs]:
            shutil.rmtree(d, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def job_inputs(synth_clips, tmp_path_factory):
    """A manifest of 96 rows over the 24 synthesised clips (distinct keys) and a tiny offline BLIP."""
    from demo.tiny_hf import write_debug_model

    base = tmp_path_factory.mktemp("multinode")
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    many = [{**r, "key": f"{r['key']}_{i}"} for i in range(4) for r in rows]
    manifest = base / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in many))
    model = write_debug_model(base / "blip")
    return manifest, model, [r["key"] for r in many]


def _config(path: Path, manifest: Path, model: Path, out: Path) -> Path:
    path.write_text(f"""progress_every_s = 2.0
[manifest]
path = "{manifest}"
[frames]
batch_size = 2
[caption]
model = "hf:{model}"
device = "cpu"
placement = "actors"
concurrency = 2
num_cpus = 1
batch_size = 4
resources = {{captioner = 1}}
[caption.decode]
beam = 1
max_new_tokens = 4
[writer]
output_dir = "{out}"
prefix = "{PREFIX}"
samples_per_shard = 4
resources = {{curate_writer = 1}}
""")
    return path


def _submit(client, config: Path) -> str:
    """Submit the curation job; the job's python is this venv's interpreter (the head's too)."""
    deadline = time.time() + 120
    while True:
        try:
            return client.submit_job(entrypoint=f"{sys.executable} -m jobs.curate --config {config}",
                                     runtime_env={"working_dir": str(REPO_ROOT), "excludes": RUNTIME_ENV_EXCLUDES})
        except RuntimeError as exc:
            # A fresh head accepts jobs once its dashboard agent has registered, a few seconds in.
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(1)


def _wait(client, job: str, timeout_s: float = 300.0):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout_s
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"job {job} still {status} after {timeout_s:.0f} s:\n" + \
            client.get_job_logs(job)[-3000:]
        time.sleep(0.5)
    return status


def _driver(client, job: str) -> tuple[int, str]:
    """(pid, node id) of the job's Ray driver, the ``python -m jobs.curate`` process."""
    info = client.get_job_info(job)
    assert info.driver_info is not None, "the job never connected a Ray driver"
    return int(info.driver_info.pid), info.driver_node_id


def _check_exactly_once(out: Path, keys: list[str], model: Path, temp_files_allowed: bool = False) -> list[dict]:
    """Every key once in the status tables and once in the tars; returns every shard's stats."""
    table = pd.concat([pd.read_parquet(p) for p in sorted(out.glob(f"{PREFIX}-*.parquet"))], ignore_index=True)
    assert sorted(table["key"]) == sorted(keys)
    assert set(table["status"]) == {"ok"}, table.loc[table["status"] != "ok"].head().to_dict("records")
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob(f"{PREFIX}-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(keys)
    for s in samples:
        assert s["mp4"] and s["jpg"] and s["caption.txt"]
        assert json.loads(s["json"])["caption"]["model"] == f"hf:{model}"
    if not temp_files_allowed:
        assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    stats = [json.loads(p.read_text()) for p in sorted(out.glob(f"{PREFIX}-*_stats.json"))]
    assert len(stats) == -(-len(keys) // 4)
    return stats


def test_job_on_three_nodes_writes_on_workers(cluster, job_inputs, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    c, url, workers = cluster
    manifest, model, keys = job_inputs
    out = tmp_path / "shards"
    client = JobSubmissionClient(url)
    job = _submit(client, _config(tmp_path / "curate.toml", manifest, model, out))
    status = _wait(client, job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    stats = _check_exactly_once(out, keys, model)
    worker_ids = {w.node_id for w in workers}
    driver_pid, driver_node = _driver(client, job)
    assert driver_node == c.head_node.node_id and driver_node not in worker_ids
    for st in stats:
        by = st["written_by"]
        assert by["node_id"] in worker_ids, (st["name"], by, worker_ids)
        assert by["pid"] != driver_pid
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["counts"] == {"ok": len(keys)} and summary["shards_complete"] == len(stats)


def test_worker_node_killed_mid_run_then_rerun(cluster, job_inputs, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    c, url, workers = cluster
    manifest, model, keys = job_inputs
    out = tmp_path / "shards"
    config = _config(tmp_path / "curate.toml", manifest, model, out)
    client = JobSubmissionClient(url)
    job = _submit(client, config)
    n_shards = -(-len(keys) // 4)
    deadline = time.time() + 240
    while len(done := list(out.glob(f"{PREFIX}-*_stats.json"))) < 2:
        assert time.time() < deadline and client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), \
            client.get_job_logs(job)[-3000:]
        time.sleep(0.1)
    # Kill a node that is doing the work: one that has already written a shard.
    writer_node = json.loads(done[0].read_text())["written_by"]["node_id"]
    victim = next(w for w in workers if w.node_id == writer_node)
    raylet = victim.all_processes["raylet"][0].process
    os.kill(raylet.pid, signal.SIGKILL)
    raylet.wait()
    names_at_kill = {p.name.removesuffix("_stats.json") for p in out.glob(f"{PREFIX}-*_stats.json")}
    assert len(names_at_kill) < n_shards, "the kill did not land mid-run"

    # The run goes on over the surviving worker (task retries, actor restarts), or fails; a hung
    # run would be a bug, and _wait's timeout fails the test with the job's log.
    first = _wait(client, job)
    first_logs = client.get_job_logs(job)
    assert first in (JobStatus.SUCCEEDED, JobStatus.FAILED), first_logs[-3000:]
    if first == JobStatus.SUCCEEDED:
        # Ray reran the lost shard tasks on the survivor: complete already, every key once. The
        # dead node's unfinished temporary file may remain (never under a final name).
        _check_exactly_once(out, keys, model, temp_files_allowed=True)

    rerun = _submit(client, config)
    status = _wait(client, rerun)
    logs = client.get_job_logs(rerun)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    stats = _check_exactly_once(out, keys, model)
    worker_ids = {w.node_id for w in workers}
    assert {st["written_by"]["node_id"] for st in stats} <= worker_ids
    # The surviving worker finished shards that were not done when the other node died. (Which
    # shards the dying node still completed is a race: its workers notice the raylet is gone
    # within about a second, so no assertion is made about them.)
    assert any(st["written_by"]["node_id"] != victim.node_id and st["name"] not in names_at_kill for st in stats)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["counts"] == {"ok": len(keys)} and summary["shards_complete"] == n_shards
