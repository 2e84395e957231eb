"""Every ``clipvip`` command answers a user error with one line on stderr naming the input and the
fix, exit code 2 and no traceback (``--debug`` shows it), before it writes anything.

Run: .venv/bin/python -m pytest tests/jobs/test_user_errors.py -q
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs import cli

ROOT = Path(__file__).resolve().parents[2]


def clipvip(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``clipvip <argv>`` in-process; returns the exit code and the one error line (asserted single)."""
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"clipvip {argv[0]}: error: "), lines[0]
    return rc, lines[0]


def test_pretrain_with_a_pattern_matching_no_shard_blames_the_pattern(tmp_path, capsys):
    pattern = str(tmp_path / "shards" / "train-{000000..000003}.tar")
    _, line = clipvip(["pretrain", f"run_dir={tmp_path / 'run'}", f"data.shards={pattern}"], capsys)
    assert "data.shards" in line and "no shard matches" in line and pattern in line
    assert "tokenizer" not in line and "train_clip_bpe" not in line
    assert not (tmp_path / "run").exists()


def test_pretrain_mistyped_override_writes_nothing(synth_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _, line = clipvip(["pretrain", f"run_dir={run_dir}", f"data.shards={synth_shards}", "optim.lr=abc"], capsys)
    assert "optim.lr: 'abc' is not a number" in line
    _, line = clipvip(["pretrain", f"run_dir={run_dir}", "optim.lrr=5e-6"], capsys)
    assert "did you mean 'optim.lr'" in line
    assert not run_dir.exists()


def test_pretrain_negative_lr_and_a_run_dir_that_is_a_file(synth_shards, tmp_path, capsys):
    a_file = tmp_path / "run"
    a_file.write_text("not a folder")
    _, line = clipvip(["pretrain", f"run_dir={a_file}", f"data.shards={synth_shards}", "optim.lr=-5e-6"], capsys)
    assert "optim.lr=-5e-06 must be > 0" in line and f"run_dir={str(a_file)!r} is a file" in line


def test_evaluation_settings_that_would_select_wrongly_are_refused(synth_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # A rank metric would pick the worst checkpoint (higher wins); a misspelt one would fail at the first evaluation.
    _, line = clipvip(["pretrain", f"run_dir={run_dir}", f"data.shards={synth_shards}", "eval.select_metric=t2v_medr"],
                      capsys)
    assert "eval.select_metric='t2v_medr'" in line and "dsl_t2v_r1" in line
    _, line = clipvip(["pretrain", f"run_dir={run_dir}", f"data.shards={synth_shards}", "gather_grad=max"], capsys)
    assert "gather_grad='max': choose mean (as the official code) or sum" in line
    _, line = clipvip(["pretrain", f"run_dir={run_dir}", f"data.shards={synth_shards}", "eval.split=dev"], capsys)
    assert "eval.split='dev': choose val" in line
    _, line = clipvip(["finetune", "--config", "finetune_msrvtt", f"run_dir={run_dir}", "eval.split=test"], capsys)
    assert "eval.split=test: fine-tuning picks its checkpoint on a validation split" in line
    assert not run_dir.exists()


def test_pretrain_resume_of_a_crafted_pickle_is_refused_without_running_it(synth_shards, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "run" / "checkpoints" / "step_00000004"
    folder.mkdir(parents=True)

    class Exploit:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"step": 4, "loader": [{}], "payload": Exploit()}, folder / "state.pt")
    (folder.parent / "latest").write_text(folder.name + "\n")
    _, line = clipvip(["pretrain", "--resume", f"run_dir={tmp_path / 'run'}", f"data.shards={synth_shards}",
                       "device=cpu"], capsys)
    assert "state.pt" in line and "pickle" in line
    assert not marker.exists() and not (tmp_path / "run" / "config.json").exists()


def test_pretrain_resume_with_a_changed_batch_size_names_the_difference(synth_shards, tmp_path, capsys):
    from train import configs as train_configs
    from train import checkpoint as ckpt

    run_dir = tmp_path / "run"
    saved = dataclasses.replace(train_configs.get("debug"), run_dir=str(run_dir), device="cpu",
                                data=dataclasses.replace(train_configs.get("debug").data, shards=synth_shards))
    ckpt.save(run_dir / "checkpoints", 12, {"step": 12, "loader": [{}], "config": dataclasses.asdict(saved)})
    argv = ["pretrain", "--resume", f"run_dir={run_dir}", f"data.shards={synth_shards}", "device=cpu",
            "data.batch_size=4"]
    _, line = clipvip(argv, capsys)
    assert "data.batch_size: 8 -> 4" in line and "--resume-changed" in line
    assert not (run_dir / "config.json").exists()


def test_finetune_and_evaluate_name_a_missing_checkpoint(tmp_path, capsys):
    _, line = clipvip(["finetune", f"run_dir={tmp_path / 'ft'}"], capsys)
    assert "model.init='clipvip:pretrain_clipvip_base_32.pt'" in line and "does not exist" in line
    _, line = clipvip(["evaluate", "--model", str(tmp_path / "nope"), "--tokenizer", "openai/clip-vit-base-patch32",
                       "--dataset", "msrvtt", "--manifest", str(tmp_path / "test.jsonl")], capsys)
    assert f"model folder {tmp_path / 'nope'} does not exist" in line and "test.jsonl does not exist" in line


def test_caption_and_synth_user_errors(tmp_path, capsys):
    _, line = clipvip(["caption", "images", "--model", "ofa:x", str(tmp_path / "a.jpg")], capsys)
    assert f"image {tmp_path / 'a.jpg'} does not exist" in line
    _, line = clipvip(["caption", "convert-ofa", str(tmp_path / "ofa.pt"), str(tmp_path / "out")], capsys)
    assert "ofa.pt does not exist" in line
    a_file = tmp_path / "clips"
    a_file.write_text("")
    _, line = clipvip(["synth", str(a_file), "-n", "0"], capsys)
    assert "is a file" in line and "--num-clips 0" in line


def test_curate_config_errors_flow_through_the_dispatcher(tmp_path, capsys):
    _, line = clipvip(["curate", "--set", "writer.samples_per_shard=abc",
                       "--set", f"writer.output_dir={tmp_path / 'out'}"], capsys)
    assert "writer.samples_per_shard: 'abc' is not an integer" in line
    # Values of the right type that a section's own check refuses: one line too, never a traceback.
    for setting, words in (("stall_timeout_s=-1", "stall_timeout_s=-1.0 must be >= 0"),
                           ("max_failed_fraction=2", "max_failed_fraction=2.0 must be between 0 and 1"),
                           ("caption.placement=foo", "caption.placement='foo' must be auto, actors or inline")):
        _, line = clipvip(["curate", "--set", setting, "--set", f"writer.output_dir={tmp_path / 'out'}"], capsys)
        assert words in line, line
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_instead(tmp_path):
    from jobs.config import ConfigError

    with pytest.raises(ConfigError):
        cli.main(["pretrain", "--debug", f"run_dir={tmp_path}", "steps=ten"])


@pytest.mark.parametrize("module, argv, words", [
    ("pretrain", ["steps=ten"], "steps: 'ten'"),
    ("finetune", ["optim.lr=abc"], "optim.lr: 'abc'"),
    ("evaluate", ["--model", "nope", "--tokenizer", "t", "--dataset", "msrvtt", "--manifest", "nope.jsonl"],
     "model folder nope does not exist"),
    ("caption", ["images", "--model", "ofa:x", "nope.jpg"], "image nope.jpg does not exist"),
    ("synth", ["out", "-n", "0"], "--num-clips 0"),
    ("demo", ["--set", "variants=[nope]"], "unknown variant"),
])
def test_python_dash_m_entrypoints_answer_the_same_way(module, argv, words, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", f"jobs.{module}", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"clipvip {module}: error: ") and words in lines[0], lines[0]
