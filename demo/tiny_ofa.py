"""A tiny random OFA with tiny BPE files, written like a converted model directory.

``write_tiny_ofa(out_dir, seed)`` produces ``model.safetensors``, ``config.json``, ``encoder.json``,
``vocab.bpe`` and ``dict.txt``, loadable with ``load_captioner('ofa:<out_dir>')``. The BPE is learnt here
from a few caption-like sentences, and ``dict.txt`` lists the GPT-2-style ids in a shuffled order so the
fairseq remap is exercised. Weights are random, nudged so that decoding favours whole words and stops
on EOS: captions are nonsense but non-empty word sequences, which is what offline tests and the demo
need from a captioner.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import torch

from caption.ofa.checkpoint import build_model, save_converted
from caption.ofa.config import debug_config
from caption.ofa.tokenizer import OFATokenizer, bytes_to_unicode
from common.bpe import learn_bpe_merges

CORPUS = [
    "a red circle moving to the left on a black background",
    "a blue square sliding to the right across the screen",
    "a green triangle moving up in a dark room",
    "a yellow star moving down slowly",
    "a man riding a horse on a beach",
    "a woman holding an umbrella in the rain",
    "two dogs playing with a ball in the grass",
    "a plate of food on a wooden table",
    "a person cooking in a kitchen",
    "a group of people standing on a street",
]
NUM_CODES, NUM_BINS = 16, 10


def train_bpe(corpus: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE learnt greedily (most frequent pair, ties by pair order): GPT-2-format vocab and merges."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = Counter(piece for text in corpus for piece, _ in pre.pre_tokenize_str(text))
    merges = learn_bpe_merges({tuple(w): c for w, c in words.items()}, num_merges)
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return vocab, merges


def write_bpe_files(out_dir: str | Path, seed: int = 0, num_merges: int = 200, corpus: list[str] | None = None) -> Path:
    """``encoder.json``, ``vocab.bpe`` and a shuffled ``dict.txt`` in ``out_dir``, learnt from ``corpus``
    (default ``CORPUS``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_bpe(corpus or CORPUS, num_merges)
    (out / "encoder.json").write_text(json.dumps(vocab, ensure_ascii=True))
    (out / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    ids = list(vocab.values())
    random.Random(seed).shuffle(ids)
    (out / "dict.txt").write_text("".join(f"{i} {1000 - n}\n" for n, i in enumerate(ids)))
    return out


def write_tiny_ofa(out_dir: str | Path, seed: int = 0, *, corpus: list[str] | None = None,
                   patch_image_size: int = 64) -> Path:
    """Write a loadable tiny OFA model directory (a few MB) and return its path.

    ``corpus`` is the text its BPE is learnt from (default ``CORPUS``); a model that is going to be
    fine-tuned wants the words of its captions among the merges, as a real OFA's vocabulary has them.
    ``patch_image_size`` is the input resolution (a multiple of 16).
    """
    out = write_bpe_files(out_dir, seed, corpus=corpus)
    tok = OFATokenizer(out, num_codes=NUM_CODES, num_bins=NUM_BINS)
    cfg = dataclasses.replace(debug_config(len(tok)), patch_image_size=patch_image_size)
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        # Push the decoder's output towards word-initial pieces (" red", " circle") and EOS, so that
        # random weights still read as a short sequence of words.
        direction = torch.randn(cfg.embed_dim)
        direction /= direction.norm()
        words = [i for i, s in enumerate(tok.dictionary.symbols) if s.isdigit() and tok.bpe.decoder.get(int(s), "").startswith("\u0120") and len(tok.bpe.decoder[int(s)]) > 2]
        model.embed_tokens.weight[words] += 1.5 * direction
        model.embed_tokens.weight[tok.eos] += 1.2 * direction
        model.decoder.layer_norm.bias.copy_(2.0 * direction)
        # Damp the newest token's own embedding so the next word depends on context, not on repeating it.
        model.decoder.layernorm_embedding.weight.mul_(0.05)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_converted(out, cfg, state, {"num_codes": NUM_CODES, "num_bins": NUM_BINS, "source": f"write_tiny_ofa(seed={seed})"})
    return out
