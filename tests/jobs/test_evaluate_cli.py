"""``clipvip evaluate`` end to end on real clips: an official-format checkpoint of an architecture
the weights cannot name (its head count comes from ``--clip-config``), the tie rule from
``--ties``, and the numbers equal to the library's evaluation of the same model.

Run: ``.venv/bin/python -m pytest tests/jobs/test_evaluate_cli.py -q``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs import cli
from model.clip_vip import CLIPViP, get_config


@pytest.fixture(scope="module")
def two_head_checkpoint(synth_tokenizer, tmp_path_factory):
    """A debug-size CLIP-ViP with 2 heads (the flavour has 4), saved as the released files are
    (``clipmodel.`` prefix, fp16, position_ids), and the CLIP config.json it was built from."""
    from tests.model.test_convert import _hf_config

    out = tmp_path_factory.mktemp("official")
    torch.manual_seed(5)
    tok = synth_tokenizer
    model = CLIPViP(get_config("debug", vocab_size=len(tok), eot_token_id=tok.eos_token_id, vision_heads=2,
                               text_heads=2))
    state = {f"clipmodel.{k}": v.half() for k, v in model.state_dict().items()}
    state["clipmodel.text_model.embeddings.position_ids"] = torch.arange(model.config.context_length)[None]
    state["clipmodel.vision_model.embeddings.position_ids"] = torch.arange(model.config.num_patches + 1)[None]
    torch.save(state, out / "two_heads.pt")
    _hf_config(model.config).save_pretrained(out / "clip")
    _hf_config(model.config, **{"vision.hidden_size": 128}).save_pretrained(out / "wider")
    return out / "two_heads.pt", out / "clip"


def _manifest(synth_clips: Path, out: Path, n: int = 8) -> Path:
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()][:n]
    out.write_text("".join(json.dumps({"clip_name": Path(r["path"]).stem, "text": r["caption_gt"]}) + "\n"
                           for r in rows))
    return out


def test_evaluate_reads_heads_from_clip_config_and_applies_the_tie_rule(two_head_checkpoint, synth_clips,
                                                                        synth_tokenizer, tmp_path, capsys):
    from model.convert import load_official_clipvip
    from train.evaluate import evaluate_retrieval
    from train.retrieval_data import RetrievalEvalDataset, collate_eval, load_manifest

    pt, clip_config = two_head_checkpoint
    manifest = _manifest(synth_clips, tmp_path / "test.jsonl")
    tok_dir = synth_tokenizer.name_or_path
    base = ["evaluate", "--model", f"clipvip:{pt}", "--tokenizer", tok_dir, "--dataset", "msrvtt",
            "--manifest", str(manifest), "--video-root", str(synth_clips.parent), "--frames", "4", "--workers", "0",
            "--device", "cpu", "--precision", "fp32", "--max-text-len", "16"]

    # Without the config the heads are unknown: one line that names the option, nothing written.
    capsys.readouterr()
    assert cli.main(base + ["--out", str(tmp_path / "refused.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot tell the attention heads" in err[0] and "--clip-config" in err[0]
    assert not (tmp_path / "refused.json").exists()
    # A config of another model: one line naming the field that differs, nothing written.
    assert cli.main(base + ["--clip-config", str(clip_config.parent / "wider"), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not describe this checkpoint: vision_width 128 there, 64 in the weights" in err[0]
    assert not (tmp_path / "r.json").exists()

    for ties in ("official", "optimistic"):
        out = tmp_path / f"{ties}.json"
        assert cli.main(base + ["--clip-config", str(clip_config), "--ties", ties, "--out", str(out)]) == 0
        got = json.loads(out.read_text())
        model, _ = load_official_clipvip(pt, clip_config=clip_config)
        assert (model.config.vision_heads, model.config.text_heads) == (2, 2)
        batches = torch.utils.data.DataLoader(
            RetrievalEvalDataset(load_manifest(str(manifest), "msrvtt", str(synth_clips.parent)), 4, 32),
            batch_size=32, collate_fn=collate_eval)
        want = evaluate_retrieval(model, batches, synth_tokenizer, max_text_len=16, image_size=32,
                                  device=torch.device("cpu"), ties=ties)
        n_videos, n_texts = want.pop("n_videos"), want.pop("n_texts")
        assert got["metrics"] == pytest.approx(want) and (got["n_videos"], got["n_texts"]) == (8, 8) == (n_videos, n_texts)
        assert isinstance(got["n_videos"], int)  # a count, written 8, not 8.0
        # What produced the numbers, enough to rerun them.
        assert (got["model"], got["ties"], got["frames"], got["dataset"]) == (f"clipvip:{pt}", ties, 4, "msrvtt")
        assert got["manifest"] == str(manifest.resolve()) and len(got["manifest_sha256"]) == 64
        assert got["command"].startswith("clipvip evaluate --model clipvip:") and f"--ties {ties}" in got["command"]


def test_a_missing_test_video_is_refused_before_the_model_loads(two_head_checkpoint, synth_clips, tmp_path,
                                                                 capsys):
    """A missing evaluation video would change the benchmark: refused up front, one line, with the count."""
    pt, clip_config = two_head_checkpoint
    manifest = _manifest(synth_clips, tmp_path / "test.jsonl")
    manifest.write_text(manifest.read_text() + json.dumps({"clip_name": "gone", "text": "a red circle"}) + "\n")
    capsys.readouterr()
    argv = ["evaluate", "--model", f"clipvip:{pt}", "--clip-config", str(clip_config), "--tokenizer", str(tmp_path),
            "--dataset", "msrvtt", "--manifest", str(manifest), "--video-root", str(synth_clips.parent)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 9 videos" in err[0] and "gone.mp4" in err[0] and "remove them" in err[0]


def test_clip_config_only_for_official_checkpoints(tmp_path, capsys):
    capsys.readouterr()
    argv = ["evaluate", "--model", str(tmp_path), "--clip-config", str(tmp_path / "nope"), "--tokenizer", "t",
            "--dataset", "msrvtt", "--manifest", str(tmp_path / "m.jsonl")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--clip-config only applies to --model clipvip:" in err and "does not exist" in err


def test_training_init_reads_heads_from_model_clip_config(two_head_checkpoint, synth_tokenizer):
    """The same checkpoint as a training start (``model.init=clipvip:...``): refused naming
    ``model.clip_config`` without it, built with 2 heads with it."""
    import dataclasses

    from train.loop import ModelSection, TrainConfig
    from train.setup import ModelInitError, build_model

    pt, clip_config = two_head_checkpoint
    cfg = TrainConfig(model=ModelSection(init=f"clipvip:{pt}"))
    with pytest.raises(ModelInitError, match=r"model.init='clipvip:.*cannot tell the attention heads.*model\.clip_config="):
        build_model(cfg, synth_tokenizer)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, clip_config=str(clip_config)))
    model = build_model(cfg, synth_tokenizer)
    assert (model.config.vision_heads, model.config.text_heads) == (2, 2)
