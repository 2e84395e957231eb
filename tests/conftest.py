"""Shared fixtures. Everything is built here, offline: synthesised H.264 clips, tiny models.

Run the default suite with ``.venv/bin/python -m pytest``; ``-m slow`` and ``-m gpu`` select the
deselected extras.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def synth_clips(tmp_path_factory) -> Path:
    """24 real H.264 clips of mixed size, fps and keyframe interval; returns the manifest path."""
    from demo.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, 24, seed=3, span_fraction=0.125)


@pytest.fixture(scope="session")
def shared_corpora() -> Path:
    """``../shared/corpora`` beside the checkout; tests that need it skip cleanly when it is absent."""
    path = SHARED / "corpora"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real corpora live beside the checkout, never in it)")
    return path


def write_test_shards(manifest: Path, out_dir: Path, per_shard: int = 4, prefix: str = "train") -> str:
    """Shards written by the pipeline's own writer from a synth manifest, without Ray.

    Each clip goes through the curation's frame extraction (``process_clip``: middle frame and the
    3 fps training copy) and ``ShardWriter`` (the real tar, status parquet and marker); the
    subtitle is the manifest's noisy ``text`` and, standing in for a captioner, the caption is its
    clean ``caption_gt``. Returns the brace pattern of the shards.
    """
    import json

    from video.frames import FrameConfig, process_clip
    from pipeline.record import ClipRecord
    from pipeline.writer import ShardWriter, ShardWriterConfig, write_summary

    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    cfg = ShardWriterConfig(output_dir=str(out_dir), prefix=prefix, samples_per_shard=per_shard)
    n_shards = (len(rows) + per_shard - 1) // per_shard
    for s in range(n_shards):
        chunk = rows[s * per_shard:(s + 1) * per_shard]
        writer = ShardWriter(cfg, s, len(chunk))
        for i, row in enumerate(chunk):
            out = process_clip(row["path"], row.get("start"), row.get("end"), FrameConfig())
            extra = {k: v for k, v in row.items() if k not in ("key", "path", "text", "start", "end")}
            writer.write(ClipRecord(key=row["key"], path=row["path"], text=row["text"], extra=extra, shard=s,
                                    row=s * per_shard + i, jpg=out.jpg, mp4=out.mp4, clip=out.meta(),
                                    caption=row["caption_gt"],
                                    caption_info={"model": "", "note": "caption_gt of the synthetic clip"}))
        writer.close()
    write_summary(cfg, n_shards)
    return str(out_dir / f"{prefix}-{{000000..{n_shards - 1:06d}}}.tar")


@pytest.fixture(scope="session")
def synth_shards(synth_clips, tmp_path_factory) -> str:
    """Six 4-sample shards of the 24 synthesised clips; returns their brace pattern."""
    return write_test_shards(synth_clips, tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def synth_tokenizer(synth_clips, tmp_path_factory):
    """A tiny CLIP-format BPE tokenizer learnt offline from the synthesised subtitles and captions."""
    import json

    from model.tokenizer import load_tokenizer, train_clip_bpe

    rows = [json.loads(line) for line in Path(synth_clips).read_text().splitlines()]
    texts = [r["text"] for r in rows] + [r["caption_gt"] for r in rows]
    return load_tokenizer(str(train_clip_bpe(texts, tmp_path_factory.mktemp("tok"), num_merges=200)))


@pytest.fixture(scope="session")
def curate_manifest(synth_clips, tmp_path_factory) -> Path:
    """The 24 synthesised clips plus one row per failure the curate pipeline must turn into data.

    Extra rows (key -> expected error fragment): zero-byte, truncated, not-a-video and garbage files,
    a missing path, empty text, a span outside its video, and ``crash_*`` whose path makes the
    decode child SIGSEGV when ``CLIPVIP_DECODE_CRASH_ON=crashme`` is set.
    """
    import json
    import shutil

    from demo.synth import write_broken_files

    out = tmp_path_factory.mktemp("curate_in")
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    good = next(r for r in rows if "start" not in r)
    broken = write_broken_files(out / "broken", good["path"])
    crash = out / "crashme.mp4"
    shutil.copy(good["path"], crash)
    base = {k: v for k, v in good.items() if k not in ("key", "path", "start", "end")}
    for name, path in broken.items():
        rows.append({**base, "key": f"broken_{name}", "path": str(path)})
    rows.append({**base, "key": "broken_missing", "path": str(out / "does_not_exist.mp4")})
    rows.append({**base, "key": "broken_empty_text", "path": good["path"], "text": "  "})
    rows.append({**base, "key": "broken_span", "path": good["path"], "start": 100.0, "end": 104.0})
    rows.append({**base, "key": "crash_decoder", "path": str(crash)})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture()
def tiny_pretrain(synth_shards):
    """``tiny_pretrain(run_dir, num_workers=0, **changes)``: the TrainConfig of a 6-step CPU pretraining
    run of the debug model on the synthetic shards, checkpointing every 2 steps, no evaluation."""
    import dataclasses

    from train.data import ShardDataConfig
    from train.loop import EvalSection, ModelSection, TrainConfig
    from train.optim import OptimConfig

    def make(run_dir, num_workers: int = 0, **changes):
        base = TrainConfig(task="pretrain", run_dir=str(run_dir), steps=6, device="cpu", precision="fp32",
                           model=ModelSection(flavour="debug"),
                           data=ShardDataConfig(shards=synth_shards, batch_size=4, num_workers=num_workers,
                                                num_frames=4, image_size=32, max_text_len=16, shuffle_buffer=4),
                           optim=OptimConfig(lr=1e-3, warmup_ratio=0.2), eval=EvalSection(every=0, at_start=False),
                           checkpoint_every=2, log_every=1, tensorboard=False)
        return dataclasses.replace(base, **changes)

    return make


@pytest.fixture()
def preempt_training(monkeypatch):
    """``preempt_training(step)``: the trainer's ``train_step`` raises KeyboardInterrupt when it reaches
    ``step`` (a preemption mid-step); returns a function that puts the real step back."""
    import train.loop as loop

    real_step = loop.train_step

    def arm(at: int):
        def dies(*args, step, **kw):
            if step == at:
                raise KeyboardInterrupt(f"simulated preemption during step {at}")
            return real_step(*args, step=step, **kw)

        monkeypatch.setattr(loop, "train_step", dies)
        return lambda: monkeypatch.setattr(loop, "train_step", real_step)

    return arm



@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of the module's own on 2 CPUs, shut down after the module."""
    import ray

    ray.shutdown()  # a Ray an earlier module left up when one of its tests failed is not this one
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a cluster another program started
    yield
    ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A multi-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``), each node its own raylet
    with its own temp folder, as separate machines would have; the head has a dashboard for
    ``JobSubmissionClient`` and notices a dead node ~2 s after its raylet stops answering."""

    ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every node on 127.0.0.1, never the external address
           # Token authentication, as Ray turns on by itself for the first local Ray of a process:
           # one mode for every cluster this process starts or joins, whatever ran before.
           "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0"}

    def __init__(self, head_cpus: int = 1) -> None:
        import functools
        import subprocess
        import tempfile
        from unittest import mock

        import ray._common.utils
        import ray._private.utils
        from ray.cluster_utils import Cluster

        # ray.init(address=...) leaves RAY_ADDRESS set: restore it too, or a later local run joins this cluster.
        self._saved = {k: os.environ.get(k) for k in (*self.ENV, "RAY_ADDRESS")}
        os.environ.update(self.ENV)
        subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"], check=True,
                       capture_output=True)
        # Unix socket paths are limited to ~107 bytes: keep session folders short.
        self.temp_dir = tempfile.mkdtemp(prefix="rlc", dir="/tmp")
        self.dirs = [self.temp_dir]
        self.port = _free_port()
        # Cluster records the head's address in ``ray_current_cluster``, by default in /tmp/ray where
        # any other Ray user on the machine keeps theirs (and removes it at shutdown): keep it in this
        # cluster's own temp folder instead. The job supervisor looks for it there; without it, Ray
        # falls back to any GCS process on the machine, which may be somebody else's cluster.
        write = functools.partial(ray._private.utils.write_ray_address, temp_dir=self.temp_dir)
        self._reset = functools.partial(ray._common.utils.reset_ray_address, temp_dir=self.temp_dir)
        with mock.patch.object(ray._private.utils, "write_ray_address", write), \
                mock.patch.object(ray._common.utils, "reset_ray_address", self._reset):
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": head_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                "dashboard_port": self.port,
                # Free ports, not Ray's defaults: another Ray head on this machine may hold those.
                "gcs_server_port": _free_port(), "dashboard_agent_listen_port": _free_port(),
                "temp_dir": self.temp_dir,
                "_system_config": {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                                   "health_check_failure_threshold": 3}})
        assert ray._private.utils.read_ray_address(self.temp_dir) == self.cluster.head_node.gcs_address

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_node(self, num_cpus: int, resources: dict[str, float]):
        import tempfile

        d = tempfile.mkdtemp(prefix="rlw", dir="/tmp")
        self.dirs.append(d)
        return self.cluster.add_node(num_cpus=num_cpus, resources=dict(resources), temp_dir=d)

    def kill_raylet(self, node) -> None:
        """SIGKILL a node's raylet, as a lost machine's would stop: its workers notice and exit."""
        import signal

        raylet = node.all_processes["raylet"][0].process
        os.kill(raylet.pid, signal.SIGKILL)
        raylet.wait()

    def shutdown(self) -> None:
        import shutil
        from unittest import mock

        import ray._common.utils

        with mock.patch.object(ray._common.utils, "reset_ray_address", self._reset):
            self.cluster.shutdown()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def loopback_cluster():
    """``loopback_cluster(head_cpus)`` -> a LoopbackCluster, shut down after the test module."""
    made: list[LoopbackCluster] = []

    def make(head_cpus: int = 1) -> LoopbackCluster:
        made.append(LoopbackCluster(head_cpus))
        return made[-1]

    yield make
    for c in made:
        c.shutdown()


def write_v2d_shard(folder: Path, shard: int, inputs: list[dict]) -> Path:
    """One shard of video2dataset's WebDataset output, written the way video2dataset writes it.

    As its ``WebDatasetSampleWriter`` and ``write_stats`` do: ``<shard:05d>.tar`` through
    webdataset's ``TarWriter`` on an fsspec file, one sample per input keyed ``<shard:05d><i:04d>``
    (``txt`` = the caption, ``json`` = the row's columns plus ``key``, ``status``,
    ``error_message``, ``yt_meta_dict``, indented), ``mp4`` only for a success; a failed input
    keeps its ``txt`` and ``json`` (status ``failed_to_download``). An input cut into clips gives a
    sample per clip keyed ``<key>_<clip:05d>`` whose json holds its span in ``clips``. Then
    ``<shard>.parquet`` (the samples' metadata) and, last, ``<shard>_stats.json``.

    ``inputs``: dicts with ``url``, ``caption``, ``mp4`` (bytes; a list of bytes for clips; None for
    a failed download) and any other columns. Returns the tar's path.
    """
    import json

    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{shard:05d}"
    metas, successes, failed = [], 0, 0
    fs, base = fsspec.core.url_to_fs(str(folder))
    with fs.open(f"{base}/{name}.tar", "wb") as fd:
        sink = wds.TarWriter(fd)
        for i, item in enumerate(inputs):
            key = f"{shard * 10_000 + i:09d}"
            columns = {k: v for k, v in item.items() if k != "mp4"}
            meta = {**columns, "key": key, "status": None, "error_message": None, "yt_meta_dict": None}
            clips = item["mp4"] if isinstance(item["mp4"], list) else [item["mp4"]]
            if item["mp4"] is None:
                failed += 1
                meta.update(status="failed_to_download", error_message="HTTP Error 404: Not Found")
                sink.write({"__key__": key, "txt": item["caption"], "json": json.dumps(meta, indent=4)})
                metas.append(meta)
                continue
            successes += 1
            for c, clip in enumerate(clips):
                one = dict(meta, status="success")
                if isinstance(item["mp4"], list):
                    one.update(key=f"{key}_{c:05d}", clips=[[2.0 * c, 2.0 * c + 2.0]])
                sink.write({"__key__": one["key"], "mp4": clip, "txt": item["caption"],
                            "json": json.dumps(one, indent=4)})
                metas.append(one)
        sink.close()
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in m.items() if k not in ("yt_meta_dict", "clips")}
                                         for m in metas]), f"{base}/{name}.parquet")
    stats = {"count": len(inputs), "successes": successes, "failed_to_download": failed, "failed_to_subsample": 0,
             "duration": 1.5, "bytes_downloaded": 1000, "start_time": 1.7e9, "end_time": 1.7e9 + 1.5,
             "status_dict": {"success": successes, **({"HTTP Error 404: Not Found": failed} if failed else {})}}
    with fs.open(f"{base}/{name}_stats.json", "w") as f:
        json.dump(stats, f, indent=4)
    return folder / f"{name}.tar"


@pytest.fixture(scope="session")
def v2d_shard():
    """``write_v2d_shard(folder, shard, inputs)``: one shard of video2dataset output (see there)."""
    return write_v2d_shard
