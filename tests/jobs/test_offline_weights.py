"""Real weights without the hub: ``clipvip pretrain --config pretrain_b32`` from a local CLIP folder
(a tiny one, saved by transformers as a real one is), a hub id while offline refused in one line
with nothing written, and a model that needs its own tokenizer refused naming that tokenizer.

Run: .venv/bin/python -m pytest tests/jobs/test_offline_weights.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_clip(synth_clips, tmp_path_factory) -> tuple[Path, object]:
    """A tiny CLIP saved with ``save_pretrained``, model and tokenizer in one folder, as one saves
    ``openai/clip-vit-base-patch32`` for a machine without hub access."""
    from transformers import CLIPConfig, CLIPModel

    from model.tokenizer import load_tokenizer, train_clip_bpe

    folder = tmp_path_factory.mktemp("clip-tiny")
    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()]
    tok = load_tokenizer(str(train_clip_bpe([r["text"] for r in rows] + [r["caption_gt"] for r in rows], folder,
                                            num_merges=100)))
    torch.manual_seed(0)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=20, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    hf = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    hf.save_pretrained(folder)
    return folder, hf


def test_pretrain_b32_from_a_local_clip_folder(local_clip, synth_shards, tmp_path, capsys):
    from model.convert import load_checkpoint

    folder, hf = local_clip
    run_dir = tmp_path / "run"
    rc = cli.main(["pretrain", "--config", "pretrain_b32", f"model.init=hf:{folder}", f"model.tokenizer={folder}",
                   f"data.shards={synth_shards}", f"run_dir={run_dir}", "eval.manifest.manifest=", "eval.every=0",
                   "steps=2", "device=cpu", "precision=fp32", "data.batch_size=4", "data.num_workers=0",
                   "data.image_size=32", "data.num_frames=4", "data.max_text_len=16", "tensorboard=false",
                   "--log-level", "WARNING"])
    assert rc == 0, capsys.readouterr().err
    model = load_checkpoint(str(run_dir / "checkpoints" / "step_00000002" / "model"))
    assert (model.config.vision_width, model.config.text_layers, model.config.eot_token_id) == \
        (32, 2, hf.config.text_config.eos_token_id)
    # Two steps at the paper's lr 5e-6 with 1% warm-up move no weight far: the CLIP weights were loaded.
    ours = model.state_dict()["text_model.embeddings.token_embedding.weight"]
    torch.testing.assert_close(ours, hf.state_dict()["text_model.embeddings.token_embedding.weight"], atol=1e-4,
                               rtol=0)
    assert json.loads((run_dir / "config.json").read_text())["model"]["init"] == f"hf:{folder}"


def test_a_hub_id_while_offline_is_one_line_and_writes_nothing(synth_shards, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    proc = subprocess.run([sys.executable, "-m", "jobs.pretrain", "--config", "pretrain_b32", f"run_dir={run_dir}",
                           f"data.shards={synth_shards}", "data.num_workers=1", "eval.manifest.manifest=",
                           "eval.every=0", "--log-level", "ERROR"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("clipvip pretrain: error: model.tokenizer='openai/clip-vit-base-patch32': the Hugging "
                               "Face hub is off here (HF_HUB_OFFLINE=1")
    assert "save_pretrained" in lines[0] and "model.init=hf:<that folder> model.tokenizer=<that folder>" in lines[0]
    assert not run_dir.exists()


def _pretrained(tiny_pretrain, tmp_path) -> Path:
    from train.setup import run

    run(tiny_pretrain(tmp_path / "pre", steps=2))
    return tmp_path / "pre"


def _manifest(synth_clips: Path, out: Path, n: int) -> Path:
    rows = [r for r in map(json.loads, synth_clips.read_text().splitlines()) if "start" not in r][:n]
    out.write_text("".join(json.dumps({"video": r["path"], "text": r["caption_gt"]}) + "\n" for r in rows))
    return out


@pytest.mark.parametrize("tokenizer", ["", "another"])
def test_finetune_of_a_pretrained_model_names_the_tokenizer_it_was_trained_with(tiny_pretrain, synth_clips,
                                                                               tmp_path, capsys, tokenizer):
    import shutil

    pre = _pretrained(tiny_pretrain, tmp_path)
    ft = tmp_path / "ft"
    # Another tokenizer of the very same size and end-of-text id: two words' ids swapped. It passes
    # the embedding's size check and would still feed every use of those words the wrong row.
    other = tmp_path / "other_tok"
    shutil.copytree(pre / "tokenizer", other)
    vocab = json.loads((other / "vocab.json").read_text())
    a, b = "red</w>", "blue</w>"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "vocab.json").write_text(json.dumps(vocab))
    (other / "tokenizer.json").unlink(missing_ok=True)
    argv = ["finetune", "--config", "debug_finetune", f"run_dir={ft}",
            f"model.init=ckpt:{pre}/checkpoints/step_00000002/model",
            f"finetune.manifest={_manifest(synth_clips, tmp_path / 'train.jsonl', 8)}", "eval.every=0",
            "finetune.num_frames=4", "--log-level", "ERROR"]
    if tokenizer:
        argv.append(f"model.tokenizer={other}")
    capsys.readouterr()
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("clipvip finetune: error: "), lines
    assert f"model.tokenizer={pre}/tokenizer" in lines[0]
    assert not ft.exists()  # refused before config.json or a tokenizer was written
