"""OFA port end to end on CPU: tiny random OFA + tiny BPE through ``load_captioner('ofa:...')`` and the CLI.

Run: .venv/bin/python -m pytest tests/caption/test_ofa_captioner.py -q
"""

from __future__ import annotations

import json
import shutil
import string

import numpy as np
import pytest
import torch
from PIL import Image

from caption.ofa.beam import BeamConfig
from caption.ofa.captioner import OFACaptioner
from caption.ofa.config import FLAVOURS, flavour
from caption.ofa.model import OFAModel
from demo.tiny_ofa import write_tiny_ofa
from caption.protocol import Captioner, DecodeSettings
from caption.registry import load_captioner


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_ofa(tmp_path_factory.mktemp("tiny_ofa"), seed=0)


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (40 + 4 * i, 72, 3), dtype=np.uint8) for i in range(n)]


def test_tiny_ofa_captions_end_to_end(tiny_dir):
    captioner = load_captioner(f"ofa:{tiny_dir}", device="cpu", batch_size=3)
    assert isinstance(captioner, Captioner)
    images = [*frames(4), Image.fromarray(frames(1)[0])]
    captions = captioner.generate(images)
    assert len(captions) == 5 and all(isinstance(c, str) and c for c in captions)
    assert not any(ch in string.punctuation for c in captions for ch in c)
    assert captions == captioner.generate(images)  # deterministic
    tokens = captioner.generate_tokens(images)
    assert all(1 <= len(t) - 1 <= 16 and t[-1] == captioner.tokenizer.eos for t in tokens)
    meta = captioner.describe()
    assert meta["backend"] == "ofa" and meta["model"] == "ofa-debug" and len(meta["checkpoint_sha256"]) == 64
    assert meta["decode"]["beam"] == 5 and meta["decode"]["max_new_tokens"] == 16 and meta["decode"]["precision"] == "fp32"


def test_shared_encoder_equals_encoder_per_beam(tiny_dir):
    images = frames(5)
    shared = OFACaptioner(str(tiny_dir), device="cpu", share_encoder=True)
    per_beam = OFACaptioner(str(tiny_dir), device="cpu", share_encoder=False)
    assert shared.generate_tokens(images) == per_beam.generate_tokens(images)
    pixels = torch.randn(2, 3, 64, 64)
    a = shared.generator.generate(pixels)
    b = per_beam.generator.generate(pixels)
    for ha, hb in zip(a, b):
        assert [h.tokens for h in ha] == [h.tokens for h in hb]
        assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-5)


def test_decode_settings_are_honoured(tiny_dir):
    short = OFACaptioner(str(tiny_dir), device="cpu", settings=DecodeSettings(beam=2, max_new_tokens=4))
    assert all(len(t) <= 5 for t in short.generate_tokens(frames(3)))
    assert short.describe()["decode"]["beam"] == 2


def test_vocabulary_mismatch_is_explained(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    lines = (broken / "dict.txt").read_text().splitlines()
    # Three dict.txt lines short: the model has 3 trained rows the tokenizer cannot name.
    (broken / "dict.txt").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(ValueError, match=r"the model embeds (\d+) symbols but the tokenizer has only \d+: 3 trained "
                                         r"rows would have no symbol. Official OFA cannot load this pair either"):
        OFACaptioner(str(broken), device="cpu")
    # Two extra lines: official OFA would pad the embedding with random rows; refused, and said so.
    (broken / "dict.txt").write_text("\n".join(lines + ["99990 1", "99991 1"]) + "\n")
    with pytest.raises(ValueError, match=r"the tokenizer has (\d+) symbols but the model embeds only \d+: .*"
                                         r"Official OFA would append 2 randomly initialised rows"):
        OFACaptioner(str(broken), device="cpu")
    (broken / "vocab.bpe").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        OFACaptioner(str(broken), device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a converted directory"):
        load_captioner(f"ofa:{tmp_path / 'missing'}", device="cpu")


def test_cli_captions_files_and_reports_corrupt_ones(tiny_dir, tmp_path, capsys):
    from jobs.caption import main

    paths = []
    for i, arr in enumerate(frames(2)):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(arr).save(paths[-1])
    out = tmp_path / "caps.jsonl"
    assert main(["images", "--model", f"ofa:{tiny_dir}", "--device", "cpu", *map(str, paths), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in paths] and all(r["caption"] for r in rows)
    assert rows[0]["captioner"]["backend"] == "ofa"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    from jobs.common import cli_main

    assert cli_main("clipvip caption", main, ["images", "--model", f"ofa:{tiny_dir}", "--device", "cpu", str(bad)]) == 2
    assert "bad.jpg cannot be decoded" in capsys.readouterr().err


@pytest.mark.parametrize("name,millions", [("tiny", 33), ("medium", 93), ("base", 180), ("large", 470), ("huge", 930)])
def test_flavours_match_the_published_sizes(name, millions):
    with torch.device("meta"):
        model = OFAModel(flavour(name))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.02)
    assert FLAVOURS[name].resnet_layers == {"tiny": (3, 4, 6), "medium": (3, 4, 23), "base": (3, 4, 23)}.get(name, (3, 8, 36))


def test_folding_batchnorm_keeps_features_and_captions(tiny_dir):
    from caption.ofa.checkpoint import build_model, load_converted
    from caption.ofa.generate import OFAGenerator

    cfg, state, _ = load_converted(tiny_dir)
    gen = torch.Generator().manual_seed(3)
    for key in [k for k in state if ".bn" in k or "downsample.1" in k or k.startswith("encoder.resnet.bn1")]:
        if key.endswith(("running_var", "weight")):
            state[key] = 0.5 + torch.rand(state[key].shape, generator=gen)
        elif key.endswith(("running_mean", "bias")):
            state[key] = 0.3 * torch.randn(state[key].shape, generator=gen)
    plain, folded = build_model(cfg, state), build_model(cfg, state).prepare_for_inference("cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    folded.encoder.resnet.fold_batchnorm()  # a second fold is a no-op
    pixels = torch.randn(3, 3, cfg.patch_image_size, cfg.patch_image_size, generator=gen)
    torch.testing.assert_close(folded.encoder.resnet(pixels), plain.encoder.resnet(pixels), rtol=1e-4, atol=1e-4)
    prompt = torch.tensor([0, 5, 6, 2])
    a = OFAGenerator(plain, prompt, BeamConfig()).generate(pixels)
    b = OFAGenerator(folded, prompt, BeamConfig()).generate(pixels)
    assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]
    with pytest.raises(RuntimeError, match="call .eval"):
        build_model(cfg, state).train().encoder.resnet.fold_batchnorm()


def test_threaded_preprocessing_gives_the_same_captions(tiny_dir):
    from concurrent.futures import ThreadPoolExecutor

    from caption.ofa.preprocess import preprocess, resize_batch

    images = [*frames(7), Image.fromarray(frames(1)[0])]
    with ThreadPoolExecutor(3) as pool:
        assert torch.equal(resize_batch(images, 64, pool), resize_batch(images, 64))
    assert preprocess(images, 64).dtype == torch.float32 and preprocess(images, 64).shape == (8, 3, 64, 64)
    plain = OFACaptioner(str(tiny_dir), device="cpu", batch_size=3)
    threaded = OFACaptioner(str(tiny_dir), device="cpu", batch_size=3, preprocess_workers=3)
    assert threaded._prefetch is not None and plain._prefetch is None
    assert threaded.generate_tokens(images) == plain.generate_tokens(images)
    assert threaded.generate([]) == []
    with pytest.raises(ValueError, match="expected an HxWx3 uint8 image"):
        threaded.generate([*frames(4), np.zeros((5, 5), dtype=np.uint8)])  # the bad image is in the prefetched batch


def test_huge_gets_its_official_decode_settings_unless_told_otherwise(tiny_dir, tmp_path):
    huge = tmp_path / "huge_named"
    shutil.copytree(tiny_dir, huge)
    data = json.loads((huge / "config.json").read_text())
    data["model"]["flavour"] = "huge"  # the tiny weights, named huge: only the decode defaults change
    (huge / "config.json").write_text(json.dumps(data))
    decode = OFACaptioner(str(huge), device="cpu").describe()["decode"]
    assert (decode["beam"], decode["length_penalty"], decode["temperature"]) == (10, 0.98, 0.98)
    chosen = OFACaptioner(str(huge), device="cpu", settings=DecodeSettings(beam=3), temperature=1.0).describe()["decode"]
    assert (chosen["beam"], chosen["length_penalty"], chosen["temperature"]) == (3, 1.0, 1.0)
    assert OFACaptioner(str(tiny_dir), device="cpu").describe()["decode"]["beam"] == 5
