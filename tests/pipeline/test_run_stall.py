"""A run whose caption replicas are all gone stops on its own, and a node that joins later serves.

A two-node loopback cluster (``ray.cluster_utils.Cluster``): the head runs the driver and the shard
tasks; one node offers the custom resource ``captioner`` that the only caption replica asks for.
Mid-run that node dies (its processes killed, as a lost machine's are). No other node can host the
replica, so no frame can be captioned: the run logs what it waits for (the missing replica and
what it needs) and ``stall_timeout_s`` ends it. Shards finished before the loss are kept as they
are; the rerun, once a new caption node has joined, finishes the rest with every key exactly once.

Run: ``.venv/bin/python -m pytest tests/pipeline/test_run_stall.py -q``.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pandas as pd
import pytest
import webdataset as wds

from pipeline.caption_service import CaptionConfig
from pipeline.errors import CurationError
from pipeline.manifest import ManifestConfig
from pipeline.run import CurateConfig, RayConfig, check_outcome, run
from pipeline.writer import ShardWriterConfig


@pytest.fixture(scope="module")
def two_nodes(loopback_cluster):
    import ray

    if ray.is_initialized():  # an earlier module's Ray: this test drives its own cluster
        ray.shutdown()
    c = loopback_cluster(head_cpus=2)
    caption_node = c.add_node(num_cpus=0, resources={"captioner": 1})
    ray.init(address=c.address)
    yield c, caption_node
    ray.shutdown()


def test_a_run_without_replicas_stops_keeps_its_shards_and_a_joining_node_finishes_it(two_nodes, synth_clips,
                                                                                     tmp_path, caplog):
    c, caption_node = two_nodes
    out = tmp_path / "out"
    caption = CaptionConfig(model="py:bench.sim_gpu:SimulatedGPU", placement="actors", resources={"captioner": 1},
                            batch_size=4, batch_wait_s=0.2, options={"a": 0.3, "b": 0.0})
    cfg = CurateConfig(manifest=ManifestConfig(path=str(synth_clips)), caption=caption,
                       writer=ShardWriterConfig(output_dir=str(out), prefix="t", samples_per_shard=4),
                       ray=RayConfig(check_resources=False), progress_every_s=1.0, stall_warn_s=2.0,
                       stall_timeout_s=20.0)

    def lose_the_caption_node() -> None:
        deadline = time.time() + 300
        while not list(out.glob("t-*_stats.json")) and time.time() < deadline:
            time.sleep(0.05)
        c.kill_raylet(caption_node)

    killer = threading.Thread(target=lose_the_caption_node, daemon=True)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="pipeline.driver"):
        summary = run(cfg)
    killer.join()
    n_shards = summary["shards"]
    assert n_shards == 6 and 1 <= summary["shards_complete"] < n_shards
    missing = summary["this_run"]["failed_shards"]
    assert missing and all("stalled: no row finished" in why for why in missing.values())
    waiting = "0 of 1 replica(s) running, 1 waiting for a node with captioner=1"
    assert all(waiting in why for why in missing.values()), missing
    assert any(waiting in r.getMessage() and "0 rows in the last" in r.getMessage() for r in caplog.records)
    with pytest.raises(CurationError, match=r"shards are complete; e\.g\. shard \d: stalled"):
        check_outcome(summary)
    assert not list(out.glob("*.tmp*"))  # the cancelled tasks left nothing

    # A caption node joins: the rerun (same fingerprint) does only the missing shards.
    c.add_node(num_cpus=0, resources={"captioner": 1})
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("t-*.tar")}
    again = run(cfg)
    check_outcome(again)
    assert again["this_run"]["shards"] == len(missing) and again["shards_complete"] == n_shards
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.glob("t-*.tar")) if n in done} == done
    keys = [json.loads(line)["key"] for line in synth_clips.read_text().splitlines()]
    table = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("t-*.parquet"))], ignore_index=True)
    assert sorted(table["key"]) == sorted(keys) and set(table["status"]) == {"ok"}
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("t-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(keys) and all(s["caption.txt"] for s in samples)
