"""jobs/train_cli.py, jobs/finetune.py: overrides anywhere on the line, per-command help with
defaults, evaluation switched on and off as ``eval.every`` says, and the evaluate line a fine-tuning
run prints, which must paste as it is.

Run: .venv/bin/python -m pytest tests/jobs/test_train_cli.py -q
"""

from __future__ import annotations

import logging
import shlex

import pytest

from jobs import train_cli
from jobs.finetune import evaluate_command
from jobs.train_cli import parse


def test_overrides_are_accepted_before_and_after_flags(synth_shards, tmp_path):
    run_dir = tmp_path / "x"
    after = parse(["--resume", f"run_dir={run_dir}", "steps=1", f"data.shards={synth_shards}"], "clipvip pretrain",
                  "debug", "pretrain")
    between = parse([f"run_dir={run_dir}", "--resume", "steps=1", "--log-level", "WARNING",
                     f"data.shards={synth_shards}"], "clipvip pretrain", "debug", "pretrain")
    assert (after.run_dir, after.steps, after.resume) == (str(run_dir), 1, True)
    assert after == between


def test_pretrain_and_finetune_help_differ_and_show_defaults(capsys):
    helps = {}
    for task, default in (("pretrain", "debug"), ("finetune", "finetune_msrvtt")):
        with pytest.raises(SystemExit):
            train_cli.parser(f"clipvip {task}", default, task).parse_args(["--help"])
        helps[task] = " ".join(capsys.readouterr().out.split())
    assert helps["pretrain"] != helps["finetune"]
    assert "(default: debug)" in helps["pretrain"] and "(default: finetune_msrvtt)" in helps["finetune"]
    assert "pretrain_b32 hf:openai/clip-vit-base-patch32, 3 epochs, 32/rank, lr 5e-06" in helps["pretrain"]
    assert "finetune_msrvtt" not in helps["pretrain"] and "pretrain_b32" not in helps["finetune"]
    assert "exits with code 75" in helps["pretrain"] and "(default: INFO)" in helps["finetune"]


def test_eval_every_zero_turns_evaluation_off_and_an_every_without_a_set_says_so(synth_shards, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="jobs.train_cli"):
        # pretrain_b32 names an MSR-VTT manifest that is not here: with eval.every=0 it is not read.
        cfg = parse([f"data.shards={synth_shards}", "data.num_workers=1", "eval.every=0", f"run_dir={tmp_path}"],
                    "clipvip pretrain",
                    "pretrain_b32", "pretrain")
    assert cfg.eval.manifest.manifest == "" and cfg.eval.shards == ""
    assert "eval.every=0 turns evaluation off: eval.manifest.manifest is not read" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobs.train_cli"):
        parse([f"data.shards={synth_shards}", "eval.every=5", f"run_dir={tmp_path}"], "clipvip pretrain", "debug",
              "pretrain")
    assert "eval.every=5 but no evaluation set is given" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobs.train_cli"):
        parse([f"data.shards={synth_shards}", f"run_dir={tmp_path}"], "clipvip pretrain", "debug", "pretrain")
    assert "evaluation" not in caplog.text  # the debug config evaluates nothing and says nothing


def test_the_evaluate_line_after_fine_tuning_has_no_empty_option():
    from train import configs as train_configs

    cfg = train_configs.get("debug_finetune")
    line = evaluate_command(cfg)
    assert "--video-root" not in line and "  " not in line  # the debug config has no video root
    args = shlex.split(line.replace("<test.jsonl>", "test.jsonl"))
    assert args[:2] == ["clipvip", "evaluate"] and all(a for a in args)
    assert args[args.index("--frames") + 1] == "12" and args[args.index("--tokenizer") + 1].endswith("/tokenizer")
    msrvtt = evaluate_command(train_configs.get("finetune_msrvtt"))
    assert "--video-root data/msrvtt/videos" in msrvtt and "--tokenizer openai/clip-vit-base-patch32" in msrvtt
