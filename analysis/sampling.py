"""Seeded samples of N texts per corpus, the unit the NMI analysis clusters (the paper uses N=1000)."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from analysis.corpora import Corpus, CorpusError
from common.errors import UserError


@dataclasses.dataclass(kw_only=True, frozen=True)
class Sample:
    """``n`` texts drawn without replacement from one corpus with one seed."""

    corpus: str
    seed: int
    indices: np.ndarray  # positions in the population (Corpus.texts, or its unique texts), sorted
    texts: tuple[str, ...]


def corpus_rng(seed: int, corpus_name: str) -> np.random.Generator:
    """The generator for (seed, corpus): adding or reordering other corpora never changes this sample."""
    return np.random.default_rng([seed, zlib.crc32(corpus_name.encode("utf-8"))])


def check_sizes(corpora: list[Corpus], n: int, *, unique: bool = False) -> None:
    """Refuse, in one message, every corpus with fewer than ``n`` texts to draw from."""
    short = []
    for corpus in corpora:
        population = corpus.unique_texts() if unique else corpus.texts
        if len(population) < n:
            short.append((corpus, len(population)))
    if short:
        what = "unique non-empty" if unique else "non-empty"
        each = "; ".join(f"{c.name!r} ({c.source}) has {size} ({c.n_empty} empty, {c.n_duplicates} duplicates)"
                         for c, size in short)
        smallest = min(size for _, size in short)
        raise CorpusError(f"{len(short)} corpus(es) hold fewer {what} texts than the sample size n={n}: {each}; "
                          f"lower n (--n {smallest}) or give them more text")


def draw_sample(corpus: Corpus, n: int, seed: int, *, unique: bool = False) -> Sample:
    """Draw ``n`` of the corpus's non-empty texts without replacement.

    With ``unique`` the population is the de-duplicated texts; otherwise a text that occurs twice in
    the corpus is twice as likely to be drawn, as in the corpus itself.

    Raises:
        CorpusError: the corpus holds fewer than ``n`` non-empty texts.
    """
    if n < 2:
        raise UserError(f"sample size n={n} is too small; use at least 2 texts per corpus (the paper uses 1000)")
    population = corpus.unique_texts() if unique else corpus.texts
    if len(population) < n:
        what = "unique non-empty" if unique else "non-empty"
        raise CorpusError(
            f"corpus {corpus.name!r} ({corpus.source}) has only {len(population)} {what} texts "
            f"({corpus.n_empty} empty, {corpus.n_duplicates} duplicates), fewer than the sample size n={n}; "
            f"lower n (--n {len(population)}) or give the corpus more text"
        )
    idx = np.sort(corpus_rng(seed, corpus.name).choice(len(population), size=n, replace=False))
    return Sample(corpus=corpus.name, seed=seed, indices=idx, texts=tuple(population[i] for i in idx))
