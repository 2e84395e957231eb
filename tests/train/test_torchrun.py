"""Real ``torchrun`` runs of ``jobs.pretrain``, 2 processes, gloo on loopback: a SIGTERM to the
launcher mid-run stops every rank after a checkpoint, and the same command resumes with the
uninterrupted run's losses step for step; a worker killed in a ``--max-restarts 1`` run is named by
the survivor in one line, and the restarted group resumes at the checkpoint with the same losses;
and what a 2-rank pretraining run equals: one process trained on the two ranks' batches side by
side (``gather_grad=sum``).

Run: .venv/bin/python -m pytest tests/train/test_torchrun.py -q   (about a minute on 2 cores)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = 30


def _argv(shards: str, run_dir: Path) -> list[str]:
    return ["--config", "debug", f"run_dir={run_dir}", f"steps={STEPS}", f"data.shards={shards}", "data.batch_size=4",
            "data.num_workers=1", "data.num_frames=4", "data.max_text_len=16", "data.shuffle_buffer=4",
            "gather_grad=sum", "eval.every=0", "eval.at_start=false", "checkpoint_every=4", "log_every=1",
            "tensorboard=false"]


def _launch(shards: str, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """torchrun with 2 local workers; its own session, so a test can signal the whole tree."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *extra,
           "-m", "jobs.pretrain", *_argv(shards, run_dir)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s: {err[-3000:]}")
    return err


def _losses(run_dir: Path) -> dict[int, float]:
    """Step -> train loss from metrics.jsonl (a resumed run's rows replace the replayed ones)."""
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    rows = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while max(_losses(run_dir), default=0) < step:
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the run ended or stalled before step {step}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(synth_shards, tmp_path_factory) -> dict[int, float]:
    """The uninterrupted 2-process run's loss per step."""
    run_dir = tmp_path_factory.mktemp("torchrun") / "uninterrupted"
    proc = _launch(synth_shards, run_dir)
    err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_sigterm_stops_every_rank_after_a_checkpoint_and_the_same_command_resumes(synth_shards, tmp_path,
                                                                                   reference):
    run_dir = tmp_path / "run"
    proc = _launch(synth_shards, run_dir)
    _wait_for_step(proc, run_dir, 6)
    os.kill(proc.pid, signal.SIGTERM)  # to the launcher, as a scheduler preempting the job does
    err = _finish(proc)
    assert proc.returncode != 0
    stopped = re.findall(r"clipvip pretrain: stopped by SIGTERM after step (\d+) of 30; saved (\S+); rerun the same "
                         r"torchrun command to resume \(exit code 75\)", err)
    assert len(stopped) == 1, err[-3000:]  # one line, from rank 0
    step, folder = int(stopped[0][0]), stopped[0][1]
    assert 6 <= step < STEPS
    assert folder == str(run_dir / "checkpoints" / f"step_{step:08d}")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"
    assert "Traceback" not in err.split("SignalException")[0].split("clipvip pretrain: stopped")[0]

    proc = _launch(synth_shards, run_dir)  # the very same command: no --resume
    err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert f"resuming from step {step}" in err
    resumed = _losses(run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert [resumed[s] for s in resumed] == pytest.approx([reference[s] for s in resumed], rel=1e-6, abs=1e-6)


def test_a_killed_worker_is_named_and_the_restarted_group_resumes_at_the_checkpoint(synth_shards, tmp_path,
                                                                                     reference):
    run_dir = tmp_path / "run"
    # torch 2.13's restarted workers cannot reconnect gloo over the launcher's shared store
    # (pytorch issues 135712 and 167288); the README gives this workaround.
    proc = _launch(synth_shards, run_dir, "--max-restarts", "1", env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    _wait_for_step(proc, run_dir, 6)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    rank1 = [pid for pid in workers if "RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    named = re.findall(r"clipvip pretrain: error: rank 1 stopped without a word \(killed: .*?\)\. Rank 0 stopped with "
                       r"it; the last checkpoint is (\S+); rerun", err)
    assert len(named) == 1, err[-3000:]
    resumed_at = re.findall(r"resuming from step (\d+)", err)
    assert len(resumed_at) == 1 and named[0].endswith(f"step_{int(resumed_at[0]):08d}")
    assert int(resumed_at[0]) >= 4
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert [losses[s] for s in losses] == pytest.approx([reference[s] for s in losses], rel=1e-6, abs=1e-6)


class _SideBySide:
    """One process's batches: rank 0's and rank 1's batch of a 2-rank run, concatenated."""

    def __init__(self, cfg, tokenizer) -> None:
        from train.data import ShardLoader

        self.loaders = [ShardLoader(cfg, tokenizer, rank=r, world_size=2) for r in (0, 1)]

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        a, b = (next(loader) for loader in self.loaders)
        return {k: (torch.cat([a[k], b[k]]) if torch.is_tensor(a[k]) else a[k] + b[k]) for k in a}

    def state_dict(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def test_two_ranks_equal_one_process_trained_on_their_batches_side_by_side(synth_shards, tmp_path, reference):
    """The claim the README and train/loop.py make for pretraining: an N-rank run is one process
    trained on the N ranks' batches concatenated (exactly so with gather_grad=sum), not a one-process
    run reading the shards with N x the batch size."""
    import dataclasses

    from train import configs as train_configs
    from jobs.config import load
    from train.loop import TrainConfig
    from train.setup import TrainingRun

    # The same settings in one process; the debug tokenizer is learnt from the same shards alike.
    argv = _argv(synth_shards, tmp_path / "one")
    cfg = load(TrainConfig, None, argv[2:], base=train_configs.get("debug"))
    run = TrainingRun(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=0)))
    run.prepare()
    run.build()
    run.batches.close()
    run.batches = _SideBySide(run.cfg.data, run.tokenizer)
    run.finish(run.train())
    one = _losses(tmp_path / "one")
    assert sorted(one) == list(range(1, STEPS + 1))
    # Equal up to the order of float sums (the gathered batch is summed in another order).
    assert [one[s] for s in one] == pytest.approx([reference[s] for s in one], rel=1e-4)


PEER_SCRIPT = '''
import sys, torch, torch.distributed as dist
from train.peers import PeerFailed, diagnose
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
try:
    dist.all_reduce(torch.ones(1))
    if rank == 1:
        raise ValueError("shard 7 has no caption.txt")
    dist.all_reduce(torch.ones(1))  # rank 0 waits here for a peer that has gone
except Exception as exc:
    peer = diagnose(exc, rank, world, checkpoint="/runs/x/checkpoints/step_00000004")
    print(f"rank {rank}: {type(peer).__name__}: {peer}" if peer else f"rank {rank}: own error stands", flush=True)
    sys.exit(1)
'''


def test_a_peer_that_raises_is_named_with_its_error(tmp_path):
    """The other failure than a kill: a rank whose own error ends it leaves a note, and the rank
    whose collective then fails names it with that error."""
    script = tmp_path / "peer.py"
    script.write_text(PEER_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert "rank 1: own error stands" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert ("rank 0: PeerFailed: rank 1 failed: ValueError: shard 7 has no caption.txt. Rank 0 stopped with it; the "
            "last checkpoint is /runs/x/checkpoints/step_00000004; rerun the same command to resume from it"
            ) in proc.stdout, proc.stdout + proc.stderr[-2000:]
