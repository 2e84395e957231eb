"""train/retrieval_data.py and train/evaluate.py: downstream manifests, the fine-tune loader, and
encode-once evaluation against a brute-force computation; a short fine-tune run end to end.

Run: .venv/bin/python -m pytest tests/train/test_retrieval_data.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from model.clip_vip import CLIPViP, get_config
from train.evaluate import evaluate_retrieval
from train.retrieval_data import (FinetuneLoader, RetrievalDataConfig, RetrievalEvalDataset, RetrievalTrainDataset,
                                  collate_eval, load_manifest)
from model.tokenizer import tokenize
from train.video import decode_video_file, preprocess


def _rows(manifest: Path) -> list[dict]:
    return [r for r in map(json.loads, manifest.read_text().splitlines()) if "start" not in r]


def write_official_manifest(synth_clips: Path, out: Path, n: int, multi: bool) -> Path:
    """HD-VILA layout: clip_name without extension under a video root, text a string or list."""
    rows = _rows(synth_clips)[:n]
    with open(out, "w") as f:
        for r in rows:
            text = [r["caption_gt"], r["text"], f"the {r['shape']}"] if multi else r["caption_gt"]
            f.write(json.dumps({"clip_name": r["key"], "text": text}) + "\n")
    return out


def test_manifests_load_per_dataset(synth_clips, tmp_path):
    root = str(Path(synth_clips).parent)
    path = write_official_manifest(synth_clips, tmp_path / "m.jsonl", 5, multi=True)
    msrvtt = load_manifest(str(path), "msrvtt", root)
    assert len(msrvtt) == 5 and all(len(e.texts) == 3 for e in msrvtt)
    assert all(Path(e.video).is_file() and e.video.endswith(".mp4") for e in msrvtt)
    for paragraph in ("didemo", "activitynet"):
        joined = load_manifest(str(path), paragraph, root)
        # ActivityNet joins its sentences too: the official code's bug (one random sentence) is fixed.
        assert [len(e.texts) for e in joined] == [1] * 5
        assert joined[0].texts[0] == " ".join(msrvtt[0].texts)
    single = write_official_manifest(synth_clips, tmp_path / "s.jsonl", 4, multi=False)
    assert [len(e.texts) for e in load_manifest(str(single), "lsmdc", root)] == [1] * 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clip_name": "x", "text": []}) + "\n")
    with pytest.raises(ValueError, match="no text"):
        load_manifest(str(bad), "msrvtt", root)
    with pytest.raises(ValueError, match="unknown retrieval dataset"):
        load_manifest(str(path), "msvd", root)
    # A truncated line and a line that is JSON but not a row: both named by file and line.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text().splitlines()[0] + "\n" + '{"clip_name": "video1", "te\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        load_manifest(str(broken), "msrvtt", root)
    broken.write_text('["video0", "a man sings"]\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:1: a list, not a JSON object"):
        load_manifest(str(broken), "msrvtt", root)


def test_msrvtt_training_draws_one_caption_per_step_and_resumes(synth_clips, synth_tokenizer, tmp_path):
    root = str(Path(synth_clips).parent)
    entries = load_manifest(str(write_official_manifest(synth_clips, tmp_path / "m.jsonl", 6, True)), "msrvtt", root)
    cfg = RetrievalDataConfig(num_frames=4, image_size=32, max_text_len=16, batch_size=2, num_workers=0, seed=3)
    ds = RetrievalTrainDataset(entries, cfg)
    drawn = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        drawn.add(ds[0]["text"])
    assert len(drawn) > 1 and drawn <= set(entries[0].texts)
    full = FinetuneLoader(ds, synth_tokenizer, cfg)
    seq = [next(full) for _ in range(5)]  # 3 batches per epoch: crosses into epoch 1
    first = FinetuneLoader(RetrievalTrainDataset(entries, cfg), synth_tokenizer, cfg)
    [next(first) for _ in range(2)]
    resumed = FinetuneLoader(RetrievalTrainDataset(entries, cfg), synth_tokenizer, cfg, state=first.state_dict())
    for a in seq[2:]:
        b = next(resumed)
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["subtitle_ids"], b["subtitle_ids"])
    with pytest.raises(ValueError, match="global batch"):
        FinetuneLoader(ds, synth_tokenizer, cfg, world_size=4)


def test_encode_once_metrics_match_brute_force(synth_clips, synth_tokenizer, tmp_path):
    root = str(Path(synth_clips).parent)
    entries = load_manifest(str(write_official_manifest(synth_clips, tmp_path / "m.jsonl", 7, True)), "msrvtt", root)
    torch.manual_seed(0)
    model = CLIPViP(get_config("debug", vocab_size=len(synth_tokenizer), eot_token_id=synth_tokenizer.eos_token_id))
    loader = DataLoader(RetrievalEvalDataset(entries, 4, 32), batch_size=3, collate_fn=collate_eval)
    m = evaluate_retrieval(model, loader, synth_tokenizer, max_text_len=16, image_size=32, device=torch.device("cpu"))
    assert m["n_videos"] == 7 and m["n_texts"] == 21

    # Brute force: one item at a time, explicit loops over every pair.
    model.eval()
    with torch.no_grad():
        v = [model.encode_video(preprocess(decode_video_file(e.video, 4, train=False), 32)[None])[0] for e in entries]
        texts = [(t, i) for i, e in enumerate(entries) for t in e.texts]
        t = [model.encode_text(**{k: x for k, x in zip(("input_ids", "attention_mask"),
                                                       tokenize(synth_tokenizer, [s], 16).values())})[0]
             for s, _ in texts]
    sim = np.array([[float(a @ b) for b in v] for a in t])
    # The official tie rule: a ground truth tied with m others contributes ranks r, r+1, ..., r+m
    # (the three captions of a video include repeats, so exact ties occur here).
    t2v, v2t = [], []
    for q, (_, vid) in enumerate(texts):
        r, tied = sum(sim[q, j] > sim[q, vid] for j in range(7)), sum(sim[q, j] == sim[q, vid] for j in range(7))
        t2v += range(r, r + tied)
    for vid in range(7):
        best = max(sim[q, vid] for q, (_, owner) in enumerate(texts) if owner == vid)
        r = sum(sim[q, vid] > best for q in range(len(texts)))
        v2t += range(r, r + sum(sim[q, vid] == best for q in range(len(texts))))
    for name, ranks in (("t2v", t2v), ("v2t", v2t)):
        ranks = np.array(ranks)
        assert m[f"{name}_r1"] == pytest.approx(100 * np.mean(ranks < 1), abs=1e-6)
        assert m[f"{name}_r5"] == pytest.approx(100 * np.mean(ranks < 5), abs=1e-6)
        assert m[f"{name}_medr"] == pytest.approx(np.median(ranks) + 1)
        assert m[f"{name}_meanr"] == pytest.approx(np.mean(ranks) + 1)
    assert "dsl_t2v_r1" in m and "dsl_v2t_meanr" in m


def test_short_finetune_selects_on_validation(synth_clips, tmp_path):
    from train.data import ShardDataConfig
    from train.optim import OptimConfig
    from train.loop import EvalSection, ModelSection, TrainConfig
    from train.setup import run

    root = str(Path(synth_clips).parent)
    train = write_official_manifest(synth_clips, tmp_path / "train.jsonl", 8, True)
    val = write_official_manifest(synth_clips, tmp_path / "val.jsonl", 4, False)
    split = dict(dataset="msrvtt", video_root=root, num_frames=4, image_size=32, max_text_len=16, num_workers=0)
    cfg = TrainConfig(task="finetune", run_dir=str(tmp_path / "run"), steps=3, device="cpu", precision="fp32",
                      model=ModelSection(flavour="debug"), data=ShardDataConfig(),
                      finetune=RetrievalDataConfig(manifest=str(train), batch_size=4, **split),
                      optim=OptimConfig(lr=1e-3, weight_decay=0.2, grad_clip=1.0),
                      eval=EvalSection(every=2, manifest=RetrievalDataConfig(manifest=str(val), batch_size=4, **split)),
                      checkpoint_every=0, log_every=1, tensorboard=False)
    result = run(cfg)
    assert len(result["losses"]) == 3 and all(np.isfinite(result["losses"]))
    sel = json.loads((tmp_path / "run" / "best" / "selection.json").read_text())
    assert sel["split"] == "val" and sel["metric"] == "t2v_r1" and sel["step"] in (0, 2, 3)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_a_test_split_is_reported_and_never_picks_a_checkpoint(synth_clips, synth_shards, tmp_path):
    """Pretraining's zero-shot monitoring on a test split (the pretrain configs' MSR-VTT 1k-A): its
    numbers are logged as 'test' and no ``best/`` is exported from them."""
    from train.data import ShardDataConfig
    from train.log import read_metrics
    from train.loop import EvalSection, ModelSection, TrainConfig
    from train.optim import OptimConfig
    from train.setup import run

    root = str(Path(synth_clips).parent)
    test = write_official_manifest(synth_clips, tmp_path / "test.jsonl", 4, False)
    split = dict(dataset="msrvtt", video_root=root, num_frames=4, image_size=32, max_text_len=16, num_workers=0)
    cfg = TrainConfig(task="pretrain", run_dir=str(tmp_path / "run"), steps=2, device="cpu", precision="fp32",
                      model=ModelSection(flavour="debug"),
                      data=ShardDataConfig(shards=synth_shards, batch_size=4, num_workers=0, num_frames=4,
                                           image_size=32, max_text_len=16, shuffle_buffer=4),
                      optim=OptimConfig(lr=1e-3),
                      eval=EvalSection(every=1, split="test", manifest=RetrievalDataConfig(manifest=str(test),
                                                                                           batch_size=4, **split)),
                      checkpoint_every=0, log_every=1, tensorboard=False)
    result = run(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="test")
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["n_videos"] == 4 for r in rows)
    assert not (tmp_path / "run" / "best").exists()
    assert result["best"] == {"value": float("-inf"), "step": 0}
