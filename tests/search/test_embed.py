"""``clipvip embed`` (search/embed.py, search/embed_worker.py) on a real in-process Ray over shards the
curation's writer made: vectors, byte ranges, exactly-once under a killed actor, resume, and refusals.
Run: ``.venv/bin/python -m pytest tests/search/test_embed.py -q``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _table(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("embed-*.parquet"))])


def _shard_keys(pattern: str) -> list[str]:
    from shards.format import expand_pattern, raw_samples

    return [s["__key__"] for s in raw_samples(expand_pattern(pattern), lambda e: None, wanted=lambda e: False)]


def _cfg(search_model, synth_shards, out, **kw):
    from search.embed import EmbedConfig

    kw = {"num_frames": 4, "batch_size": 4, "device": "cpu", "progress_every_s": 1.0, **kw}
    return EmbedConfig(model=search_model[0], tokenizer=search_model[1], shards=synth_shards, output_dir=str(out),
                       **kw)


def test_every_clip_once_with_the_encoders_vectors_and_its_byte_ranges(embedded, synth_shards, search_model):
    from search import parts
    from search.encoder import Encoder
    from shards.format import expand_pattern, raw_samples
    from train.video import decode_frames

    table = _table(embedded)
    keys = table["key"].to_pylist()
    assert sorted(keys) == sorted(_shard_keys(synth_shards)) and len(set(keys)) == len(keys)
    enc = Encoder.load(search_model[0], tokenizer=search_model[1], device="cpu", num_frames=4)
    assert set(table["model_id"].to_pylist()) == {enc.model_id}
    raw = {s["__key__"]: s for s in raw_samples(expand_pattern(synth_shards), lambda e: None)}
    want = enc.encode_frames([decode_frames(raw[k]["mp4"], 4, train=False) for k in keys])
    got = parts.to_numpy(table[parts.VECTOR]).astype(np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)  # float16 storage
    subs = enc.encode_texts([raw[k]["subtitle.txt"].decode() for k in keys])
    np.testing.assert_allclose(parts.to_numpy(table["subtitle_vector"]).astype(np.float32), subs, atol=2e-3)
    for row in table.slice(0, 6).to_pylist():
        with open(row["shard"], "rb") as f:
            f.seek(row["mp4_offset"])
            assert f.read(row["mp4_size"]) == raw[row["key"]]["mp4"]
            f.seek(row["jpg_offset"])
            assert f.read(row["jpg_size"]) == raw[row["key"]]["jpg"]
        assert row["caption"] == raw[row["key"]]["caption.txt"].decode()
        assert json.loads(row["meta"])["color"] in row["caption"]


def test_a_rerun_redoes_only_the_unfinished_part(embedded, synth_shards, search_model, tmp_path):
    from search.embed import run

    out = tmp_path / "parts"
    shutil.copytree(embedded, out)
    before = _table(out)
    (out / "embed-000002_stats.json").unlink()  # as if the run died after writing the parquet
    summary = run(_cfg(search_model, synth_shards, out, texts=("subtitle", "caption")))
    assert summary["this_run"]["rows"] == 4 and summary["units_complete"] == 6
    assert _table(out).equals(before)


def test_a_mismatched_rerun_is_refused_naming_the_difference(embedded, synth_shards, search_model, tmp_path):
    from search.embed import EmbedError, run

    out = tmp_path / "parts"
    shutil.copytree(embedded, out)
    with pytest.raises(EmbedError, match=r"num_frames: 4 there, 5 now"):
        run(_cfg(search_model, synth_shards, out, texts=("subtitle", "caption"), num_frames=5))
    with pytest.raises(EmbedError, match=r"texts"):
        run(_cfg(search_model, synth_shards, out))
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "embed", "--model", search_model[0], "--tokenizer",
                           search_model[1], "--shards", synth_shards, "--out", str(out), "--frames", "5",
                           "--device", "cpu", "--ray-num-cpus", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("clipvip embed: error: output_dir") and "num_frames" in last
    assert "Traceback" not in proc.stderr
    for args, fragment in [(("--manifest", "nope.jsonl"), "manifest"),
                           (("--shards", "/nonexistent/x-{0..1}.tar"), "does not exist"),
                           (("--shards", synth_shards, "--tokenizer", str(tmp_path)), "no CLIP tokenizer"),
                           (("--shards", synth_shards, "--tokenizer", ""), "no tokenizer is recorded")]:
        extra = () if "--tokenizer" in args else ("--tokenizer", search_model[1])
        proc = subprocess.run([sys.executable, "-m", "jobs.cli", "embed", "--model", search_model[0], *extra, *args, "--out",
                               str(tmp_path / "new"), "--ray-num-cpus", "1"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and fragment in proc.stderr.strip().splitlines()[-1], proc.stderr[-1500:]
        assert not (tmp_path / "new").exists()


class KillOnce:
    """SIGKILL the first Ray worker whose process title holds ``fragment`` (the actor mid-call), once."""

    def __init__(self, fragment: str) -> None:
        self.fragment, self.killed = fragment, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        while not self.stop.is_set() and not self.killed:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if title.startswith("ray::") and self.fragment in title:
                    os.kill(int(pid), signal.SIGKILL)
                    self.killed.append(title)
                    return
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_a_killed_actor_loses_nothing_and_writes_nothing_twice(local_ray, synth_shards, search_model, tmp_path):
    from search.embed import run

    with KillOnce("EmbedActor.embed_unit") as killer:
        summary = run(_cfg(search_model, synth_shards, tmp_path / "parts"))
    assert killer.killed, "no embedding actor was seen at work"
    keys = _table(tmp_path / "parts")["key"].to_pylist()
    assert sorted(keys) == sorted(_shard_keys(synth_shards))
    assert summary["units_complete"] == 6 and summary["counts"] == {"ok": 24}


def _session_pids(sid: int) -> list[int]:
    """Processes of the session ``sid`` (what a process started with ``start_new_session`` and its
    descendants share, whatever their process group)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(pid))
    return pids


def test_a_sigkilled_driver_loses_only_unfinished_parts_and_the_rerun_completes_exactly_once(
        synth_clips, search_model, tmp_path):
    """``python -m jobs.embed`` on a local Ray, killed with SIGKILL (the driver and the Ray it started,
    its whole process group) once some parts are complete; the same command then finishes the run:
    every key in exactly one part, the parts finished before the kill kept as they were, no
    temporary file left."""
    from shards.format import TMP_MARK

    rows = read_jsonl(synth_clips)
    many = [{**r, "key": f"{r['key']}_{i}"} for i in range(5) for r in rows]  # 120 rows in 30 parts of 4
    manifest = tmp_path / "many.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in many))
    out = tmp_path / "parts"
    cmd = [sys.executable, "-m", "jobs.embed", "--model", search_model[0], "--tokenizer", search_model[1],
           "--manifest", str(manifest), "--rows-per-part", "4", "--out", str(out), "--frames", "4",
           "--device", "cpu", "--ray-num-cpus", "2"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(out.glob("embed-*_stats.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray runs each actor in a process group of its own: an actor at work finishes its part and then
    # finds its raylet gone. What is on disk once the last process of the run has died is what the
    # rerun finds.
    deadline = time.time() + 60
    while _session_pids(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _session_pids(proc.pid), "processes of the killed run outlived it"
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("embed-*")}
    done_at_kill = len(list(out.glob("embed-*_stats.json")))
    assert 0 < done_at_kill < 30, "the kill did not land mid-run"
    assert not (out / "_summary.json").exists() and (out / "_run.json").exists()

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["units_complete"] == 30 and summary["counts"] == {"ok": 120}
    assert summary["this_run"]["rows"] == 120 - 4 * done_at_kill  # the finished parts were not redone
    for name, mtime in kept.items():
        if name.endswith("_stats.json"):
            parquet = name.replace("_stats.json", ".parquet")
            assert (out / name).stat().st_mtime_ns == mtime and (out / parquet).stat().st_mtime_ns == kept[parquet]
    keys = _table(out)["key"].to_pylist()
    assert sorted(keys) == sorted(r["key"] for r in many) and len(set(keys)) == len(keys)
    assert not [p.name for p in out.iterdir() if TMP_MARK in p.name]


def test_a_video_manifest_with_spans(local_ray, synth_clips, search_model, tmp_path):
    """Manifest input: rows with start/end are embedded as spans; metadata keeps the manifest's columns."""
    from search import parts
    from search.embed import EmbedConfig, run
    from search.encoder import Encoder

    summary = run(EmbedConfig(model=search_model[0], tokenizer=search_model[1], manifest=str(synth_clips),
                              output_dir=str(tmp_path / "parts"), rows_per_part=10, num_frames=4, device="cpu",
                              texts=("subtitle",)))
    assert summary["units"] == 3 and summary["counts"] == {"ok": 24}
    table = _table(tmp_path / "parts")
    rows = read_jsonl(synth_clips)
    assert table["key"].to_pylist() == [r["key"] for r in rows]
    enc = Encoder.load(search_model[0], tokenizer=search_model[1], device="cpu", num_frames=4)
    want = enc.encode_videos([(r["path"], r.get("start"), r.get("end")) for r in rows])
    np.testing.assert_allclose(parts.to_numpy(table[parts.VECTOR]).astype(np.float32), want, atol=2e-3)
    spans = [r for r in table.to_pylist() if r["start"] is not None]
    assert spans and all(r["shard"] is None and r["duration"] == pytest.approx(r["end"] - r["start"]) for r in spans)
    assert {json.loads(r["meta"])["shape"] for r in table.to_pylist()} <= {"circle", "square", "triangle", "star"}
