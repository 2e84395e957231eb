"""Caption fine-tuning of the OFA port (``caption/ofa/finetune.py``, ``clipvip caption finetune``).

Everything runs on the tiny random OFA at 64 px: a fine-tuning run takes a few seconds on 2 cores.
Run: .venv/bin/python -m pytest tests/caption/test_ofa_finetune.py -q
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from caption.ofa.captioner import OFACaptioner, load_ofa
from caption.ofa.checkpoint import build_model, load_converted
from caption.ofa.finetune import (CaptionDataConfig, CaptionFinetuneConfig, PairSet, caption_loss, label_smoothed_nll,
                                  read_manifest, read_shards, run, save, train)
from demo.tiny_ofa import write_tiny_ofa
from caption.registry import load_captioner

# Two pictures a 64 px model tells apart at a glance, and what each shows.
SCENES = {"red": ((220, 30, 30), "a red circle on a dark background"),
          "blue": ((40, 70, 230), "a blue square in the middle")}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_ofa(tmp_path_factory.mktemp("tiny_ofa"), seed=3)


def scene(colour: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 70, (72, 96, 3), dtype=np.uint8)
    img[20:52, 30:66] = colour
    return img


@pytest.fixture(scope="module")
def pairs_manifest(tmp_path_factory) -> Path:
    """Eight image files (four per scene, different noise) and a manifest of their captions."""
    out = tmp_path_factory.mktemp("pairs")
    rows = []
    for name, (colour, caption) in SCENES.items():
        for i in range(4):
            path = out / f"{name}{i}.png"
            Image.fromarray(scene(colour, 10 * i + len(name))).save(path)
            rows.append({"key": f"{name}{i}", "image": str(path), "caption": caption})
    manifest = out / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def config(model: Path | str, out: Path, manifest: Path, **kw) -> CaptionFinetuneConfig:
    """The official recipe with what a random debug model needs: trainable embeddings, a large lr, no dropout."""
    base = dict(model=f"ofa:{model}", out_dir=str(out), data=CaptionDataConfig(manifest=str(manifest), num_workers=1),
                steps=60, batch_size=8, lr=3e-3, warmup_ratio=0.1, dropout=0.0, freeze_embeddings=False, log_every=5)
    return CaptionFinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finetuned(tiny_dir, pairs_manifest, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("finetuned")
    return out, run(config(tiny_dir, out, pairs_manifest))


def test_loss_falls_and_the_log_records_it(finetuned):
    out, result = finetuned
    losses = result["losses"]
    assert len(losses) == result["steps"] == 60 and result["pairs"] == 8
    assert np.mean(losses[-5:]) < 0.35 * np.mean(losses[:5]), losses
    log = [json.loads(line) for line in (out / "finetune_log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and log[-1]["step"] == 60 and log[-1]["loss"] == pytest.approx(losses[-1])
    # Each row holds the rate its step trained at: 3e-3 with warm-up over 6 of 60 steps (step s at
    # s/6 of it), then linear decay whose last step still trains (1/54 of it), never 0.
    for row in log:
        s = row["step"]
        assert row["lr"] == pytest.approx(3e-3 * (s / 6 if s <= 6 else (61 - s) / 54), rel=1e-12), row
    assert [row["step"] for row in log][:3] == [1, 5, 10] and log[-1]["lr"] > 0


def test_beam_search_reproduces_the_memorised_captions(finetuned):
    out, _ = finetuned
    captioner = load_captioner(f"ofa:{out}", device="cpu")  # beam 5, the captioner's own defaults
    images = [scene(colour, 999 + i) for i, (colour, _) in enumerate(SCENES.values())]  # unseen noise
    assert captioner.generate(images) == [caption for _, caption in SCENES.values()]


def test_weights_round_trip_with_identical_logits(finetuned, tiny_dir, pairs_manifest, tmp_path):
    # The same run again, kept in memory: its logits must be those of the model loaded back from disk.
    cfg = config(tiny_dir, tmp_path / "again", pairs_manifest)
    trained = train(cfg)
    out = save(trained, tmp_path / "again")
    files = load_ofa(out)  # what ofa:<dir> reads
    pairs = PairSet(read_manifest(pairs_manifest), files.tokenizer, files.cfg.patch_image_size, cfg.data, 20)
    batch = pairs.batch(list(range(8)))
    prompt = torch.tensor(files.tokenizer.encode_prompt())
    with torch.no_grad():
        in_memory = trained.model(batch["pixels"], prompt, batch["prev_tokens"])
        loaded = build_model(files.cfg, files.state)(batch["pixels"], prompt, batch["prev_tokens"])
    assert torch.equal(in_memory, loaded)
    # One seed, one machine: the first run (the fixture) saved the very same weights.
    first = load_ofa(finetuned[0]).state
    assert all(torch.equal(v, first[k]) for k, v in files.state.items())
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["finetune"]["label_smoothing"] == 0.1 and meta["finetune"]["steps_run"] == 60
    assert len(meta["finetuned_from_sha256"]) == 64
    # The captioner loads the directory as it is: the tokenizer files were copied beside the weights.
    captioner = OFACaptioner(str(out), device="cpu")
    assert captioner.tokenizer.encode(" a red circle") == load_ofa(tiny_dir).tokenizer.encode(" a red circle")


def test_teacher_forcing_gives_the_logits_of_step_by_step_decoding(tiny_dir):
    files = load_ofa(tiny_dir)
    model = build_model(files.cfg, files.state)
    prompt = torch.tensor(files.tokenizer.encode_prompt())
    tokens = files.tokenizer.encode(" a blue square moving up")
    prev = torch.tensor([[files.tokenizer.bos, *tokens]] * 2)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(pixels, prompt, prev)
        enc = model.encode(pixels, prompt)
        cross_kv = model.cross_kv(enc)
        t, cfg = prev.shape[1], files.cfg
        self_bias, cross_bias = model.decoder.position_biases(t, enc.positions)
        caches = [(torch.zeros(2, cfg.heads, t, cfg.head_dim), torch.zeros(2, cfg.heads, t, cfg.head_dim))
                  for _ in model.decoder.layers]
        steps = []
        for step in range(t):
            x = model.decoder.embed(prev[:, step], step)
            for i, layer in enumerate(model.decoder.layers):
                x = layer(x, step, caches[i], self_bias[i, :, step:step + 1, :step + 1][None], cross_kv[i],
                          cross_bias[:, step:step + 1][None])
            steps.append(model.logits(x))
    torch.testing.assert_close(full, torch.stack(steps, 1), atol=1e-4, rtol=1e-4)


def test_label_smoothing_is_ofas():
    torch.manual_seed(0)
    lprobs = F.log_softmax(torch.randn(7, 50), -1)
    target = torch.randint(0, 50, (7,))
    loss, nll, n = label_smoothed_nll(lprobs, target, 0.0)
    assert n == 7 and torch.allclose(loss, F.nll_loss(lprobs, target, reduction="sum")) and torch.allclose(loss, nll)
    loss, nll, _ = label_smoothed_nll(lprobs, target, 0.1)
    eps_i = 0.1 / 49  # OFA spreads epsilon over the V - 1 other tokens
    per_token = -(1 - 0.1 - eps_i) * lprobs[torch.arange(7), target] - eps_i * lprobs.sum(-1)
    assert torch.allclose(loss, per_token.sum()) and torch.allclose(nll, F.nll_loss(lprobs, target, reduction="sum"))
    dropped, _, kept = label_smoothed_nll(lprobs, target, 0.1, drop_worst_ratio=0.3)
    assert kept == 4 and torch.allclose(dropped, per_token.sort().values[:4].sum())


def test_targets_follow_ofas_caption_preprocessing(tiny_dir, pairs_manifest):
    files = load_ofa(tiny_dir)
    tok = files.tokenizer
    pairs = read_manifest(pairs_manifest)
    pairs[0] = type(pairs[0])(key="p", image=pairs[0].image, caption="A red, circle! on a dark background.")
    data = PairSet(pairs[:2], tok, 64, CaptionDataConfig(), max_words=3)
    batch = data.batch([0, 1])
    first = tok.encode(" A red circle")  # punctuation deleted, cut to 3 words, a leading space
    assert batch["prev_tokens"][0, : len(first) + 1].tolist() == [tok.bos, *first]
    assert batch["target"][0, : len(first) + 1].tolist() == [*first, tok.eos]
    assert (batch["target"][0, len(first) + 1:] == tok.pad).all()
    loss = caption_loss(build_model(files.cfg, files.state), batch, torch.tensor(tok.encode_prompt()), 0.1)
    assert int(loss["tokens"]) == int((batch["target"] != tok.pad).sum())


def test_shards_and_video_manifests_feed_the_same_pairs(tiny_dir, synth_clips, tmp_path):
    """A video row contributes its middle frame; a shard sample its jpg and a text field."""
    from video.frames import middle_frame

    rows = [json.loads(line) for line in synth_clips.read_text().splitlines()][:4]
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text("".join(json.dumps({"video": r["path"], "start": r.get("start"), "end": r.get("end"),
                                            "caption": f"a {r['color']} {r['shape']}"}) + "\n" for r in rows))
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for r in rows:
            buf = io.BytesIO()
            Image.fromarray(middle_frame(r["path"], r.get("start"), r.get("end"))[1]).save(buf, format="PNG")
            for name, data in ((f"{r['key']}.jpg", buf.getvalue()),
                               (f"{r['key']}.json", json.dumps({"label": f"a {r['color']} {r['shape']}"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    files = load_ofa(tiny_dir)
    from_video = PairSet(read_manifest(manifest), files.tokenizer, 64, CaptionDataConfig(), 20).batch([0, 1, 2, 3])
    from_shard = PairSet(read_shards(str(shard), "json.label"), files.tokenizer, 64, CaptionDataConfig(), 20).batch(
        [0, 1, 2, 3])
    assert torch.equal(from_video["target"], from_shard["target"])
    assert torch.equal(from_video["pixels"], from_shard["pixels"])  # PNG in the shard: lossless, same frame
    out = tmp_path / "from_shards"
    result = run(config(tiny_dir, out, manifest, steps=3, data=CaptionDataConfig(shards=str(shard),
                                                                                   text_field="json.label")))
    assert result["pairs"] == 4 and (out / "model.safetensors").is_file()


def test_fine_tunes_a_converted_official_checkpoint_and_the_pt_itself(tiny_dir, pairs_manifest, tmp_path):
    from jobs.caption import main
    from tests.caption.test_ofa_checkpoint import write_official

    pt = write_official(tiny_dir, tmp_path / "caption_tiny.pt")
    converted = tmp_path / "converted"
    assert main(["convert-ofa", str(pt), str(converted), "--bpe-dir", str(tiny_dir)]) == 0
    for source, extra in ((converted, []), (pt, ["--bpe-dir", str(tiny_dir)])):
        out = tmp_path / f"ft_{Path(source).name}"
        assert main(["finetune", "--model", f"ofa:{source}", "--manifest", str(pairs_manifest), "--out", str(out),
                     "--steps", "4", "--batch-size", "4", *extra]) == 0
        files = load_ofa(out)
        assert files.cfg.flavour == "tiny" and files.meta["num_codes"] == 16
        official = load_converted(converted)[1]
        # The official recipe freezes the shared token embedding; everything else moved.
        assert torch.equal(files.state["embed_tokens.weight"], official["embed_tokens.weight"])
        assert not torch.equal(files.state["decoder.layers.0.ffn.fc1.weight"], official["decoder.layers.0.ffn.fc1.weight"])
        assert OFACaptioner(str(out), device="cpu").generate([scene((220, 30, 30), 1)])


@pytest.mark.parametrize("args, message", [
    (["--manifest", "{missing}"], "does not exist"),
    (["--manifest", "{manifest}", "--shards", "x-{{000000..000001}}.tar"], "exactly one of"),
    (["--manifest", "{bad_row}"], "no caption in column 'caption'"),
    (["--manifest", "{manifest}", "--label-smoothing", "1.5"], "label_smoothing 1.5"),
    (["--shards", "{tmp}/none-*.tar"], "names no file"),
])
def test_cli_user_errors_are_one_line_and_exit_2(tiny_dir, pairs_manifest, tmp_path, capsys, args, message):
    from jobs.cli import main

    bad_row = tmp_path / "bad.jsonl"
    bad_row.write_text(json.dumps({"image": str(next(pairs_manifest.parent.glob("*.png"))), "text": "x"}) + "\n")
    fill = dict(missing=tmp_path / "missing.jsonl", manifest=pairs_manifest, bad_row=bad_row, tmp=tmp_path)
    argv = ["caption", "finetune", "--model", f"ofa:{tiny_dir}", "--out", str(tmp_path / "out"),
            *[a.format(**fill) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipvip caption: error:") and "\n" not in err and message in err, err
