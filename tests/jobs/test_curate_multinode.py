"""Curation as a Ray job on a real multi-node cluster: a head and three worker nodes on loopback.

Each node is its own raylet with its own node id and temp folder (``LoopbackCluster`` in
conftest.py, all addresses 127.0.0.1). The head offers one CPU and no custom resources; the
worker nodes offer ``curate_writer`` (what shard tasks ask for, ``writer.resources``) and
``captioner`` (what the caption replicas ask for, ``caption.resources``: the stand-in for a GPU).
So every shard is read, decoded, captioned and written on worker nodes, while the job's driver
runs on the head. The captioner is the simulated GPU (``bench/sim_gpu.py``), whose caption of a
frame is a function of its pixels: every caption is checked against the frame stored with it.

The job is submitted through ``JobSubmissionClient`` with this checkout as its working dir, as
the README's ``ray job submit`` recipe does. The head is started from this test's interpreter,
which is the project's venv, so the job's ``python`` and every worker have its packages.

Checks:

- every manifest key exactly once across the status parquets and the tars (read with
  ``webdataset``), each caption that of its own frame; every ``_stats.json`` names a worker node;
- the raylet of a node hosting a caption replica is SIGKILLed mid-run: the run finishes by itself
  (Serve places the replica again, Ray reruns the lost shard tasks, the frames in flight are sent
  again), without a stall, every key exactly once, and shards finished before the kill keep their
  bytes; no temporary file is left anywhere;
- a caption node that joins the cluster mid-run gets a replica of its own, which captions frames.

Run: ``.venv/bin/python -m pytest tests/jobs/test_curate_multinode.py -q``.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from bench.sim_gpu import pixel_caption
from jobs.curate import REPO_ROOT, RUNTIME_ENV_EXCLUDES

# A worker node: room for one shard task (curate_writer=1) and one caption replica (captioner=1).
WORKER_CPUS = 2
WORKER_RESOURCES = {"curate_writer": 1, "captioner": 1}
PREFIX = "m"


@pytest.fixture(scope="module")
def cluster(loopback_cluster):
    """Head (1 CPU, dashboard on 127.0.0.1) plus three worker nodes; yields (cluster, workers)."""
    c = loopback_cluster(head_cpus=1)
    return c, [c.add_node(WORKER_CPUS, WORKER_RESOURCES) for _ in range(3)]


@pytest.fixture(scope="module")
def job_inputs(synth_clips, tmp_path_factory):
    """A manifest of 96 rows over the 24 synthesised clips (distinct keys)."""
    base = tmp_path_factory.mktemp("multinode")
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    many = [{**r, "key": f"{r['key']}_{i}"} for i in range(4) for r in rows]
    manifest = base / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in many))
    return manifest, [r["key"] for r in many]


def _config(path: Path, manifest: Path, out: Path, spy: Path, *, concurrency: int = 2, seconds: float = 0.3,
            check_resources: bool = True) -> Path:
    path.write_text(f"""progress_every_s = 2.0
stall_timeout_s = 900.0
[manifest]
path = "{manifest}"
[caption]
model = "py:bench.sim_gpu:SimulatedGPU"
options = {{a = {seconds}, b = 0.0, spy_dir = "{spy}"}}
placement = "actors"
concurrency = {concurrency}
batch_size = 4
batch_wait_s = 0.2
resources = {{captioner = 1}}
[writer]
output_dir = "{out}"
prefix = "{PREFIX}"
samples_per_shard = 4
resources = {{curate_writer = 1}}
[ray]
check_resources = {str(check_resources).lower()}
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


def _wait(client, job: str, timeout_s: float = 400.0):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout_s
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"job {job} still {status} after {timeout_s:.0f} s:\n" + \
            client.get_job_logs(job)[-3000:]
        time.sleep(0.5)
    return status


def _wait_for(predicate, client, job: str, timeout_s: float = 300.0) -> None:
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline and client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), \
            client.get_job_logs(job)[-3000:]
        time.sleep(0.05)


def _check_exactly_once(out: Path, keys: list[str]) -> list[dict]:
    """Every key once in the status tables and once in the tars, each caption its own frame's;
    no temporary file left; returns every shard's stats."""
    table = pd.concat([pd.read_parquet(p) for p in sorted(out.glob(f"{PREFIX}-*.parquet"))], ignore_index=True)
    assert sorted(table["key"]) == sorted(keys)
    assert set(table["status"]) == {"ok"}, table.loc[table["status"] != "ok"].head().to_dict("records")
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob(f"{PREFIX}-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(keys)
    for s in samples:
        assert s["mp4"] and s["jpg"]
        assert s["caption.txt"].decode() == pixel_caption(Image.open(io.BytesIO(s["jpg"]))), s["__key__"]
        assert json.loads(s["json"])["caption"]["model"] == "py:bench.sim_gpu:SimulatedGPU"
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    stats = [json.loads(p.read_text()) for p in sorted(out.glob(f"{PREFIX}-*_stats.json"))]
    assert len(stats) == -(-len(keys) // 4)
    return stats


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_job_on_four_nodes_writes_on_workers(cluster, job_inputs, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    c, workers = cluster
    manifest, keys = job_inputs
    out = tmp_path / "shards"
    client = JobSubmissionClient(c.dashboard)
    job = _submit(client, _config(tmp_path / "curate.toml", manifest, out, tmp_path / "spy"))
    status = _wait(client, job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    stats = _check_exactly_once(out, keys)
    worker_ids = {w.node_id for w in workers}
    info = client.get_job_info(job)
    assert info.driver_node_id == c.cluster.head_node.node_id
    for st in stats:
        assert st["written_by"]["node_id"] in worker_ids, (st["name"], st["written_by"], worker_ids)
        assert st["written_by"]["pid"] != int(info.driver_info.pid)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["counts"] == {"ok": len(keys)} and summary["shards_complete"] == len(stats)
    replicas = summary["this_run"]["caption_replicas"]
    assert len(replicas) == 2 and {r["node_id"] for r in replicas} <= worker_ids
    assert sum(r["frames"] for r in replicas) == len(keys)


def test_lost_caption_node_costs_only_its_frames_and_a_joining_node_serves(cluster, job_inputs, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    c, workers = cluster
    manifest, keys = job_inputs
    out, spy = tmp_path / "shards", tmp_path / "spy"
    client = JobSubmissionClient(c.dashboard)
    job = _submit(client, _config(tmp_path / "curate.toml", manifest, out, spy))
    n_shards = -(-len(keys) // 4)

    # Kill, mid-batch, the node of a replica that is captioning, once two shards are done.
    _wait_for(lambda: len(list(out.glob(f"{PREFIX}-*_stats.json"))) >= 2, client, job)
    victim = None

    def busy_replica_node() -> bool:
        nonlocal victim
        for busy in spy.glob("busy-*"):
            try:
                node_id = busy.read_text().splitlines()[1]
            except (OSError, IndexError):
                continue
            victim = next((w for w in workers if w.node_id == node_id), None)
            return victim is not None
        return False

    _wait_for(busy_replica_node, client, job)
    c.kill_raylet(victim)
    finished = {p.name.removesuffix("_stats.json") for p in out.glob(f"{PREFIX}-*_stats.json")}
    assert len(finished) < n_shards, "the kill did not land mid-run"
    kept = {name: _sha(out / f"{name}.tar") for name in finished}

    # The run finishes by itself: no stall, no rerun needed.
    status = _wait(client, job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "giving up" not in logs and "0 rows in the last" not in logs
    _check_exactly_once(out, keys)
    assert {name: _sha(out / f"{name}.tar") for name in finished} == kept
    replicas = json.loads((out / "_summary.json").read_text())["this_run"]["caption_replicas"]
    assert sum(r["frames"] for r in replicas) >= len(keys)
    survivors = [w for w in workers if w is not victim]

    # Three replicas wanted, room for two: a caption node joining mid-run gets the third.
    out2 = tmp_path / "shards2"
    job = _submit(client, _config(tmp_path / "curate2.toml", manifest, out2, tmp_path / "spy2", concurrency=3,
                                  seconds=0.6, check_resources=False))
    _wait_for(lambda: len(list(out2.glob(f"{PREFIX}-*_stats.json"))) >= 1, client, job)
    joined = c.add_node(WORKER_CPUS, WORKER_RESOURCES)
    status = _wait(client, job)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    _check_exactly_once(out2, keys)
    replicas = json.loads((out2 / "_summary.json").read_text())["this_run"]["caption_replicas"]
    by_node = {r["node_id"]: r["frames"] for r in replicas}
    assert set(by_node) <= {w.node_id for w in survivors} | {joined.node_id}
    assert by_node.get(joined.node_id, 0) > 0, by_node
