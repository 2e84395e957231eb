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
from typing import Iterable

from common.bpe import bytes_to_unicode, learn_bpe_merges  # noqa: F401 - shared with the OFA tokenizer
from common.errors import MissingInputError, UserError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def _word_re():
    """CLIP's pre-tokenisation pattern. It needs the ``regex`` package for Unicode letter classes,
    imported on first use so that ``model`` itself needs only torch and safetensors."""
    import regex

    return regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def _words(text: str) -> list[str]:
    return _word_re().findall(" ".join(text.lower().split()))


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

    hint = ("give a folder with vocab.json and merges.txt (or tokenizer.json), or a hub id on a machine with "
            "network access")
    try:
        tokenizer = CLIPTokenizerFast.from_pretrained(path_or_id)
    except OSError as e:
        raise MissingInputError(f"no CLIP tokenizer at {path_or_id!r}: {hint}") from e
    except ValueError as e:  # files that are there but are not a tokenizer's
        raise UserError(f"{path_or_id!r} is not a CLIP tokenizer ({e}): {hint}".replace("\n", " ")) from e
    # Where it finds no vocabulary files, transformers 5 builds an empty tokenizer (only the special
    # tokens) instead of failing; a byte-level BPE always holds the 256 byte symbols.
    if len(tokenizer) < 256:
        raise MissingInputError(f"no CLIP tokenizer at {path_or_id!r} (no vocabulary found, {len(tokenizer)} "
                                f"tokens): {hint}")
    return tokenizer


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict:
    """Pad to ``max_length`` with end-of-text and truncate, as the official code does."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
