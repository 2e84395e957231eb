"""The one-call encoding API (search/encoder.py, search/video.py): loading what training writes, the
evaluation's frame sampling, spans, and the errors a user gets.
Run: ``.venv/bin/python -m pytest tests/search/test_encoder.py -q``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _rows(manifest: Path) -> list[dict]:
    from common.jsonl import read_jsonl

    return read_jsonl(manifest)


def test_vectors_equal_the_evaluation_path(synth_clips, search_model):
    """encode_videos / encode_texts give what retrieval evaluation computes for the same files and texts."""
    from torch.utils.data import DataLoader

    from model.convert import load_checkpoint
    from model.tokenizer import load_tokenizer
    from search.encoder import Encoder
    from train.evaluate import encode_eval_set
    from train.retrieval_data import RetrievalEvalDataset, VideoEntry, collate_eval

    model_dir, tok_dir = search_model
    rows = [r for r in _rows(synth_clips) if "start" not in r][:6]
    entries = [VideoEntry(r["path"], (r["caption_gt"],)) for r in rows]
    loader = DataLoader(RetrievalEvalDataset(entries, 4, 32), batch_size=4, collate_fn=collate_eval)
    text_ref, video_ref, _ = encode_eval_set(load_checkpoint(model_dir), loader, load_tokenizer(tok_dir),
                                             max_text_len=16, image_size=32, device=torch.device("cpu"))
    enc = Encoder.load(model_dir, tokenizer=tok_dir, device="cpu", num_frames=4, max_text_len=16)
    videos = enc.encode_videos([r["path"] for r in rows], batch_size=4)
    texts = enc.encode_texts([r["caption_gt"] for r in rows])
    np.testing.assert_allclose(videos, video_ref, atol=1e-5)
    np.testing.assert_allclose(texts, text_ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(videos, axis=1), 1.0, atol=1e-5)


def test_span_sampling_takes_the_frames_on_screen_in_the_span():
    from search.video import span_indices
    from train.video import DecodeError

    # 25 fps, span 2.0-4.0 s: frames 50..99; four frames spread with the evaluation's linspace rule.
    assert span_indices(250, 25.0, 2.0, 4.0, 4).tolist() == [50, 66, 82, 99]
    assert span_indices(250, 25.0, None, None, 3).tolist() == [0, 124, 249]
    assert span_indices(100, 25.0, 3.0, 99.0, 2).tolist() == [75, 99]  # an end past the video stops at its end
    with pytest.raises(DecodeError, match="outside the video"):
        span_indices(100, 25.0, 5.0, 6.0, 4)


def test_a_span_equals_the_same_frames_cut_out_by_hand(synth_clips, search_model):
    """A (path, start, end) span encodes the frames decord returns for the span's indices."""
    import decord

    from search.encoder import Encoder
    from search.video import span_indices

    row = next(r for r in _rows(synth_clips) if "start" in r)
    enc = Encoder.load(search_model[0], tokenizer=search_model[1], device="cpu", num_frames=4)
    got = enc.encode_videos([(row["path"], row["start"], row["end"])])
    reader = decord.VideoReader(row["path"])
    idx = span_indices(len(reader), reader.get_avg_fps(), row["start"], row["end"], 4)
    want = enc.encode_frames([reader.get_batch(idx.tolist()).asnumpy()])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_run_dir_gives_its_model_tokenizer_and_frames(search_model, tmp_path):
    """A fine-tuning run dir: best/ is the model, the run's tokenizer and evaluation frame count are used."""
    import shutil

    from search.encoder import Encoder

    model_dir, tok_dir = search_model
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "best")
    (run / "config.json").write_text(json.dumps({
        "task": "finetune", "model": {"tokenizer": tok_dir},
        "eval": {"manifest": {"manifest": "val.jsonl", "num_frames": 6, "max_text_len": 20}},
        "finetune": {"num_frames": 12, "max_text_len": 50}}))
    enc = Encoder.load(str(run), device="cpu")
    assert (enc.num_frames, enc.max_text_len) == (6, 20)
    assert enc.model_id == Encoder.load(model_dir, tokenizer=tok_dir, device="cpu").model_id


def _broken_copies(model_dir: str, root: Path) -> list[tuple[Path, str]]:
    """Model dirs each damaged one way, with the words the refusal must hold."""
    import shutil

    config = json.loads((Path(model_dir) / "config.json").read_text())
    cases = [("not json", "{'image_size': 32", "is not valid JSON"),
             ("unknown field", json.dumps({**config, "colour": "red"}), "unknown field(s) ['colour']"),
             ("wrong type", json.dumps({**config, "text_layers": "2"}), "text_layers='2' is not"),
             ("bad value", json.dumps({**config, "attention": "sideways"}), "attention='sideways'"),
             ("other shapes", json.dumps({**config, "text_width": config["text_width"] * 2}), "does not match"),
             ("cut weights", None, "is not a readable safetensors file")]
    out = []
    for name, text, words in cases:
        folder = root / name.replace(" ", "_")
        shutil.copytree(model_dir, folder)
        if text is None:
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:-100])
        else:
            (folder / "config.json").write_text(text)
        out.append((folder, words))
    return out


def test_a_damaged_model_dir_is_refused_naming_the_file_without_reading_weights(search_model, tmp_path):
    """The checks of search/model_files.py: each damage is an EncoderError (a UserError) naming the
    file, from the encoder and from the embedding driver's check alike."""
    from common.errors import UserError
    from search.encoder import Encoder
    from search.model_files import EncoderError, check_model_dir

    for folder, words in _broken_copies(search_model[0], tmp_path):
        with pytest.raises(EncoderError, match=None) as caught:
            Encoder.load(str(folder), tokenizer=search_model[1], device="cpu")
        assert words in str(caught.value) and str(folder) in str(caught.value), (folder.name, caught.value)
        with pytest.raises(UserError):
            check_model_dir(folder)


def test_a_bug_in_the_loader_is_not_turned_into_a_user_error(search_model, monkeypatch):
    """Encoder.load catches only UserErrors: a loader that fails any other way keeps its exception."""
    import model.convert
    from search.encoder import Encoder

    def broken(*args, **kwargs):
        raise RuntimeError("injected bug in the loader")

    monkeypatch.setattr(model.convert, "load_checkpoint", broken)
    with pytest.raises(RuntimeError, match="injected bug"):
        Encoder.load(search_model[0], tokenizer=search_model[1], device="cpu")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_encode_cli_prints_similarities_and_refuses_bad_input_in_one_line(synth_clips, search_model, tmp_path):
    model_dir, tok_dir = search_model
    row = _rows(synth_clips)[0]
    out = tmp_path / "v.npz"
    proc = _cli("encode", "--model", model_dir, "--tokenizer", tok_dir, "--frames", "4", "--text", "a red circle",
                "--video", row["path"], "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'a red circle':" in proc.stdout
    saved = np.load(out)
    assert saved["texts"].shape == (1, 32) and saved["videos"].shape == (1, 32)
    for args, fragment in [(("--model", str(tmp_path / "nope"), "--text", "x"), "no such folder"),
                           (("--model", model_dir, "--text", "x"), "no tokenizer is recorded"),
                           (("--model", model_dir, "--tokenizer", tok_dir, "--video", "missing.mp4"), "no such file")]:
        proc = _cli("encode", *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr
