"""The transformers image-to-text captioner (caption/hf.py) on tiny random BLIP, GIT and ViT+GPT-2 built offline.
Run: ``.venv/bin/python -m pytest tests/caption/test_hf.py -q``."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from caption.hf import HFCaptioner
from demo.tiny_hf import write_debug_model
from caption.protocol import Captioner, DecodeSettings
from caption.registry import load_captioner


ARCHS = ("blip", "git", "vision-encoder-decoder")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {arch: write_debug_model(tmp_path_factory.mktemp(arch), seed=1, arch=arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def blip_dir(model_dirs):
    return model_dirs["blip"]


def _images(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_through_registry_and_matches_raw_generate(model_dirs, arch):
    settings = DecodeSettings(beam=3, max_new_tokens=7, no_repeat_ngram_size=2)
    cap = load_captioner(f"hf:{model_dirs[arch]}", device="cpu", settings=settings)
    assert isinstance(cap, Captioner) and isinstance(cap, HFCaptioner) and cap.model_type == arch
    images = _images(3)
    texts = cap.generate(images)
    assert len(texts) == 3 and all(t for t in texts)
    # Same result as calling transformers directly, image by image (batching keeps order and content).
    for image, text in zip(images, texts):
        pixels = cap.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            ids = cap.model.generate(pixel_values=pixels, num_beams=3, max_new_tokens=7, min_new_tokens=1,
                                     no_repeat_ngram_size=2, early_stopping=True, do_sample=False)
        assert text == " ".join(cap.tokenizer.decode(ids[0], skip_special_tokens=True).split())
        tokens = text.split()
        assert len(tokens) <= 7  # every debug token starts a word
        bigrams = list(zip(tokens, tokens[1:]))
        assert len(bigrams) == len(set(bigrams))  # no_repeat_ngram_size=2 holds


def test_describe_records_weights_and_settings(blip_dir):
    cap = HFCaptioner(str(blip_dir), device="cpu", settings=DecodeSettings(beam=1, max_new_tokens=4))
    info = cap.describe()
    expected = hashlib.sha256((blip_dir / "model.safetensors").read_bytes()).hexdigest()
    assert info["weights_sha256"] == {"model.safetensors": expected}
    assert info["model_type"] == "blip" and info["settings"]["max_new_tokens"] == 4 and info["name"] == f"hf:{blip_dir}"
    assert cap.generate([]) == []


def test_bad_model_path_names_it(tmp_path):
    with pytest.raises(ValueError, match="could not be loaded"):
        HFCaptioner(str(tmp_path / "missing"), device="cpu")
