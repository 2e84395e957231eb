"""The stages of ``clipvip demo`` (see ``jobs/demo.py``); each calls the library that does the work."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("clipvip.demo")

TEST_FORMAT = dict(vary_format=False)  # 224x224, 6 fps, 4 s: 24 frames, one keyframe every 12


def weights_notes(cfg) -> list[str]:
    notes = []
    if not cfg.clip_model:
        notes.append("CLIP-ViP starts from a tiny randomly initialised model (no CLIP weights given): every number "
                     "below measures what that tiny model learns from a few hundred synthetic clips in minutes, "
                     "not CLIP-ViP's real accuracy. Set clip_model to a CLIP folder or hub id to use real weights.")
    if not cfg.caption_model:
        notes.append("Captions come from a tiny OFA (the real architecture at 32 channels and 64 px) that starts from "
                     "random weights and is fine-tuned here, with OFA's caption recipe, on labelled frames of other "
                     "synthetic clips: it names colour and shape, which one frame shows, and never the direction of "
                     "motion. Set caption_model to 'ofa:<checkpoint>' to start from a real OFA instead.")
    elif cfg.caption_model.startswith("ofa:") and cfg.caption_steps > 0:
        notes.append(f"Captions come from {cfg.caption_model} fine-tuned here with OFA's caption recipe "
                     "(lr 1e-5, frozen token embeddings) on labelled frames of other synthetic clips.")
    return notes


def _rows(manifest: Path) -> list[dict]:
    from common.jsonl import read_jsonl

    return read_jsonl(manifest)


def _retrieval_manifest(rows: list[dict], path: Path) -> Path:
    """The official one-row-per-video layout that ``train.retrieval_data`` reads."""
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"video": r["path"], "text": r["caption_gt"], "key": r["key"]}) + "\n")
    return path


def synthesise(cfg, out: Path, results: dict) -> dict[str, Any]:
    from demo.captioner import write_labelled
    from demo.synth import synthesize

    data = out / "data"
    palette = dict(colors=tuple(cfg.colors), shapes=tuple(cfg.shapes), workers=cfg.synth_workers)
    pre = synthesize(data / "pretrain", cfg.n_pretrain, seed=cfg.seed, prefix="pre", span_fraction=0.05,
                     subtitles=cfg.subtitles, progress=True, **palette)
    # The downstream-style sets have clean descriptions (like MSR-VTT captions) and one format.
    n_down = cfg.n_finetune + cfg.n_val + cfg.n_test
    down = synthesize(data / "downstream", n_down, seed=cfg.seed + 1000, prefix="down", progress=True,
                      **TEST_FORMAT, **palette)
    rows = _rows(down)
    ft, val, test = rows[:cfg.n_finetune], rows[cfg.n_finetune:cfg.n_finetune + cfg.n_val], rows[-cfg.n_test:]
    # The captioner's labelled clips: other clips again (own seed and keys), used only for their
    # middle frames, so one second each is enough.
    n_cap = cfg.n_caption_train + cfg.n_caption_heldout
    cap = synthesize(data / "captioner", n_cap, seed=cfg.seed + 2000, prefix="cap", seconds=1.0, progress=True,
                     **palette)
    cap_train, cap_heldout = write_labelled(_rows(cap), data, cfg.n_caption_train)
    paths = {
        "pretrain_manifest": pre,
        "finetune": _retrieval_manifest(ft, data / "finetune.jsonl"),
        "val": _retrieval_manifest(val, data / "val.jsonl"),
        "test": _retrieval_manifest(test, data / "test.jsonl"),
        # Every downstream-style description: the NMI report's downstream corpus.
        "descriptions": _retrieval_manifest(rows, data / "descriptions.jsonl"),
        "test_rows": test,
        "captioner_train": cap_train,
        "captioner_heldout": cap_heldout,
    }
    results["data"] = {"pretrain_clips": cfg.n_pretrain, "finetune_clips": len(ft), "val_clips": len(val),
                       "test_clips": len(test), "captioner_train_clips": cfg.n_caption_train,
                       "captioner_heldout_clips": cfg.n_caption_heldout, "subtitles": cfg.subtitles}
    return paths


def train_captioner(cfg, out: Path, data: dict, results: dict) -> str:
    """The caption model curation uses: the demo's OFA fine-tuned on labelled frames (``demo/captioner.py``),
    or ``caption_model`` as given when it cannot or should not be fine-tuned."""
    from demo.captioner import finetune_captioner

    if cfg.caption_model and (cfg.caption_steps <= 0 or not cfg.caption_model.startswith("ofa:")):
        results["captioner"] = {"model": cfg.caption_model, "steps": 0}
        return cfg.caption_model
    return finetune_captioner(cfg, out, data, results)


def curate(cfg, out: Path, data: dict, caption_model: str, results: dict) -> str:
    from caption.protocol import DecodeSettings
    from video.frames import FrameConfig
    from pipeline.manifest import ManifestConfig
    from pipeline.run import CurateConfig, RayConfig, run
    from pipeline.caption_service import CaptionConfig
    from pipeline.writer import ShardWriterConfig

    shard_dir = out / "shards"
    per_shard = max(8, -(-cfg.n_pretrain // 8))
    curate_cfg = CurateConfig(
        manifest=ManifestConfig(path=str(data["pretrain_manifest"])),
        frames=FrameConfig(short_side=cfg.short_side),
        caption=CaptionConfig(model=caption_model, batch_size=8, decode=DecodeSettings()),
        writer=ShardWriterConfig(output_dir=str(shard_dir), prefix="train", samples_per_shard=per_shard),
        ray=RayConfig(num_cpus=cfg.ray_num_cpus),
        progress_every_s=5.0,
    )
    summary = run(curate_cfg)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    results["curate"] = {"summary": summary, "caption_model": caption_model}
    results["commands"].append(f"clipvip curate --set manifest.path={data['pretrain_manifest']} "
                               f"--set caption.model={caption_model} --set writer.output_dir={shard_dir} "
                               f"--set writer.prefix=train --set writer.samples_per_shard={per_shard} "
                               f"--set frames.short_side={cfg.short_side}")
    # The brace pattern every reader takes (the loader, the NMI corpora, the tokenizer texts).
    pattern = str(shard_dir / f"train-{{000000..{summary['shards'] - 1:06d}}}.tar")
    from demo.captioner import example_grid, pretraining_caption_accuracy, shard_samples, subtitle_mentions

    samples = shard_samples(pattern)
    results["curate"]["caption_accuracy"] = pretraining_caption_accuracy(samples)
    results["curate"]["subtitle_mentions"] = subtitle_mentions(samples)
    (out / "report").mkdir(parents=True, exist_ok=True)
    results["curate"]["examples_png"] = str(example_grid(samples, out / "report" / "caption_examples.png"))
    return pattern


def nmi_report(cfg, out: Path, shards: str, data: dict, results: dict) -> None:
    from analysis.report import NMIConfig, run
    from analysis.render import write_report

    nmi_cfg = NMIConfig(
        pretrain=(f"subtitles={shards}:subtitle", f"captions={shards}:caption"),
        downstream=(f"descriptions={data['descriptions']}:text",),
        # Three samples: K-means on a few hundred sentences can land on another split, and the spread shows it.
        n=min(cfg.nmi_n, cfg.n_finetune + cfg.n_val + cfg.n_test, cfg.n_pretrain), seeds=(0, 1, 2), cache_dir=None,
        out_dir=str(out / "nmi"), project_points=200,
    )
    report = run(nmi_cfg)
    written = write_report(report, nmi_cfg.out_dir)
    results["nmi"] = {"out_dir": nmi_cfg.out_dir, "files": {k: str(v) for k, v in written.items()},
                      "vs_descriptions": {name: report.pair(name, "descriptions").nmi.mean
                                          for name in ("subtitles", "captions")},
                      "vs_descriptions_per_seed": {name: list(report.pair(name, "descriptions").nmi.values)
                                                   for name in ("subtitles", "captions")},
                      "markdown": (Path(nmi_cfg.out_dir) / "report.md").read_text()
                      if (Path(nmi_cfg.out_dir) / "report.md").is_file() else ""}
    results["commands"].append("clipvip nmi --pretrain " + " --pretrain ".join(nmi_cfg.pretrain) + " --downstream "
                               + " --downstream ".join(nmi_cfg.downstream) + f" --n {nmi_cfg.n} --out {nmi_cfg.out_dir}")


def tokenizer(cfg, out: Path, shards: str, data: dict) -> str:
    """The CLIP checkpoint's tokenizer, or a small CLIP-format BPE learnt from the demo's own text."""
    if cfg.clip_model:
        return cfg.clip_model
    from model.tokenizer import train_clip_bpe
    from train.data import shard_texts

    texts = shard_texts(shards)  # subtitles and captions
    for name in ("finetune", "val"):
        texts += [r["text"] for r in _rows(data[name])]
    return str(train_clip_bpe(texts, out / "models" / "tokenizer", num_merges=300))


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


def _finetune_config(cfg, out: Path, name: str, init_dir: str, tokenizer_dir: str, data: dict):
    """Fine-tuning ``name`` on the downstream-style clips (clean descriptions, L(V-S)); the checkpoint
    is picked on the validation split, never on test."""
    from train.configs import debug_finetune
    from train.loop import EvalSection
    from train.retrieval_data import RetrievalDataConfig

    base = debug_finetune()
    split = dict(dataset="msrvtt", num_frames=cfg.num_frames, image_size=cfg.image_size, max_text_len=32,
                 batch_size=cfg.batch_size)
    return dataclasses.replace(
        base, run_dir=str(out / "runs" / f"{name}_finetuned"), steps=cfg.finetune_steps,
        seed=cfg.seed,
        model=dataclasses.replace(base.model, init=f"ckpt:{init_dir}", tokenizer=tokenizer_dir),
        finetune=RetrievalDataConfig(manifest=str(data["finetune"]), num_workers=cfg.num_workers, **split),
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
    """Every post-pretraining run (``pretrain_runs``) and the fine-tuning of ``cfg.finetune_variants``,
    ``cfg.train_workers`` at a time; returns run name -> exported model folder."""
    from demo.config import VARIANTS

    plan = pretrain_runs(cfg)
    configs: dict[str, Any] = {}
    tasks = []
    for name, seed, run_name in plan:
        attention, terms, _ = VARIANTS[name]
        configs[run_name] = _train_config(cfg, out, run_name, shards, tokenizer_dir, attention, terms, seed)
        tasks.append(_Task(run_name, lambda done, c=configs[run_name]: c,
                           label=f"pretrain {name}, seed {seed} ({attention} attention, loss {'+'.join(terms)}, "
                                 f"{cfg.pretrain_steps} steps)"))
    for name in cfg.finetune_variants:
        def make(done, name=name):
            configs[f"{name}_finetuned"] = _finetune_config(cfg, out, name, str(_final_model_dir(done[name]["run_dir"])),
                                                            tokenizer_dir, data)
            return configs[f"{name}_finetuned"]

        # Queued right after the run it starts from, so it overlaps the remaining pretraining runs.
        at = next(i for i, t in enumerate(tasks) if t.name == name) + 2
        tasks.insert(at, _Task(f"{name}_finetuned", make, after=(name,),
                               label=f"fine-tune {name} ({cfg.finetune_steps} steps, selection on val)"))
    done = _run_tasks(tasks, cfg.train_workers)

    runs = {run_name: str(_final_model_dir(done[run_name]["run_dir"])) for _, _, run_name in plan}
    results["pretrain"] = {"runs": runs, "losses": {r: done[r]["losses"] for r in runs},
                           "plan": [{"variant": n, "seed": s, "run": r} for n, s, r in plan]}
    results["commands"] += [train_command("pretrain", configs[r]) for _, _, r in plan]
    results["finetune"] = {}
    for name in cfg.finetune_variants:
        best_dir = Path(done[f"{name}_finetuned"]["run_dir"]) / "best"
        results["finetune"][name] = {"best_dir": str(best_dir),
                                     "selection": json.loads((best_dir / "selection.json").read_text()),
                                     "losses": done[f"{name}_finetuned"]["losses"]}
        results["commands"].append(train_command("finetune", configs[f"{name}_finetuned"]))
    return runs


def _final_model_dir(run_dir: str) -> Path:
    from train import checkpoint as ckpt

    last = ckpt.latest(Path(run_dir) / "checkpoints")
    if last is None:
        raise RuntimeError(f"training run {run_dir} saved no checkpoint")
    return last / "model"


def _test_videos(cfg, data: dict) -> tuple[torch.Tensor, list[str]]:
    """The held-out clips decoded once, as the library's evaluation decodes them (uniform frames), for
    every model, with their descriptions."""
    from train.retrieval_data import RetrievalEvalDataset, load_manifest

    test = RetrievalEvalDataset(load_manifest(str(data["test"]), "msrvtt"), cfg.num_frames, cfg.image_size)
    items = [test[i] for i in range(len(test))]
    return torch.stack([it["video"] for it in items]), [it["texts"][0] for it in items]


def _encode(model, tok, videos: torch.Tensor, texts: list[str], max_len: int, batch: int = 32):
    """Text and video features of (video i, text i) pairs through the library's encode-once evaluation."""
    from train.evaluate import encode_eval_set

    batches = ({"video": videos[i:i + batch], "texts": [[t] for t in texts[i:i + batch]]}
               for i in range(0, len(videos), batch))
    text_feats, video_feats, _ = encode_eval_set(model, batches, tok, max_text_len=max_len,
                                                 image_size=videos.shape[-1], device=torch.device("cpu"),
                                                 text_batch_size=batch)
    return text_feats, video_feats


def top1_attributes(text_feats: np.ndarray, video_feats: np.ndarray, rows: list[dict]) -> dict[str, float]:
    """For each test description, whether the top-ranked video has the right colour, shape and direction.

    Splits R@1 into what the model tells apart: a caption-trained model can only get colour and shape
    from its texts, the direction has to come from the subtitles (or is at chance, about 1 in 4).
    """
    top = (text_feats @ video_feats.T).argmax(1)
    return {field: float(np.mean([rows[j][field] == rows[i][field] for i, j in enumerate(top)]))
            for field in ("color", "shape", "direction")}


def score_model(cfg, model_dir: str, tokenizer_dir: str, videos: torch.Tensor, texts: list[str],
                rows: list[dict]) -> dict[str, Any]:
    """Retrieval (plain and DSL) on the test clips, the direction probe on them and their reversals, and
    which attributes the top-1 video gets right."""
    from model.convert import load_checkpoint
    from demo.direction import build_pairs, score_pairs
    from model.metrics import evaluate_all
    from model.tokenizer import load_tokenizer

    model = load_checkpoint(model_dir)
    tok = load_tokenizer(tokenizer_dir)
    # The pair set is the test clips followed by their reversals: its first half is the plain test set.
    pt, pv = _encode(model, tok, *build_pairs(videos, texts), max_len=32)
    text_feats, video_feats = pt[:len(texts)], pv[:len(texts)]
    metrics = evaluate_all(text_feats, video_feats)
    direction = score_pairs(pv, pt)
    np.savez(Path(model_dir).parent / "test_features.npz", text=text_feats, video=video_feats,
             pair_text=pt, pair_video=pv)
    return {"retrieval": metrics, "direction": dataclasses.asdict(direction),
            "top1": top1_attributes(text_feats, video_feats, rows),
            "features": str(Path(model_dir).parent / "test_features.npz")}


def evaluate_variants(cfg, out: Path, runs: dict[str, str], tokenizer_dir: str, data: dict, results: dict) -> None:
    """Score every run; ``evaluation`` holds the first seed's run of each variant, ``seeds`` every claim
    variant's runs in seed order, and each fine-tuned variant gets its ``evaluation``."""
    videos, texts = _test_videos(cfg, data)
    data["test_videos"], data["test_texts"] = videos, texts
    scores = {name: score_model(cfg, d, tokenizer_dir, videos, texts, data["test_rows"]) for name, d in runs.items()}
    plan = results["pretrain"]["plan"]
    first = cfg.seed
    results["evaluation"] = {p["variant"]: scores[p["run"]] for p in plan if p["seed"] == first}
    results["seeds"] = {name: [{"seed": p["seed"], **scores[p["run"]]} for p in plan if p["variant"] == name]
                        for name in cfg.claim_variants}
    for ft in results["finetune"].values():
        ft["evaluation"] = score_model(cfg, ft["best_dir"], tokenizer_dir, videos, texts, data["test_rows"])
    results["chance"] = {"r1": 100.0 / len(texts), "r5": 100.0 * min(5, len(texts)) / len(texts),
                         "medr": (len(texts) + 1) / 2, "pair_accuracy": 0.5}


def write_report(cfg, out: Path, results: dict) -> Path:
    from demo.report import write

    return write(cfg, out, results)
