"""Beam search (caption/ofa/beam.py) against exhaustive search and greedy decoding on toy scorers.

Run: .venv/bin/python -m pytest tests/caption/test_ofa_beam.py -q
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from caption.ofa.beam import BeamConfig, BeamSearchError, beam_search, block_repeated_ngrams

BOS, PAD, EOS, UNK = 0, 1, 2, 3


def toy_step_fn(vocab: int, seed: int, allowed: list[int] | None = None):
    """Log-probs depend on (last token, position) through a fixed random table; stateless.

    With ``allowed``, every other token gets probability 0, so a large vocabulary (which fairseq's
    candidate count needs) can still have a search space small enough to enumerate.
    """
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, 20, vocab, generator=gen) * 2.0
    if allowed is not None:
        banned = torch.ones(vocab, dtype=torch.bool)
        banned[allowed] = False
        table[:, :, banned] = -math.inf

    def step_fn(tokens: torch.Tensor, step: int, reorder: torch.Tensor | None) -> torch.Tensor:
        return torch.log_softmax(table[tokens[:, -1], step], dim=-1)

    return step_fn


def sequence_score(step_fn, seq: list[int], cfg: BeamConfig) -> float:
    """Normalised score of ``seq`` (ending in EOS) under the same masking rules, -inf if not allowed."""
    prefix = [cfg.bos]
    total = 0.0
    for step, tok in enumerate(seq):
        lp = step_fn(torch.tensor([prefix]), step, None)[0].clone()
        if step < cfg.min_len:
            lp[cfg.eos] = -math.inf
        lp[cfg.pad] = -math.inf
        if step >= cfg.max_len:
            mask = torch.ones_like(lp, dtype=torch.bool)
            mask[cfg.eos] = False
            lp[mask] = -math.inf
        block_repeated_ngrams(torch.tensor([prefix]), lp[None], cfg.no_repeat_ngram_size)
        total += float(lp[tok])
        prefix.append(tok)
    return total / len(seq) ** cfg.length_penalty


def exhaustive_best(step_fn, words: list[int], cfg: BeamConfig) -> tuple[list[int], float]:
    best, best_score = None, -math.inf
    for length in range(cfg.min_len, cfg.max_len + 1):
        for body in itertools.product(words, repeat=length):
            seq = [*body, EOS]
            score = sequence_score(step_fn, seq, cfg)
            if score > best_score:
                best, best_score = seq, score
    return best, best_score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_finds_the_exhaustive_best(seed):
    # 3 possible words and at most 3 of them: 39 sequences, all kept by a 40-wide beam.
    vocab, words = 50, [4, 5, 6]
    cfg = BeamConfig(beam=40, max_len=3, no_repeat_ngram_size=2)
    step_fn = toy_step_fn(vocab, seed, allowed=[*words, EOS])
    hyps = beam_search(step_fn, 1, vocab, cfg)[0]
    best, best_score = exhaustive_best(step_fn, words, cfg)
    assert hyps[0].tokens == best
    assert hyps[0].score == pytest.approx(best_score, abs=1e-5)
    for h in hyps:  # every finalised score is the true normalised score of its sequence
        assert h.score == pytest.approx(sequence_score(step_fn, h.tokens, cfg), abs=1e-5)


def test_caption_settings_invariants():
    vocab = 12
    cfg = BeamConfig(beam=5, max_len=16, no_repeat_ngram_size=3)
    step_fn = toy_step_fn(vocab, 7)
    results = beam_search(step_fn, 4, vocab, cfg)
    assert len(results) == 4
    for hyps in results:
        assert len(hyps) == cfg.beam
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        for h in hyps:
            assert 2 <= len(h.tokens) <= cfg.max_len + 1  # min_len 1, at most 16 tokens + EOS
            assert h.tokens[-1] == EOS and EOS not in h.tokens[:-1] and PAD not in h.tokens
            seq = [BOS, *h.tokens[:-1]]
            trigrams = list(zip(seq, seq[1:], seq[2:]))
            assert len(trigrams) == len(set(trigrams)), f"repeated trigram in {seq}"
    # same batch, same answers: sentences in a batch do not influence each other
    single = beam_search(step_fn, 1, vocab, cfg)[0]
    assert [h.tokens for h in single] == [h.tokens for h in results[0]]


def test_beam_one_equals_greedy():
    vocab = 10
    cfg = BeamConfig(beam=1, max_len=16, no_repeat_ngram_size=3)
    step_fn = toy_step_fn(vocab, 3)
    prefix, out = [BOS], []
    for step in range(cfg.max_len + 1):
        lp = step_fn(torch.tensor([prefix]), step, None)[0].clone()
        if step < cfg.min_len:
            lp[EOS] = -math.inf
        lp[PAD] = -math.inf
        if step >= cfg.max_len:
            keep = lp[EOS].clone()
            lp[:] = -math.inf
            lp[EOS] = keep
        block_repeated_ngrams(torch.tensor([prefix]), lp[None], 3)
        tok = int(lp.argmax())
        out.append(tok)
        prefix.append(tok)
        if tok == EOS:
            break
    assert beam_search(step_fn, 1, vocab, cfg)[0][0].tokens == out


def test_ngram_blocking_bans_only_completing_tokens():
    tokens = torch.tensor([[0, 5, 6, 7, 5, 6]])
    lp = torch.zeros(1, 10)
    block_repeated_ngrams(tokens, lp, 3)
    assert torch.isinf(lp[0, 7]) and torch.isfinite(lp[0, [0, 1, 2, 3, 4, 5, 6, 8, 9]]).all()


def test_bad_beam_config_is_rejected():
    with pytest.raises(ValueError, match="min_len"):
        BeamConfig(min_len=5, max_len=2)
    with pytest.raises(ValueError, match="vocabulary"):
        beam_search(toy_step_fn(4, 0), 1, 4, BeamConfig(beam=5))


def test_nan_scores_end_in_a_named_error():
    """NaN log-probabilities become -inf (as in fairseq); a sentence left with no finite candidate,
    not even EOS at the last step, is reported by number, the others' results are not returned
    half-made."""
    good = toy_step_fn(12, seed=3)

    def step_fn(tokens, step, reorder):
        out = good(tokens, step, reorder)
        out[3:6] = float("nan")  # sentence 1 of 3 (beams 3..5) scores NaN throughout
        return out

    cfg = BeamConfig(beam=3, max_len=4, no_repeat_ngram_size=0)
    with pytest.raises(BeamSearchError, match=r"no hypothesis for sentence\(s\) \[1\] of 3: the model's "
                                              r"log-probabilities were NaN for sentence\(s\) \[1\]"):
        beam_search(step_fn, 3, 12, cfg)

    def all_banned(tokens, step, reorder):
        return torch.full((tokens.shape[0], 12), -math.inf)

    with pytest.raises(BeamSearchError, match=r"every continuation, EOS included, scored -inf"):
        beam_search(all_banned, 1, 12, cfg)
    # A NaN at one step for one beam does not sink the sentence: the other beams carry on.
    def one_nan(tokens, step, reorder):
        out = good(tokens, step, reorder)
        if step == 1:
            out[0] = float("nan")
        return out

    assert all(hyps for hyps in beam_search(one_nan, 2, 12, cfg))
