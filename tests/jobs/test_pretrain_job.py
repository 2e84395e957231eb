"""jobs/pretrain.py end to end: the ``debug`` config trains on shards of synthesised clips on CPU,
its loss falls, and it leaves config, metrics (JSONL + TensorBoard), checkpoints, the held-out
retrieval report and the loss plot. The slow variant curates the shards with the real Ray pipeline.

Run: .venv/bin/python -m pytest tests/jobs/test_pretrain_job.py -q   (add -m slow for the pipeline one)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import pretrain
from train import configs as train_configs
from train.log import read_metrics


def _run_debug(shards: str, heldout: str, run_dir: Path, steps: int = 12) -> list[dict]:
    rc = pretrain.main(["--config", "debug", "--log-level", "WARNING", f"run_dir={run_dir}", f"steps={steps}",
                        f"data.shards={shards}", f"eval.shards={heldout}", "eval.every=6", "checkpoint_every=6",
                        "data.num_frames=6"])
    assert rc == 0
    return read_metrics(run_dir / "metrics.jsonl")


def _assert_trained(rows: list[dict], run_dir: Path, steps: int) -> None:
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:2]) / 2, losses
    assert all(r["clips_per_s_per_gpu"] > 0 for r in rows)
    evals = read_metrics(run_dir / "metrics.jsonl", kind="heldout")
    assert [r["step"] for r in evals] == [0, 6, steps]
    assert {"t2v_r1", "v2t_r10", "t2v_medr", "dsl_t2v_meanr"} <= set(evals[-1])
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["steps"] == steps
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
    assert (run_dir / "checkpoints" / f"step_{steps:08d}" / "model" / "model.safetensors").is_file()


def test_debug_config_trains_on_synthetic_shards(synth_shards, tmp_path):
    heldout = synth_shards.replace("{000000..000005}", "{000004..000005}")
    run_dir = tmp_path / "run"
    _assert_trained(_run_debug(synth_shards, heldout, run_dir), run_dir, 12)


def test_named_configs_build_and_keep_the_official_numbers():
    assert set(train_configs.CONFIGS) >= {"debug", "pretrain_b32", "pretrain_b16", "finetune_msrvtt", "finetune_didemo",
                                          "finetune_anet", "finetune_lsmdc", "finetune_anet_b16"}
    b32 = train_configs.get("pretrain_b32")
    assert (b32.data.batch_size, b32.optim.lr, b32.optim.weight_decay, b32.optim.grad_clip) == (32, 5e-6, 0.05, 5.0)
    assert b32.loss_terms == ("vsc", "fc") and b32.data.max_text_len == 70
    anet = train_configs.get("finetune_anet_b16")
    assert (anet.finetune.num_frames, anet.finetune.batch_size, anet.finetune.max_text_len) == (32, 8, 70)
    didemo = train_configs.get("finetune_didemo_b16")
    assert (didemo.optim.lr_mul, didemo.optim.lr_mul_prefix, didemo.finetune.max_text_len) == (10.0, "logit_scale", 70)
    assert "val" in train_configs.get("finetune_msrvtt").eval.manifest.manifest
    with pytest.raises(ValueError, match="unknown run config"):
        train_configs.get("pretrain_b64")


@pytest.mark.slow
def test_debug_config_trains_on_shards_curated_by_the_pipeline(tmp_path):
    from pipeline.manifest import ManifestConfig
    from pipeline.run import CurateConfig, RayConfig, run
    from demo.synth import synthesize
    from pipeline.writer import ShardWriterConfig

    manifests = {"train": synthesize(tmp_path / "clips", 48, seed=1), "held": synthesize(tmp_path / "held", 12, seed=9)}
    patterns = {}
    for name, manifest in manifests.items():
        out = tmp_path / f"{name}_shards"
        summary = run(CurateConfig(manifest=ManifestConfig(path=str(manifest)),
                                   writer=ShardWriterConfig(output_dir=str(out), prefix=name, samples_per_shard=6),
                                   ray=RayConfig(num_cpus=2)))
        patterns[name] = str(out / f"{name}-{{000000..{summary['shards'] - 1:06d}}}.tar")
    run_dir = tmp_path / "run"
    _assert_trained(_run_debug(patterns["train"], patterns["held"], run_dir), run_dir, 12)
