"""The demo's training: every post-pretraining run and every fine-tuning, planned, configured and run
a few at a time in processes of their own (``clipvip demo``, stage 5)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch


def _train_config(cfg, out: Path, name: str, shards: str, tokenizer_dir: str, attention: str, terms, seed: int):
    from train.configs import debug
    from train.loop import EvalSection

    base = debug()
    init = f"hf:{cfg.clip_model}" if cfg.clip_model else ""
    # The seed sets the initial weights, the shard order and shuffle, and the frame jitter.
    return dataclasses.replace(
        base, run_dir=str(out / "runs" / name), steps=cfg.pretrain_steps, seed=seed, loss_terms=tuple(terms),
        model=dataclasses.replace(base.model, flavour=cfg.flavour, init=init, tokenizer=tokenizer_dir,
                                  attention=attention,
                                  logit_scale_init=None if cfg.clip_model else cfg.logit_scale_init,
                                  temporal_init_std=0.0 if cfg.clip_model else cfg.temporal_init_std),
        data=dataclasses.replace(base.data, shards=shards, batch_size=cfg.batch_size,
                                 num_workers=cfg.num_workers, num_frames=cfg.num_frames, image_size=cfg.image_size,
                                 shuffle_buffer=64, seed=seed),
        optim=dataclasses.replace(base.optim, lr=cfg.lr),
        eval=EvalSection(every=0, at_start=False), checkpoint_every=10**9, log_every=5, tensorboard=False,
    )


def train_command(job: str, run_cfg) -> str:
    """The exact ``clipvip pretrain|finetune`` line for ``run_cfg``: the job's debug config plus every
    changed field."""
    import shlex

    from common.dicts import differences
    from common.jsonio import strict_json
    from train import configs as train_configs

    name = "debug" if job == "pretrain" else "debug_finetune"
    changed = [f"{k}={json.dumps(v) if isinstance(v, list) else v}"
               for k, _, v in differences(strict_json(train_configs.get(name)), strict_json(run_cfg))]
    return f"clipvip {job} --config {name} " + " ".join(shlex.quote(c) for c in changed)


def pretrain_runs(cfg) -> list[tuple[str, int, str]]:
    """(variant, seed, run name) of every post-pretraining run: each variant at the first seed, then the
    claim variants again at each further seed."""
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    runs = [(name, seeds[0], name) for name in cfg.variants]
    runs += [(name, seed, f"{name}_seed{seed}") for seed in seeds[1:] for name in cfg.claim_variants]
    return runs


def finetune_runs(cfg) -> list[tuple[str, int, str, str]]:
    """(variant, seed, run name, the post-pretraining run it starts from) of every fine-tuning: each
    fine-tuned variant from its run at every seed that variant ran."""
    return [(name, seed, f"{run}_finetuned", run) for name, seed, run in pretrain_runs(cfg)
            if name in cfg.finetune_variants]


def _finetune_config(cfg, out: Path, run_name: str, seed: int, init_dir: str, tokenizer_dir: str, data: dict):
    """Fine-tuning ``run_name`` on the downstream-style clips (clean descriptions, L(V-S)); the
    checkpoint is picked on the validation split, never on test."""
    from train.configs import debug_finetune
    from train.loop import EvalSection
    from train.retrieval_data import RetrievalDataConfig

    base = debug_finetune()
    split = dict(dataset="msrvtt", num_frames=cfg.num_frames, image_size=cfg.image_size, max_text_len=32,
                 batch_size=cfg.batch_size)
    return dataclasses.replace(
        base, run_dir=str(out / "runs" / run_name), steps=cfg.finetune_steps, seed=seed,
        model=dataclasses.replace(base.model, init=f"ckpt:{init_dir}", tokenizer=tokenizer_dir),
        finetune=RetrievalDataConfig(manifest=str(data["finetune"]), num_workers=cfg.num_workers, seed=seed, **split),
        optim=dataclasses.replace(base.optim, lr=cfg.finetune_lr),
        eval=EvalSection(every=max(1, cfg.finetune_steps // 3), at_start=True, select_metric="t2v_r1",
                         manifest=RetrievalDataConfig(manifest=str(data["val"]), num_workers=0, **split)),
        checkpoint_every=10**9, log_every=5, tensorboard=False,
    )


def _train_one(run_cfg, threads: int) -> dict[str, Any]:
    """One training run in a pool process on ``threads`` torch threads: on 2 cores, two runs on one
    thread each keep the cores busier than one run on two (the tiny model's ops are too small to
    split well)."""
    torch.set_num_threads(threads)
    from train.setup import run as train

    result = train(run_cfg)
    return {"run_dir": result["run_dir"], "losses": [float(x) for x in result["losses"]]}


@dataclasses.dataclass
class _Task:
    name: str
    make_config: Any  # (finished results by task name) -> TrainConfig
    after: tuple[str, ...] = ()
    label: str = ""


def _run_tasks(tasks: list[_Task], workers: int) -> dict[str, dict[str, Any]]:
    """Run training tasks ``workers`` at a time, in list order once their ``after`` tasks are done."""
    import multiprocessing
    import time
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    done: dict[str, dict[str, Any]] = {}
    pending, running, started = list(tasks), {}, {}
    threads = max(1, torch.get_num_threads() // workers)
    # spawn: a forked child would inherit this process's torch and Ray threads in an unknown state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            for task in list(pending):
                if len(running) < workers and all(a in done for a in task.after):
                    pending.remove(task)
                    running[pool.submit(_train_one, task.make_config(done), threads)] = task
                    started[task.name] = time.monotonic()
                    print(f"--- start {task.label}", flush=True)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                done[task.name] = future.result()
                print(f"--- done  {task.label} in {time.monotonic() - started[task.name]:.0f} s "
                      f"({len(done)}/{len(tasks)})", flush=True)
    return done


def train_all(cfg, out: Path, shards: str, tokenizer_dir: str, data: dict, results: dict) -> dict[str, str]:
    """Every post-pretraining run (``pretrain_runs``) and fine-tuning (``finetune_runs``),
    ``cfg.train_workers`` at a time; returns run name -> exported model folder.

    The runs start afresh: an earlier demo's run folders in ``out`` are deleted first (a training
    run resumes from a run folder that holds a checkpoint, which would make this demo's numbers
    the earlier one's).
    """
    from demo.config import VARIANTS

    shutil.rmtree(out / "runs", ignore_errors=True)
    plan = pretrain_runs(cfg)
    configs: dict[str, Any] = {}
    tasks = []
    for name, seed, run_name in plan:
        attention, terms, _ = VARIANTS[name]
        configs[run_name] = _train_config(cfg, out, run_name, shards, tokenizer_dir, attention, terms, seed)
        tasks.append(_Task(run_name, lambda done, c=configs[run_name]: c,
                           label=f"pretrain {name}, seed {seed} ({attention} attention, loss {'+'.join(terms)}, "
                                 f"{cfg.pretrain_steps} steps)"))
    for name, seed, run_name, start in finetune_runs(cfg):
        def make(done, run_name=run_name, seed=seed, start=start):
            configs[run_name] = _finetune_config(cfg, out, run_name, seed, str(_final_model_dir(done[start]["run_dir"])),
                                                 tokenizer_dir, data)
            return configs[run_name]

        # Queued right after the run it starts from, so it overlaps the remaining pretraining runs.
        at = next(i for i, t in enumerate(tasks) if t.name == start) + 2
        tasks.insert(at, _Task(run_name, make, after=(start,),
                               label=f"fine-tune {name}, seed {seed} ({cfg.finetune_steps} steps, selection on val)"))
    done = _run_tasks(tasks, cfg.train_workers)

    runs = {run_name: str(_final_model_dir(done[run_name]["run_dir"])) for _, _, run_name in plan}
    results["pretrain"] = {"runs": runs, "losses": {r: done[r]["losses"] for r in runs},
                           "terms": {r: _term_losses(done[r]["run_dir"]) for r in runs},
                           "plan": [{"variant": n, "seed": s, "run": r} for n, s, r in plan]}
    results["commands"] += [train_command("pretrain", configs[r]) for _, _, r in plan]
    results["finetune"] = {"plan": [], "runs": {}}
    for name, seed, run_name, start in finetune_runs(cfg):
        best_dir = Path(done[run_name]["run_dir"]) / "best"
        results["finetune"]["plan"].append({"variant": name, "seed": seed, "run": run_name, "from": start})
        results["finetune"]["runs"][run_name] = {
            "best_dir": str(best_dir), "selection": json.loads((best_dir / "selection.json").read_text()),
            "losses": done[run_name]["losses"], "terms": _term_losses(done[run_name]["run_dir"])}
        results["commands"].append(train_command("finetune", configs[run_name]))
    return runs


def _term_losses(run_dir: str) -> dict[str, tuple[list[int], list[float]]]:
    """Each loss term's logged values (``<term>_loss`` rows of metrics.jsonl) against step."""
    from train.log import read_metrics

    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    terms = sorted({k for r in rows for k in r if k.endswith("_loss")})
    return {t.removesuffix("_loss"): ([r["step"] for r in rows if t in r], [r[t] for r in rows if t in r])
            for t in terms}


def _final_model_dir(run_dir: str) -> Path:
    from train import checkpoint as ckpt

    last = ckpt.latest(Path(run_dir) / "checkpoints")
    if last is None:
        raise RuntimeError(f"training run {run_dir} saved no checkpoint")
    return last / "model"
