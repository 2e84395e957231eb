"""Byte-level BPE pieces shared by the CLIP tokenizer (model/) and the OFA tokenizer (caption/):
GPT-2's byte-to-character table and a deterministic merge learner."""

from __future__ import annotations

import collections
import functools
from typing import Mapping


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
