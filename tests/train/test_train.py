"""train/loop.py, optim.py, checkpoint.py: optimizer groups and schedule, kill-and-resume gives the
same losses, 2-process gloo DDP equals one process on the combined batch, non-finite steps stop.

Run: .venv/bin/python -m pytest tests/train/test_train.py -q
"""

from __future__ import annotations

import logging
import math
import os
import socket

import pytest
import torch

from model.clip_vip import CLIPViP, get_config
from train.data import ShardDataConfig, ShardLoader
from model.loss import OCLLoss
from train.optim import OptimConfig, build_optimizer, param_groups, warmup_cosine
from train.loop import FiniteGuard, NonFiniteError, Runtime, TrainConfig, train_step
from train.setup import run


def tiny_model(tok) -> CLIPViP:
    return CLIPViP(get_config("debug", vocab_size=len(tok), eot_token_id=tok.eos_token_id))


def test_official_weight_decay_groups_decay_hf_layer_norm_weights(synth_tokenizer):
    groups = {g["group"]: g for g in param_groups(tiny_model(synth_tokenizer), OptimConfig(weight_decay=0.05))}
    decay, no_decay = set(groups["decay"]["names"]), set(groups["no_decay"]["names"])
    assert "logit_scale" in no_decay and "text_model.encoder.layers.0.layer_norm1.bias" in no_decay
    # HF norm names never contain 'LayerNorm', so their weights ARE decayed, as in the official runs.
    assert "text_model.encoder.layers.0.layer_norm1.weight" in decay
    assert "vision_model.pre_layrnorm.weight" in decay
    assert "vision_model.embeddings.temporal_embedding" in decay and "vision_model.embeddings.added_cls" in decay
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.05
    opt = build_optimizer(tiny_model(synth_tokenizer), OptimConfig())
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    mul = param_groups(tiny_model(synth_tokenizer), OptimConfig(lr=1e-6, lr_mul=10, lr_mul_prefix="logit_scale"))
    assert [g["lr"] for g in mul if g["names"] == ["logit_scale"]] == [pytest.approx(1e-5)]


def test_warmup_then_cosine():
    f = warmup_cosine(1000, 0.01)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == pytest.approx(1.0)
    assert f(505) == pytest.approx(0.5, abs=1e-3)
    assert f(999) < 1e-4 and f(2000) == 1e-8


def test_kill_after_step_k_and_resume_gives_the_same_losses(tiny_pretrain, tmp_path, preempt_training):
    # Loader worker processes: their positions must be restored too.
    full = run(tiny_pretrain(tmp_path / "full", num_workers=2))["losses"]
    assert len(full) == 6

    restore = preempt_training(4)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_pretrain(tmp_path / "killed", num_workers=2))
    restore()
    # The tokenizer is trained per run dir; reuse the uninterrupted run's so ids match exactly.
    resumed = run(tiny_pretrain(tmp_path / "killed", num_workers=2, resume=True))
    assert len(resumed["losses"]) == 4  # steps 3..6 after the step-2 checkpoint
    assert resumed["losses"] == pytest.approx(full[2:], rel=1e-6, abs=1e-6)


def _fixed_batch(shards, tok, n=4) -> dict:
    cfg = ShardDataConfig(shards=shards, batch_size=n, num_workers=0, num_frames=4, image_size=32, max_text_len=16,
                          shuffle_buffer=0)
    return next(ShardLoader(cfg, tok))


def _ddp_worker(rank: int, world: int, port: int, path: str, out: str, gather_grad: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    blob = torch.load(path, weights_only=False)
    model = blob["model"]
    half = {k: (v[rank * 2:(rank + 1) * 2] if torch.is_tensor(v) else v) for k, v in blob["batch"].items()}
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    rt = Runtime(rank, world, torch.device("cpu"), "fp32", 32)
    scalars = train_step(ddp, model, OCLLoss(gather_grad=gather_grad), half, opt, step=1, grad_clip=0.0, rt=rt)
    if rank == 0:
        torch.save({"loss": scalars["loss"], "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                    "params": {n: p.detach().clone() for n, p in model.named_parameters()}}, out)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("gather_grad", ["sum", "mean"])
def test_two_gloo_processes_against_one_process_on_the_combined_batch(synth_shards, synth_tokenizer, tmp_path,
                                                                      gather_grad):
    """"sum": the two ranks' step is one process's step on both halves. "mean" (the official code's
    Horovod): the same, with every tower gradient halved and logit_scale's (not gathered) unchanged."""
    torch.manual_seed(0)
    model = tiny_model(synth_tokenizer)
    batch = _fixed_batch(synth_shards, synth_tokenizer)
    torch.save({"model": model, "batch": batch}, tmp_path / "in.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"),
                                                   gather_grad), nprocs=2, join=True)
    two = torch.load(tmp_path / "out.pt")
    single = torch.load(tmp_path / "in.pt", weights_only=False)["model"]
    opt = build_optimizer(single, OptimConfig(lr=1e-3))
    one = train_step(single, single, OCLLoss(), batch, opt, step=1, grad_clip=0.0,
                     rt=Runtime(0, 1, torch.device("cpu"), "fp32", 32))
    assert float(two["loss"]) == pytest.approx(float(one["loss"]), rel=1e-5)
    # Equal up to float summation order, measured against the largest gradient: some gradients are
    # zero in exact arithmetic (attention key biases) and hold only rounding noise.
    scale = max(float(p.grad.abs().max()) for p in single.parameters())
    for name, p in single.named_parameters():
        expected = p.grad if gather_grad == "sum" or name == "logit_scale" else p.grad / 2
        torch.testing.assert_close(two["grads"][name], expected, rtol=1e-3, atol=1e-3 * scale)
        if gather_grad == "sum":
            # Adam's first step is ~lr * sign(grad): compare updates only where the gradient is not noise.
            real = p.grad.abs() > 1e-4 * scale
            torch.testing.assert_close(two["params"][name][real], p.detach()[real], rtol=1e-4, atol=1e-5)
    assert float(single.logit_scale.grad.abs()) > 1e-3 * scale  # the unscaled one is really compared


def _inf_gradient(model) -> None:
    """Finite weights and loss, a non-finite gradient: the backward of one projection yields inf."""
    model.text_projection.weight.register_hook(lambda g: torch.full_like(g, math.inf))


@pytest.mark.parametrize("where", ["loss", "gradient"])
@pytest.mark.parametrize("guarded", [False, True])
def test_a_non_finite_step_never_reaches_the_weights(synth_shards, synth_tokenizer, where, guarded):
    model = tiny_model(synth_tokenizer)
    batch = _fixed_batch(synth_shards, synth_tokenizer)
    if where == "loss":
        with torch.no_grad():
            model.text_projection.weight[0, 0] = math.inf
    else:
        _inf_gradient(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimConfig())
    rt = Runtime(0, 1, torch.device("cpu"), "fp32", 32)
    expected = "non-finite loss" if where == "loss" else "non-finite gradient norm"
    if guarded:  # the loop's path: the fused optimizer skips on the device, the guard reports later
        guard = FiniteGuard(rt.device)
        scalars = train_step(model, model, OCLLoss(), batch, opt, step=7, grad_clip=1.0, rt=rt, guard=guard)
        assert bool(torch.isfinite(scalars["loss"])) == (where == "gradient")  # the branch under test
        scalars = train_step(model, model, OCLLoss(), batch, opt, step=8, grad_clip=1.0, rt=rt, guard=guard)
        with pytest.raises(NonFiniteError, match=rf"step 7: {expected}; 2 optimizer step\(s\) skipped"):
            guard.check()
    else:
        with pytest.raises(NonFiniteError, match=rf"step 7: {expected}"):
            train_step(model, model, OCLLoss(), batch, opt, step=7, grad_clip=1.0, rt=rt)
    for n, p in model.named_parameters():
        assert torch.equal(before[n], p.detach()), n  # inf stays inf, everything else untouched
    assert all(int(st["step"]) == 0 for st in opt.state.values())  # no step was counted either


def test_the_guard_is_silent_on_finite_steps_and_updates_happen(synth_shards, synth_tokenizer):
    model = tiny_model(synth_tokenizer)
    batch = _fixed_batch(synth_shards, synth_tokenizer)
    before = model.text_projection.weight.detach().clone()
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    guard = FiniteGuard(torch.device("cpu"))
    train_step(model, model, OCLLoss(), batch, opt, step=1, grad_clip=1.0,
               rt=Runtime(0, 1, torch.device("cpu"), "fp32", 32), guard=guard)
    guard.check()
    assert not torch.equal(before, model.text_projection.weight.detach())


class HostReads:
    """Records every Python-level read of a tensor's value to the host (``item``, ``float()``,
    ``bool()``, ``tolist``, ...) while active: on a GPU each is a device sync."""

    NAMES = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "numpy")

    def __init__(self, monkeypatch):
        self.monkeypatch, self.calls = monkeypatch, []

    def __enter__(self):
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)

            def spy(tensor, *args, _real=real, _name=name, **kwargs):
                self.calls.append(_name)
                return _real(tensor, *args, **kwargs)

            self.monkeypatch.setattr(torch.Tensor, name, spy)
        return self

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def test_a_guarded_step_reads_nothing_back_to_the_host(synth_shards, synth_tokenizer, monkeypatch):
    """The CPU stand-in for the gpu test below, run by default: a guarded step (the loop's path on a
    non-logging step) makes no host read from Python, while the unguarded path does (its finiteness
    check), which shows the spy sees them."""
    model = tiny_model(synth_tokenizer)
    batch = _fixed_batch(synth_shards, synth_tokenizer)
    opt = build_optimizer(model, OptimConfig())
    rt, guard = Runtime(0, 1, torch.device("cpu"), "fp32", 32), FiniteGuard(torch.device("cpu"))
    train_step(model, model, OCLLoss(), batch, opt, step=1, grad_clip=1.0, rt=rt, guard=guard)
    with HostReads(monkeypatch) as guarded:
        train_step(model, model, OCLLoss(), batch, opt, step=2, grad_clip=1.0, rt=rt, guard=guard)
    assert guarded.calls == []
    with HostReads(monkeypatch) as unguarded:
        train_step(model, model, OCLLoss(), batch, opt, step=3, grad_clip=1.0, rt=rt)
    assert unguarded.calls
    guard.check()


@pytest.mark.gpu
def test_no_host_sync_on_a_guarded_cuda_step(synth_shards, synth_tokenizer):
    """Under CUDA's sync debug mode "error", any device-to-host wait in a non-logging step raises."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda")
    model = tiny_model(synth_tokenizer).to(dev)
    batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in _fixed_batch(synth_shards, synth_tokenizer).items()}
    opt = build_optimizer(model, OptimConfig())
    rt, guard = Runtime(0, 1, dev, "bf16", 32), FiniteGuard(dev)
    train_step(model, model, OCLLoss(), batch, opt, step=1, grad_clip=1.0, rt=rt, guard=guard)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (2, 3):
            train_step(model, model, OCLLoss(), batch, opt, step=step, grad_clip=1.0, rt=rt, guard=guard)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    guard.check()


def _rows(run_dir) -> list[dict]:
    """The complete rows of metrics.jsonl (a row being written by a live or killed run is left out)."""
    import json

    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _train_losses(run_dir) -> dict[int, float]:
    """Step -> loss; a resumed run's rows come later and win."""
    return {r["step"]: r["loss"] for r in _rows(run_dir) if r["kind"] == "train"}


def test_sigkill_of_the_training_process_then_resume_gives_the_same_losses(synth_shards, tmp_path):
    """A real preemption: SIGKILL to the whole process group (trainer and loader workers) mid-run."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from jobs.pretrain import main

    def argv(run_dir):
        return ["--config", "debug", f"run_dir={run_dir}", "steps=24", "device=cpu", "precision=fp32",
                f"data.shards={synth_shards}", "data.batch_size=4", "data.num_frames=4", "data.max_text_len=16",
                "data.shuffle_buffer=4", "eval.every=0", "eval.at_start=false", "checkpoint_every=4", "log_every=1",
                "tensorboard=false", "--log-level", "WARNING"]

    assert main(argv(tmp_path / "full")) == 0
    full = _train_losses(tmp_path / "full")
    assert sorted(full) == list(range(1, 25))

    killed = tmp_path / "killed"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.pretrain", *argv(killed)], cwd=root, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (killed / "checkpoints" / "latest").is_file() and max(_train_losses(killed), default=0) >= 6:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    done_before_kill = max(_train_losses(killed))
    checkpoint_step = int((killed / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 4 <= checkpoint_step <= done_before_kill < 24
    kept = [r for r in _rows(killed) if r["step"] <= checkpoint_step]

    assert main([*argv(killed), "--resume"]) == 0
    rows = _rows(killed)
    assert rows[:len(kept)] == kept  # rows up to the checkpoint stay; those of replayed steps are dropped
    new_rows = rows[len(kept):]
    assert [r["step"] for r in new_rows] == list(range(checkpoint_step + 1, 25))  # resumed, not restarted
    resumed = _train_losses(killed)
    assert sorted(resumed) == list(range(1, 25))
    assert [resumed[s] for s in range(1, 25)] == pytest.approx([full[s] for s in range(1, 25)], rel=1e-6, abs=1e-6)


def test_a_half_written_metrics_row_is_cut_before_appending(tmp_path):
    import json

    from train.log import RunLogger, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 2.0}\n{"step": 2, "kind": "tr')
    log = RunLogger(tmp_path, tensorboard=False)
    log.log(2, {"loss": 1.5})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.0), (2, 1.5)]
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_settings_the_task_does_not_read_are_named(caplog):
    from train.data import ShardDataConfig
    from train.retrieval_data import RetrievalDataConfig
    from train.tasks import get_task, warn_ignored

    finetune = TrainConfig(task="finetune", loss_terms=("vsc",), data=ShardDataConfig(shards="s-{0..3}.tar"),
                           finetune=RetrievalDataConfig(manifest="train.jsonl"))
    with caplog.at_level(logging.WARNING, logger="train.tasks"):
        ignored = warn_ignored(finetune)
    assert ignored == ["data.shards", "loss_terms (fine-tuning always trains the video-text loss 'vs')"]
    assert "a finetune run ignores these settings: data.shards, loss_terms" in caplog.text
    assert get_task(finetune).loss_terms(finetune) == ("vs",)
    pretrain = TrainConfig(task="pretrain", data=ShardDataConfig(shards="s.tar"),
                           finetune=RetrievalDataConfig(manifest="train.jsonl", batch_size=7))
    assert warn_ignored(pretrain) == ["finetune.manifest", "finetune.batch_size"]
    assert warn_ignored(TrainConfig(task="pretrain", data=ShardDataConfig(shards="s.tar"))) == []
    with pytest.raises(ValueError, match="task='distill': choose one of"):
        get_task(TrainConfig(task="distill"))
