"""A run that cannot finish stops on its own: the caption pool asks for two actors on a custom
resource the cluster holds once (an autoscaler that never delivers the second caption node), so
the shards routed to the missing actor wait for ever. ``stall_timeout_s`` ends the run: finished
shards are kept, the missing ones are named with what the run waited for, the run reports itself
incomplete, and a rerun the cluster can serve finishes them with every key exactly once.

Run: ``.venv/bin/python -m pytest tests/pipeline/test_run_stall.py -q``.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import webdataset as wds

from caption.protocol import DecodeSettings
from pipeline.errors import CurationError
from pipeline.manifest import ManifestConfig
from pipeline.run import CurateConfig, RayConfig, check_outcome, run
from pipeline.stages import CaptionConfig
from pipeline.writer import ShardWriterConfig


@pytest.fixture(scope="module")
def ray_with_one_caption_slot():
    import ray

    ray.init(num_cpus=2, resources={"captioner": 1}, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_stalled_run_stops_keeps_its_shards_and_the_rerun_finishes(ray_with_one_caption_slot, synth_clips,
                                                                    tmp_path):
    from demo.tiny_hf import write_debug_model

    model = write_debug_model(tmp_path / "blip")
    out = tmp_path / "out"
    caption = CaptionConfig(model=f"hf:{model}", device="cpu", batch_size=4, placement="actors", num_gpus=0,
                            num_cpus=0, resources={"captioner": 1}, concurrency=2,
                            decode=DecodeSettings(beam=1, max_new_tokens=4))
    cfg = CurateConfig(manifest=ManifestConfig(path=str(synth_clips)), caption=caption,
                       writer=ShardWriterConfig(output_dir=str(out), prefix="t", samples_per_shard=6),
                       # As on an autoscaling cluster: start although the second actor has no room yet.
                       ray=RayConfig(num_cpus=2, check_resources=False),
                       # Long enough for the first actor to load its model on a loaded box before any row.
                       progress_every_s=1.0, stall_warn_s=2.0, stall_timeout_s=20.0)
    summary = run(cfg)
    n_shards = summary["shards"]
    assert n_shards == 4
    # Shards go to actor (shard % 2): those of the actor that started are done (Ray picks which one).
    assert summary["shards_complete"] == 2 and summary["this_run"]["shards"] == 2
    missing = summary["this_run"]["failed_shards"]
    assert sorted(missing) in (["0", "2"], ["1", "3"])
    assert all("stalled: no row finished" in why and "1 of 2 caption actor(s) not started" in why
               for why in missing.values())
    with pytest.raises(CurationError, match=r"only 2 of 4 shards are complete; e\.g\. shard [01]: stalled"):
        check_outcome(summary)
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*tmp*"))  # the cancelled tasks left nothing

    # The cluster can serve one actor: the rerun (same fingerprint) does only the missing shards.
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("t-*.tar")}
    rerun = dataclasses.replace(cfg, caption=dataclasses.replace(caption, concurrency=1))
    again = run(rerun)
    check_outcome(again)
    assert again["this_run"]["shards"] == 2 and again["shards_complete"] == 4
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.glob("t-*.tar")) if n in done} == done
    keys = [json.loads(line)["key"] for line in synth_clips.read_text().splitlines()]
    table = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("t-*.parquet"))], ignore_index=True)
    assert sorted(table["key"]) == sorted(keys)
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("t-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(keys) and all(s["caption.txt"] for s in samples)
