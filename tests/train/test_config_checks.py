"""The training checks live in the config objects (``problems()`` on each section, ``TrainConfig.check``)
and every run makes them, so a Python caller of ``train.setup.run`` is refused exactly as the CLI is,
before anything is written; a rule the loader or the model builder also needs is written once.

Run: .venv/bin/python -m pytest tests/train/test_config_checks.py -q
"""

from __future__ import annotations

import dataclasses

import pytest

from common.errors import UserError
from train.data import ShardDataConfig, ShardStream
from train.loop import EvalSection, ModelSection, TrainConfig
from train.optim import OptimConfig
from train.retrieval_data import RetrievalDataConfig


def test_a_python_caller_is_refused_before_anything_is_written(tiny_pretrain, tmp_path):
    from train.setup import run

    cfg = tiny_pretrain(tmp_path / "run", optim=OptimConfig(lr=-1e-3, betas=(0.9, 1.5)), gather_grad="max")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=0))
    with pytest.raises(UserError) as info:
        run(cfg)
    message = str(info.value)
    for words in ("optim.lr=-0.001 must be > 0", "optim.betas[1]=1.5 must be in [0, 1)", "data.batch_size=0 must be >= 1",
                  "gather_grad='max': choose mean"):
        assert words in message, message
    assert "\n" not in message and not (tmp_path / "run").exists()


def test_every_section_names_its_own_keys():
    cfg = TrainConfig(
        task="finetune", device="tpu", steps=0, epochs=0.0, log_every=-1,
        model=ModelSection(init="", flavour="XL", attention="sparse"),
        finetune=RetrievalDataConfig(dataset="howto", num_frames=0, num_workers=-2),
        data=ShardDataConfig(batch_size=0),  # a fine-tuning run does not read data.*
        eval=EvalSection(select_metric="t2v_medr", split="test", manifest=RetrievalDataConfig(manifest="val.jsonl")),
        loss_terms=("nope",))  # nor loss_terms: fine-tuning trains "vs"
    problems = cfg.problems()
    expected = [
        "epochs=0.0 must be > 0 (or set steps=<N>)",
        "log_every=-1 must be >= 0 (0 turns it off)",
        "device='tpu': choose one of auto, cpu, cuda",
        "model.attention='sparse': choose one of proxy, joint, meanpool",
        "model.flavour='XL': choose one of B/16, B/32, L/14, debug",
        "eval.select_metric='t2v_medr': choose one of t2v_r1",
        "eval.split=test: fine-tuning picks its checkpoint on a validation split",
        "finetune.dataset='howto': choose one of msrvtt, didemo, activitynet, lsmdc",
        "finetune.num_frames=0 must be >= 1",
        "finetune.num_workers=-2 must be >= 0",
    ]
    for words in expected:
        assert sum(p.startswith(words) for p in problems) == 1, (words, problems)
    assert len(problems) == len(expected), problems
    assert not any(p.startswith(("data.", "loss_terms")) for p in problems)


@pytest.mark.parametrize("name", ["debug", "debug_finetune", "pretrain_b32", "finetune_msrvtt_b16", "finetune_anet"])
def test_the_named_configs_have_no_problems(name):
    from train import configs as train_configs

    assert train_configs.get(name).problems() == []


def test_the_loader_and_the_check_share_one_rule_for_shards_per_reader(synth_shards, tmp_path):
    """Six shards, 4 workers x 2 ranks = 8 readers: the check and the loader say the same sentence."""
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), data=ShardDataConfig(shards=synth_shards, num_workers=4),
                      model=ModelSection(flavour="debug"))
    with pytest.raises(UserError) as checked:
        cfg.check(world_size=2)
    with pytest.raises(UserError) as loaded:
        ShardStream(cfg.data, tokenizer=None, world_size=2)
    sentence = str(loaded.value)
    assert sentence in str(checked.value)
    assert "6 shard(s) for 8 readers (data.num_workers=4 x 2 rank(s)); every reader needs its own shard" in sentence
    cfg.check(world_size=1)  # 4 readers: fine


def test_an_unknown_init_source_is_one_sentence_for_the_check_and_the_builder(tmp_path):
    from train.setup import ModelInitError, build_model

    cfg = TrainConfig(run_dir=str(tmp_path / "run"), model=ModelSection(init="s3:/models/clip"))
    sentence = cfg.model.init_problem()
    assert sentence.startswith("model.init='s3:/models/clip': use ''") and sentence in cfg.problems()
    with pytest.raises(ModelInitError) as info:
        build_model(cfg, tokenizer=None)
    assert str(info.value) == sentence
