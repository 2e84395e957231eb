"""CLIP text tokenisation: load a user's tokenizer, or train a small CLIP-format BPE offline.

Real runs load the tokenizer that ships with the CLIP checkpoint (a local path or hub id). Tests
and the offline demo have no such files, so :func:`train_clip_bpe` learns a byte-level BPE in
CLIP's exact file format (``vocab.json`` + ``merges.txt``, ``</w>`` word-end marks, lower-casing,
``<|startoftext|>``/``<|endoftext|>`` as the two highest ids) that ``CLIPTokenizerFast`` loads
unchanged. End-of-text being the highest id keeps CLIP's ``argmax`` pooling rule valid.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Iterable

import regex

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_WORD_RE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
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
    merges: list[tuple[str, str]] = []
    words = dict(counts)
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, c in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), c = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if c < min_pair_count:
            break
        merges.append((a, b))
        merged = {}
        for word, cnt in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + cnt
        words = merged
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
