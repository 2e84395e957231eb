"""train/preempt.py and the resume checks of train/setup.py in one process: Ctrl-C (SIGINT to the
whole process group, loader workers included) stops the run after a checkpoint with one line and
exit code 75, and the same command resumes with the uninterrupted losses; a run_dir holding a
checkpoint resumes without a flag; ranks that would start from different places or settings are
refused; a second signal soon after the first is not taken as "stop at once".

Run: .venv/bin/python -m pytest tests/train/test_preempt.py -q
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train import checkpoint as ckpt
from train.preempt import EXIT_PREEMPTED, StopOnSignal
from train.setup import check_ranks_agree, run

ROOT = Path(__file__).resolve().parents[2]


def _losses(run_dir: Path) -> dict[int, float]:
    text = (run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").is_file() else ""
    rows = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def test_ctrl_c_saves_prints_the_resume_command_and_the_same_command_resumes(synth_shards, tmp_path):
    from jobs.pretrain import main

    def argv(run_dir: Path) -> list[str]:
        return ["--config", "debug", f"run_dir={run_dir}", "steps=30", f"data.shards={synth_shards}",
                "data.batch_size=4", "data.num_workers=2", "data.num_frames=4", "data.max_text_len=16",
                "data.shuffle_buffer=4", "eval.every=0", "eval.at_start=false", "checkpoint_every=100", "log_every=1",
                "tensorboard=false", "--log-level", "WARNING"]

    assert main(argv(tmp_path / "full")) == 0
    full = _losses(tmp_path / "full")

    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.pretrain", *argv(run_dir)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while max(_losses(run_dir), default=0) < 5:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the trainer and its loader workers
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    step = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 5 <= step < 30  # saved although checkpoint_every=100: the signal's own checkpoint
    lines = [line for line in err.splitlines() if line.startswith("clipvip pretrain:")]
    assert lines == [f"clipvip pretrain: stopped by SIGINT after step {step} of 30; saved {run_dir}/checkpoints/"
                     f"step_{step:08d}; resume with the same command: clipvip pretrain "
                     + shlex.join(argv(run_dir)) + f" (exit code {EXIT_PREEMPTED})"]
    assert "Traceback" not in err

    assert main(argv(run_dir)) == 0  # the same command, no flag
    resumed = _losses(run_dir)
    assert sorted(resumed) == list(range(1, 31))
    assert [resumed[s] for s in resumed] == pytest.approx([full[s] for s in resumed], rel=1e-6, abs=1e-6)
    assert main(argv(run_dir)) == 0  # once more: the final checkpoint is there, nothing left to train
    assert _losses(run_dir) == resumed


def test_a_second_signal_stops_at_once_only_after_a_pause():
    before = signal.getsignal(signal.SIGTERM)  # whatever the process had (Ray installs its own)
    with StopOnSignal(force_after_s=0.3, announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C seen twice: still finishing the step
        assert stop.requested() and stop.signal_name == "SIGTERM"
        time.sleep(0.4)
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored after the loop


def test_resume_false_refuses_a_run_dir_that_holds_a_checkpoint(tiny_pretrain, tmp_path):
    run(tiny_pretrain(tmp_path, steps=2))
    with pytest.raises(ckpt.CheckpointError, match=r"resume=false but .* holds a checkpoint of an earlier run \(step 2\)"):
        run(tiny_pretrain(tmp_path, steps=2, resume=False))


def _found(step, config, problem="", host="node0"):
    return {"step": step, "checkpoint": f"/runs/x/checkpoints/step_{step:08d}" if step else "", "problem": problem,
            "config": config, "host": host}


def test_ranks_that_would_start_from_different_places_or_settings_are_refused():
    import dataclasses

    from train.loop import TrainConfig

    config = dataclasses.asdict(TrainConfig(run_dir="/runs/x"))
    check_ranks_agree([_found(12, config), _found(12, config, host="node1")], Path("/runs/x/checkpoints"))
    check_ranks_agree([_found(None, config), _found(None, config)], Path("/runs/x/checkpoints"))
    # Node-local run dirs: rank 0 finds the checkpoint it wrote, rank 1 an empty folder of its own.
    with pytest.raises(ckpt.CheckpointError) as err:
        check_ranks_agree([_found(25, config), _found(None, config, host="node1")], Path("/runs/x/checkpoints"))
    assert str(err.value) == (
        "the ranks disagree on where to start in /runs/x/checkpoints: rank 0 (node0) finds step 25 "
        "(/runs/x/checkpoints/step_00000025); rank 1 (node1) finds no checkpoint. run_dir must be one folder every "
        "node shares (a network file system), not a folder per node")
    other = {**config, "data": {**config["data"], "batch_size": 4}}
    with pytest.raises(ckpt.CheckpointError, match=r"rank 1 was started with other settings than rank 0 "
                                                   r"\(data.batch_size: 32 -> 4\)"):
        check_ranks_agree([_found(12, config), _found(12, other)], Path("/runs/x/checkpoints"))
