"""CLIP text tokenisation: load a user's tokenizer, or train a small CLIP-format BPE offline.

Real runs load the tokenizer that ships with the CLIP checkpoint (a local path or hub id). Tests
and the offline demo have no such files, so :func:`train_clip_bpe` learns a byte-level BPE in
CLIP's exact file format (``vocab.json`` + ``merges.txt``, ``</w>`` word-end marks, lower-casing,
``<|startoftext|>``/``<|endoftext|>`` as the two highest ids) that ``CLIPTokenizerFast`` loads
unchanged. End-of-text being the highest id keeps CLIP's ``argmax`` pooling rule valid.
"""

from __future__ import annotations

import collections
import functools
import json
from pathlib import Path
from typing import Iterable, Mapping

import regex

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_WORD_RE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table (printable Latin-1 maps to itself).

    Cached: callers only read it."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(" ".join(text.lower().split()))


def learn_bpe_merges(word_counts: Mapping[tuple[str, ...], int], num_merges: int,
                     min_count: int = 1) -> list[tuple[str, str]]:
    """Greedy byte-pair encoding over pre-split words: repeatedly merge the most frequent adjacent pair
    (ties broken by the smallest pair, so the result is deterministic) until ``num_merges`` merges or no
    pair occurs ``min_count`` times. Shared by the CLIP tokenizer here and the tiny OFA tokenizer."""
    words = dict(word_counts)
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, c in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_count:
            break
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for word, cnt in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + cnt
        words = merged
    return merges


def train_clip_bpe(texts: Iterable[str], out_dir: str | Path, num_merges: int = 400, min_pair_count: int = 2) -> Path:
    """Learn up to ``num_merges`` BPE merges from ``texts``; write a CLIP tokenizer to ``out_dir``.

    Returns ``out_dir``, loadable with ``CLIPTokenizerFast.from_pretrained(out_dir)``.
    """
    byte_map = bytes_to_unicode()
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for text in texts:
        for word in _words(text):
            chars = [byte_map[b] for b in word.encode("utf-8")]
            chars[-1] += "</w>"
            counts[tuple(chars)] += 1
    if not counts:
        raise ValueError("train_clip_bpe needs at least one non-empty text")
    merges = learn_bpe_merges(counts, num_merges, min_count=min_pair_count)
    base = list(byte_map.values())
    vocab_list = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{x} {y}" for x, y in merges) + "\n")
    from transformers import CLIPTokenizerFast

    tok = CLIPTokenizerFast(vocab=vocab, merges=list(merges),
                            bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    tok.save_pretrained(str(out))
    return out


def load_tokenizer(path_or_id: str):
    """The CLIP tokenizer of a checkpoint folder or hub id (fast version)."""
    from transformers import CLIPTokenizerFast

    try:
        return CLIPTokenizerFast.from_pretrained(path_or_id)
    except OSError as e:
        raise FileNotFoundError(
            f"no CLIP tokenizer at {path_or_id!r}: give a folder with vocab.json and merges.txt (or "
            f"tokenizer.json), or a hub id on a machine with network access"
        ) from e


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict:
    """Pad to ``max_length`` with end-of-text and truncate, as the official code does."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
