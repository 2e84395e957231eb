"""train/checkpoint.py and the resume path of train/setup.py: the training state is JSON plus
safetensors (never a pickle, so a crafted checkpoint cannot run code), a resume whose settings
would change the numbers is refused unless meant, replayed metrics rows are dropped and the JSON
the run writes is strict.

Run: .venv/bin/python -m pytest tests/train/test_checkpoint.py -q
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from common.jsonio import config_json
from train import checkpoint as ckpt
from train.optim import OptimConfig, warmup_cosine
from train.loop import TrainConfig
from train.setup import run


def _strict_json(path: Path):
    """Parse as strict JSON: NaN and +-Infinity are refused."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


class _Exploit:
    """Unpickling this creates ``marker``: stands for any code a crafted pickle runs on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_state_round_trips_through_json_and_safetensors_exactly(tmp_path):
    shared = torch.randn(3, 4)
    state = {
        "model": {"w": shared, "tied": shared, "half": torch.randn(2, dtype=torch.bfloat16)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(3, 4)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98), "foreach": None, "params": [0]}]},
        "step": 2, "best": {"value": float("-inf"), "step": 0}, "odd": {"__tuple__": [1]},
        "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
    }
    folder = ckpt.save(tmp_path, 2, state)
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"]
    back = ckpt.load(folder)
    assert torch.equal(back["model"]["w"], shared) and torch.equal(back["model"]["tied"], shared)
    assert back["model"]["half"].dtype == torch.bfloat16 and torch.equal(back["model"]["half"], state["model"]["half"])
    assert list(back["optimizer"]["state"]) == [0]  # int keys stay ints (the optimizer maps them to params)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)
    assert back["best"]["value"] == -math.inf and back["odd"] == {"__tuple__": [1]}
    _strict_json(folder / "state.json")
    ckpt.set_rng_state(back["rng"][0])
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(state["rng"][0])
    assert draws == (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_loading_a_checkpoint_unpickles_nothing(tmp_path, monkeypatch):
    folder = ckpt.save(tmp_path, 1, {"x": torch.ones(2), "step": 1})

    def no_pickle(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    assert torch.equal(ckpt.load(folder)["x"], torch.ones(2))


def test_a_crafted_pickle_state_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "checkpoints" / "step_00000002"
    folder.mkdir(parents=True)
    torch.save({"step": 2, "payload": _Exploit(marker)}, folder / "state.pt")
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002\n")
    last = ckpt.latest(tmp_path / "checkpoints")
    assert last == folder  # found, so it is refused by name rather than silently trained over
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.load(last)
    assert not marker.exists()


def test_a_crafted_state_json_cannot_reach_beyond_its_tensors(tmp_path):
    folder = ckpt.save(tmp_path, 1, {"x": torch.ones(2)})
    doc = _strict_json(folder / "state.json")
    doc["state"]["x"] = {"__tensor__": "../../etc/passwd"}
    (folder / "state.json").write_text(json.dumps(doc))
    with pytest.raises(ckpt.CheckpointError, match="lacks"):
        ckpt.load(folder)
    (folder / "state.json").write_text('{"format": "clipvip-train-state", "version": 1, "state": NaN}')
    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        ckpt.load(folder)


def test_changed_settings_names_each_difference_and_ignores_reporting_ones():
    a = dataclasses.asdict(TrainConfig())
    b = dataclasses.asdict(dataclasses.replace(TrainConfig(), steps=9, run_dir="elsewhere", log_every=1,
                                               optim=OptimConfig(lr=1e-4)))
    assert ckpt.changed_settings(a, b) == ["optim.lr: 5e-06 -> 0.0001", "steps: 0 -> 9"]


def test_a_checkpoint_older_than_a_setting_resumes_with_the_behaviour_it_had():
    """Checkpoints written before ``gather_grad`` existed summed the gathered gradients: they resume
    exactly with gather_grad=sum and name the change under the new default."""
    import dataclasses

    from train.loop import TrainConfig

    now = dataclasses.asdict(TrainConfig())
    saved = {k: v for k, v in now.items() if k != "gather_grad"}
    saved["model"] = {k: v for k, v in saved["model"].items() if k != "clip_config"}
    assert ckpt.changed_settings(saved, now) == ["gather_grad: 'sum' -> 'mean'"]
    assert ckpt.changed_settings(saved, dataclasses.asdict(TrainConfig(gather_grad="sum"))) == []


def test_resuming_drops_the_metrics_rows_of_replayed_steps(tmp_path):
    from train.log import RunLogger

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "kind": k, "loss": 1.0}) + "\n"
                                                    for s in range(0, 6) for k in ("train", "val")))
    RunLogger(tmp_path, tensorboard=False, keep_until=3).close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [0, 1, 2, 3] and len(rows) == 8
    RunLogger(tmp_path, tensorboard=False, keep_until=-1).close()  # a fresh start keeps nothing
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_strict_json_writes_null_for_non_finite_numbers():
    from train.log import strict_dumps

    text = strict_dumps({"best": {"value": float("-inf")}, "r": [float("nan"), np.float32(0.5), torch.tensor(2.0)],
                         "t": (1, math.inf)})
    assert json.loads(text) == {"best": {"value": None}, "r": [None, 0.5, 2.0], "t": [1, None]}
    assert "Infinity" not in text and "NaN" not in text


# ---- through the trainer ------------------------------------------------------------------------


def _train_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


def test_resume_refuses_changed_settings_then_replays_without_duplicate_rows(tiny_pretrain, tmp_path,
                                                                           preempt_training):
    restore = preempt_training(4)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_pretrain(tmp_path))
    restore()
    assert _train_steps(tmp_path) == [1, 2, 3]  # the checkpoint is at step 2: step 3 will run again
    before = {name: (tmp_path / name).read_text() for name in ("config.json", "metrics.jsonl")}
    assert before["config.json"] == config_json(tiny_pretrain(tmp_path))  # the text every run writes

    changed = tiny_pretrain(tmp_path, resume=True, steps=8, optim=OptimConfig(lr=5e-4, warmup_ratio=0.2),
                        data=dataclasses.replace(tiny_pretrain(tmp_path).data, batch_size=2))
    with pytest.raises(ckpt.CheckpointError) as err:
        run(changed)
    for difference in ("data.batch_size: 4 -> 2", "optim.lr: 0.001 -> 0.0005", "steps: 6 -> 8", "--resume-changed"):
        assert difference in str(err.value)
    assert {name: (tmp_path / name).read_text() for name in before} == before  # refused before writing

    run(tiny_pretrain(tmp_path, resume=True))
    assert _train_steps(tmp_path) == [1, 2, 3, 4, 5, 6]  # step 3 once, from the resumed run
    final = _strict_json(tmp_path / "final_metrics.json")
    assert final["best"] == {"value": None, "step": 0}  # no evaluation: -inf in memory, null on disk


def test_resume_changed_continues_with_the_new_lr_and_step_count(tiny_pretrain, tmp_path):
    run(tiny_pretrain(tmp_path, steps=4))
    longer = tiny_pretrain(tmp_path, steps=6, resume=True, optim=OptimConfig(lr=5e-4, warmup_ratio=0.2))
    with pytest.raises(ckpt.CheckpointError, match="steps: 4 -> 6"):
        run(longer)
    result = run(dataclasses.replace(longer, resume_changed=True))
    assert len(result["losses"]) == 2  # steps 5 and 6 after the step-4 checkpoint
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    factor = warmup_cosine(6, 0.2)
    for step in (5, 6):  # the new lr on the new 6-step schedule, not the checkpoint's
        assert rows[step]["lr"] == pytest.approx(5e-4 * factor(step), rel=1e-9)
