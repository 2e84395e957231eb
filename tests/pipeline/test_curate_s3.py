"""Curation with the manifest and ``output_dir`` on S3, against a real S3-protocol server on loopback.

The server is moto's standalone mode (``moto_server -H 127.0.0.1 -p PORT``), started by this
module as a subprocess; the pipeline talks to it through s3fs, the fsspec ``s3://`` filesystem,
exactly as it would talk to AWS. Nothing in the pipeline is told about the server: the
endpoint and the (dummy) credentials are plain AWS environment variables
(``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...), which botocore reads and which every Ray
worker inherits from the driver that started the local Ray. The clips stay local paths; the
manifest and every output file are S3 objects.

How a shard stays all-or-nothing on S3, where there is no rename (``mv`` is copy + delete):
``pipeline/writer.py`` builds each file (tar, status parquet) in the worker's local temporary
folder and uploads it once under its final name; an S3 object appears whole or not at all (a
multipart upload is invisible until completed). The shard's ``_stats.json`` is uploaded last and
is the completion marker: a shard without it is unfinished, whatever of it exists, and the next
run rewrites it under the same names. So a killed run leaves at most some final-named objects of
unfinished shards (overwritten on resume) and never a temporary object in the bucket.

Checks: every key exactly once across the status parquets and the tars (read back from S3 with
``webdataset``); the bucket holds exactly the expected objects; a run whose driver process group is
SIGKILLed after some shards are done, then resumed, ends with the same exact set and no duplicate
or stale object.

Run: ``.venv/bin/python -m pytest tests/pipeline/test_curate_s3.py -q``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds

from jobs.curate import REPO_ROOT
from pipeline.writer import scratch_dir

BUCKET = "clipvip-curate"
PREFIX = "s"
PER_SHARD = 4
RUN_FILES = {"_run.json", "config.json", "_summary.json", "sizes.json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port with one bucket; yields (env for subprocesses, boto3 client)."""
    import boto3

    moto_server = Path(sys.executable).with_name("moto_server")
    port = _free_port()
    logs = tmp_path_factory.mktemp("moto") / "server.log"
    with open(logs, "wb") as log:
        server = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, logs.read_text()[-2000:]
                time.sleep(0.2)
        env = {
            "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            # No user AWS config or profile may leak in.
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        ray_env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                   "RAY_USAGE_STATS_ENABLED": "0"}
        yield {**os.environ, **env, **ray_env}, client
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_manifest(s3, synth_clips):
    """48 rows (the 24 synthesised clips twice, distinct keys) uploaded as s3://BUCKET/in/manifest.jsonl."""
    _, client = s3
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    many = [{**r, "key": f"{r['key']}_{i}"} for i in range(2) for r in rows]
    client.put_object(Bucket=BUCKET, Key="in/manifest.jsonl",
                      Body="".join(json.dumps(r) + "\n" for r in many).encode())
    return f"s3://{BUCKET}/in/manifest.jsonl", [r["key"] for r in many]


def _objects(client, prefix: str) -> dict[str, bytes | None]:
    """Every object under ``prefix`` (names relative to it); straight from the server, no cache."""
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        names += [o["Key"][len(prefix) + 1:] for o in page.get("Contents", [])]
    return dict.fromkeys(names)


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _config(path: Path, manifest: str, out: str) -> Path:
    path.write_text(f'[manifest]\npath = "{manifest}"\n[writer]\noutput_dir = "{out}"\nprefix = "{PREFIX}"\n'
                    f"samples_per_shard = {PER_SHARD}\n[ray]\nnum_cpus = 2\n")
    return path


def _curate(config: Path, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.curate", "--config", str(config)], cwd=REPO_ROOT, env=env,
                            start_new_session=True, **kw)


def _check_bucket(client, prefix: str, keys: list[str], tmp_path: Path) -> dict:
    """Exactly the expected objects under ``prefix``, every key once; returns ``_summary.json``."""
    n_shards = -(-len(keys) // PER_SHARD)
    shards = [f"{PREFIX}-{s:06d}" for s in range(n_shards)]
    expected = RUN_FILES | {f"{n}{suffix}" for n in shards for suffix in (".tar", ".parquet", "_stats.json")}
    assert set(_objects(client, prefix)) == expected  # nothing missing, nothing extra or stale
    table = pd.concat([pd.read_parquet(io.BytesIO(_get(client, f"{prefix}/{n}.parquet"))) for n in shards],
                      ignore_index=True)
    assert sorted(table["key"]) == sorted(keys) and set(table["status"]) == {"ok"}
    local = tmp_path / "from_s3"
    local.mkdir(exist_ok=True)
    for n in shards:
        (local / f"{n}.tar").write_bytes(_get(client, f"{prefix}/{n}.tar"))
    samples = list(wds.WebDataset(sorted(str(p) for p in local.glob("*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(keys)
    assert all(s["mp4"] and s["jpg"] and s["subtitle.txt"] for s in samples)
    for n in shards:
        stats = json.loads(_get(client, f"{prefix}/{n}_stats.json"))
        assert stats["rows"] == stats["samples"] == PER_SHARD and stats["written_by"]["pid"]
    summary = json.loads(_get(client, f"{prefix}/_summary.json"))
    assert summary["counts"] == {"ok": len(keys)} and summary["shards_complete"] == summary["shards"] == n_shards
    return summary


def test_curate_to_s3_exactly_once(s3, s3_manifest, tmp_path):
    env, client = s3
    manifest, keys = s3_manifest
    config = _config(tmp_path / "curate.toml", manifest, f"s3://{BUCKET}/once")
    proc = _curate(config, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    _check_bucket(client, "once", keys, tmp_path)
    assert json.loads(_get(client, "once/_run.json"))["manifest"]["rows"] == len(keys)


def test_killed_run_on_s3_resumes_exactly_once(s3, s3_manifest, tmp_path):
    env, client = s3
    manifest, keys = s3_manifest
    config = _config(tmp_path / "curate.toml", manifest, f"s3://{BUCKET}/killed")
    n_shards = -(-len(keys) // PER_SHARD)
    proc = _curate(config, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(n.endswith("_stats.json") for n in _objects(client, "killed")):
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    at_kill = _objects(client, "killed")
    done_at_kill = sum(n.endswith("_stats.json") for n in at_kill)
    assert done_at_kill < n_shards, "the kill did not land mid-run"
    assert "_summary.json" not in at_kill
    # Whatever the kill left: final names only (files are built locally and uploaded whole). The
    # shard tasks killed mid-shard left their partial tars in this node's scratch folder.
    assert not [n for n in at_kill if ".tmp" in n]
    scratch = Path(scratch_dir(f"s3://{BUCKET}/killed", PREFIX))
    assert [p.name for p in scratch.iterdir() if p.name.startswith(f"{PREFIX}-")], "no partial file to clean"

    resumed = _curate(config, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out.decode(errors="replace")[-3000:]
    summary = _check_bucket(client, "killed", keys, tmp_path)
    assert not scratch.exists()  # the resumed run cleared every node's scratch folder
    assert summary["this_run"]["skipped_shards"] >= done_at_kill
    assert summary["this_run"]["shards"] + summary["this_run"]["skipped_shards"] == n_shards
