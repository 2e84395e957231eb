"""The caption service on an in-process Ray (pipeline/caption_service.py, pipeline/caption_replica.py):
frames from many shard tasks share ``generate`` calls of ``caption.batch_size``; a replica killed
mid-batch loses nothing and mixes up nothing; replicas that cannot start end the run with their error.

The captioner is the simulated GPU (``bench/sim_gpu.py``): each call sleeps like a GPU batch and
captions every image with a function of its own pixels, so each caption can be checked against the
frame stored beside it. Run: ``.venv/bin/python -m pytest tests/pipeline/test_caption_service.py -q``.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from bench.sim_gpu import pixel_caption
from pipeline.caption_service import CaptionConfig
from pipeline.errors import CurationError
from pipeline.manifest import ManifestConfig
from pipeline.run import CurateConfig, RayConfig, check_outcome, run
from pipeline.writer import ShardWriterConfig

SIM = "py:bench.sim_gpu:SimulatedGPU"


@pytest.fixture(scope="module")
def manifest(synth_clips, tmp_path_factory) -> Path:
    """48 rows over the 24 synthesised clips, under distinct keys."""
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    path = tmp_path_factory.mktemp("svc") / "manifest.jsonl"
    path.write_text("".join(json.dumps({**r, "key": f"{r['key']}_{i}"}) + "\n" for i in range(2) for r in rows))
    return path


def _cfg(manifest: Path, out: Path, **caption) -> CurateConfig:
    return CurateConfig(manifest=ManifestConfig(path=str(manifest)),
                        caption=CaptionConfig(model=SIM, placement="actors", num_cpus=0, **caption),
                        # Four shard tasks at once on two CPUs, each sending its frames to the replicas.
                        writer=ShardWriterConfig(output_dir=str(out), prefix="c", samples_per_shard=6, num_cpus=0.5),
                        ray=RayConfig(num_cpus=2), progress_every_s=1.0)


def _check_samples(out: Path, manifest: Path) -> list[dict]:
    """Every key once; every caption is the simulated GPU's caption of the very frame stored with it."""
    keys = [json.loads(line)["key"] for line in manifest.read_text().splitlines()]
    table = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("c-*.parquet"))], ignore_index=True)
    assert sorted(table["key"]) == sorted(keys) and set(table["status"]) == {"ok"}
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("c-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(keys)
    for s in samples:
        assert s["caption.txt"].decode() == pixel_caption(Image.open(io.BytesIO(s["jpg"]))), s["__key__"]
    return samples


def _calls(spy: Path) -> list[int]:
    return [int(line.split()[1]) for f in sorted(spy.glob("*.calls")) for line in f.read_text().splitlines()]


def test_generate_gets_caption_batch_size_frames_from_several_shard_tasks(local_ray, manifest, tmp_path, caplog):
    spy = tmp_path / "spy"
    # One replica at 0.4 s per call: frames of all four running shard tasks pile up meanwhile.
    cfg = _cfg(manifest, tmp_path / "out", batch_size=8, batch_wait_s=0.5, concurrency=1, frames_per_request=2,
               options={"a": 0.4, "b": 0.0, "spy_dir": str(spy)})
    summary = run(cfg)
    check_outcome(summary)
    _check_samples(tmp_path / "out", manifest)
    calls = _calls(spy)
    assert sum(calls) == 48 and max(calls) == 8  # never more than caption.batch_size
    assert calls.count(8) >= 3, calls  # full batches once frames are waiting
    (replica,) = summary["this_run"]["caption_replicas"]
    assert replica["frames"] == 48 and replica["full_batches"] == calls.count(8)
    assert replica["shared_batches"] >= 1  # a batch held frames of at least two shard tasks
    assert "cannot keep" not in caplog.text  # 4 tasks x 6 frames hold two batches of 8 for one replica


def test_a_replica_killed_mid_batch_loses_and_mixes_up_nothing(local_ray, manifest, tmp_path):
    import ray

    spy = tmp_path / "spy"
    cfg = _cfg(manifest, tmp_path / "out", batch_size=4, batch_wait_s=0.2, concurrency=2, frames_per_request=2,
               options={"a": 0.6, "b": 0.0, "spy_dir": str(spy)})
    killed: list[str] = []

    def kill_a_busy_replica() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            for busy in spy.glob("busy-*"):
                try:
                    name = busy.read_text().splitlines()[0]
                    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
                except (OSError, IndexError, ValueError):
                    continue  # the batch ended meanwhile; wait for the next one
                killed.append(name)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_replica, daemon=True)
    killer.start()
    summary = run(cfg)
    killer.join()
    assert killed, "no replica was seen in the middle of a batch"
    check_outcome(summary)
    _check_samples(tmp_path / "out", manifest)
    # The killed batch's frames were sent again: more frames captioned than keys, each key written once.
    assert sum(_calls(spy)) > 48


def test_replicas_that_cannot_start_end_the_run_with_their_error(local_ray, manifest, tmp_path, caplog):
    cfg = _cfg(manifest, tmp_path / "out", options={"fail_load": "CUDA out of memory while loading the model"})
    summary = run(cfg)
    assert summary["shards_complete"] == 0
    reasons = set(summary["this_run"]["failed_shards"].values())
    assert len(reasons) == 1 and "caption replicas cannot start" in next(iter(reasons))
    assert "CUDA out of memory while loading the model" in next(iter(reasons))
    with pytest.raises(CurationError, match="only 0 of 8 shards are complete"):
        check_outcome(summary)
    assert not list((tmp_path / "out").glob("*.tmp*"))
    # Shards of 6 rows cannot hold two default batches of 32: the start-up line says what to change.
    assert "cannot keep 1 replica(s) in full batches of 32: write longer shards (writer.samples_per_shard=6)" \
        in caplog.text
