"""The whole graph on an in-process Ray (pipeline/run.py): every row accounted for, failures as
data, resume and retry. Run: ``.venv/bin/python -m pytest tests/pipeline/test_run.py -q``."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os

import pandas as pd
import pytest
import webdataset as wds

from caption.protocol import DecodeSettings
from pipeline.caption_service import CaptionConfig
from pipeline.decode_worker import CRASH_ENV
from pipeline.manifest import ManifestConfig
from pipeline.run import CurateConfig, RayConfig, run
from pipeline.writer import ShardWriterConfig

EXPECTED_FAILURES = {"broken_zero_byte": "InvalidDataError", "broken_truncated": "InvalidDataError",
                     "broken_not_video": "InvalidDataError", "broken_garbage": "InvalidDataError",
                     "broken_missing": "FileNotFoundError", "broken_empty_text": "empty text",
                     "broken_span": "outside the video", "crash_decoder": "killed by SIGSEGV"}


@pytest.fixture(scope="module")
def crash_hook():
    os.environ[CRASH_ENV] = "crashme"  # inherited by the Ray workers and their decode children
    yield
    os.environ.pop(CRASH_ENV, None)


@pytest.fixture(scope="module")
def local_ray(crash_hook, local_ray):
    """The shared local Ray (tests/conftest.py), started once the crash hook is in the environment."""
    yield


def _cfg(manifest, out, **writer) -> CurateConfig:
    writer = {"prefix": "t", "samples_per_shard": 7, **writer}
    return CurateConfig(manifest=ManifestConfig(path=str(manifest)),
                        writer=ShardWriterConfig(output_dir=str(out), **writer),
                        ray=RayConfig(num_cpus=2), progress_every_s=1.0)


def _statuses(out) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("t-*.parquet"))], ignore_index=True)


def test_curate_with_captions_failures_and_resume(local_ray, curate_manifest, tmp_path):
    from demo.tiny_hf import write_debug_model

    model = write_debug_model(tmp_path / "blip")
    cfg = _cfg(curate_manifest, tmp_path / "out")
    cfg = dataclasses.replace(cfg, caption=CaptionConfig(model=f"hf:{model}", device="cpu", batch_size=4,
                                                         decode=DecodeSettings(beam=2, max_new_tokens=5)))
    summary = run(cfg)
    keys = [json.loads(line)["key"] for line in curate_manifest.read_text().splitlines()]
    table = _statuses(tmp_path / "out")
    assert sorted(table["key"]) == sorted(keys)  # every key exactly once
    failed = table[table["status"] == "failed"].set_index("key")["error"].to_dict()
    assert set(failed) == set(EXPECTED_FAILURES)
    for key, fragment in EXPECTED_FAILURES.items():
        assert fragment in failed[key], (key, failed[key])
    assert summary["counts"] == {"ok": len(keys) - len(failed), "failed": len(failed)}
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("t-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(set(keys) - set(failed))
    meta = json.loads(samples[0]["json"])
    assert meta["caption"]["model"] == f"hf:{model}" and samples[0]["caption.txt"]
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(samples) and len(sizes) == summary["shards"] == -(-len(keys) // 7)
    # The run's config.json is the same text every run writes for its config (common.jsonio.config_json).
    from common.jsonio import config_json

    assert (tmp_path / "out" / "config.json").read_text() == config_json(cfg)

    # Rerun: nothing left to do, nothing rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("t-*")}
    again = run(cfg)
    assert again["this_run"]["shards"] == 0 and again["counts"] == summary["counts"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("t-*")} == mtimes

    # retry_failed redoes exactly the shards holding failed rows; the keys stay exactly once.
    retry = dataclasses.replace(cfg, writer=dataclasses.replace(cfg.writer, retry_failed=True))
    redone = run(retry)
    shards_with_failures = table.assign(shard=table["row"] // 7).query("status == 'failed'")["shard"].nunique()
    assert redone["this_run"]["shards"] == shards_with_failures
    assert sorted(_statuses(tmp_path / "out")["key"]) == sorted(keys)


def test_caption_off_is_recorded(local_ray, synth_clips, tmp_path):
    summary = run(_cfg(synth_clips, tmp_path / "out"))
    assert summary["counts"] == {"ok": 24}
    sample = next(iter(wds.WebDataset(str(tmp_path / "out" / "t-000000.tar"), shardshuffle=False)))
    assert sample["caption.txt"] == b""
    assert json.loads(sample["json"])["caption"]["model"] == ""


class KillOnce:
    """Background thread: SIGKILL the first Ray worker process whose title matches, once."""

    def __init__(self, *fragments: str, exclude: tuple[str, ...] = ("IDLE", "__init__"), after_s: float = 0.0) -> None:
        import threading

        self.fragments, self.exclude, self.killed = fragments, exclude, []
        self.after_s = after_s  # kill a process only once it has matched for this long
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    @staticmethod
    def _ray_workers() -> dict[int, str]:
        out = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if title.startswith("ray::"):
                out[int(pid)] = title
        return out

    def _watch(self) -> None:
        import signal
        import time

        seen: dict[int, float] = {}
        while not self._stop.is_set() and not self.killed:
            for pid, title in self._ray_workers().items():
                if all(f in title for f in self.fragments) and not any(e in title for e in self.exclude):
                    if time.monotonic() - seen.setdefault(pid, time.monotonic()) < self.after_s:
                        continue
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(title)
                    return
            time.sleep(0.01)

    def __enter__(self) -> "KillOnce":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("target", ["shard task", "caption replica"])
def test_a_killed_ray_worker_loses_nothing(local_ray, curate_manifest, tmp_path, target, caplog):
    """SIGKILL a shard task's worker or a caption replica mid-run: Ray reruns the task, Serve restarts the
    replica and the frames it held are sent again; every key lands once, no row turns into a failure."""
    from demo.tiny_hf import write_debug_model

    cfg = _cfg(curate_manifest, tmp_path / "out")
    if target == "caption replica":
        model = write_debug_model(tmp_path / "blip")
        cfg = dataclasses.replace(cfg, caption=CaptionConfig(model=f"hf:{model}", device="cpu", batch_size=4,
                                                             placement="actors",
                                                             decode=DecodeSettings(beam=2, max_new_tokens=5)))
        fragments = ("ServeReplica", "CaptionReplica")  # a replica of the caption service
    else:
        # The shard task is killed once it has run 1.5 s, after it told the progress actor its first
        # rows: one shard of every row, captioned inline at 0.3 s per 4 frames, runs about 2.5 s.
        cfg = dataclasses.replace(
            cfg, writer=dataclasses.replace(cfg.writer, samples_per_shard=64),
            caption=CaptionConfig(model="py:bench.sim_gpu:SimulatedGPU", placement="inline", batch_size=4,
                                  options={"a": 0.3, "b": 0.0}))
        fragments = ("process_shard",)  # a running shard task (decodes, captions, writes its shard)
    # A shard task dies once it has reported some rows: its retry's rows must not count twice.
    with KillOnce(*fragments, after_s=1.5 if target == "shard task" else 0.0) as killer, \
            caplog.at_level(logging.INFO, logger="pipeline.run"):
        summary = run(cfg)
    assert killer.killed, f"no worker matching {fragments} was seen running"
    final = [r.getMessage() for r in caplog.records if " rows at " in r.getMessage()]
    n_rows = len(curate_manifest.read_text().splitlines())
    assert final and final[-1].startswith(f"{n_rows} rows at "), final
    keys = [json.loads(line)["key"] for line in curate_manifest.read_text().splitlines()]
    table = _statuses(tmp_path / "out")
    assert sorted(table["key"]) == sorted(keys)
    assert set(table.loc[table["status"] == "failed", "key"]) == set(EXPECTED_FAILURES)
    assert summary["counts"] == {"ok": len(keys) - len(EXPECTED_FAILURES), "failed": len(EXPECTED_FAILURES)}
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("t-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(set(keys) - set(EXPECTED_FAILURES))


def test_overwrite_removes_the_old_run_whatever_its_prefix(local_ray, synth_clips, tmp_path):
    out = tmp_path / "out"
    run(_cfg(synth_clips, out))
    assert list(out.glob("t-*.tar"))
    renamed = _cfg(synth_clips, out, prefix="part", overwrite=True)
    summary = run(renamed)
    assert summary["shards_complete"] == summary["shards"]
    assert not list(out.glob("t-*")), "the old run's shards survived the overwrite"
    keys = [json.loads(line)["key"] for line in synth_clips.read_text().splitlines()]
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(keys)  # every key once in the folder


@pytest.mark.parametrize("which", ["_run.json", "_summary.json"])
def test_a_full_disk_while_writing_run_files_is_one_line(local_ray, synth_clips, tmp_path, monkeypatch, capsys,
                                                         which):
    from jobs.curate import main
    from pipeline import writer

    out = tmp_path / "out"
    if which == "_summary.json":
        run(_cfg(synth_clips, out))  # a finished run: the rerun only rewrites the summary
    real = writer.write_atomic

    def full(path, data):
        if path.endswith(which):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(path, data)

    monkeypatch.setattr(writer, "write_atomic", full)
    code = main(["--set", f"manifest.path={synth_clips}", "--set", f"writer.output_dir={out}",
                 "--set", "writer.prefix=t", "--set", "writer.samples_per_shard=7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0] and "Traceback" not in err[0]
    assert which in err[0] and "rerun the same command" in err[0]
    if which == "_summary.json":
        # No summary rather than one that disagrees with sizes.json.
        assert not (out / "_summary.json").exists() and (out / "sizes.json").exists()
    else:
        assert not list(out.glob("t-*"))  # nothing ran without its fingerprint
