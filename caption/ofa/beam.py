"""Beam search with the semantics of OFA's fairseq ``SequenceGenerator`` (``models/sequence_generator.py``).

What is kept exactly, because captions change when any of it changes:

- the decoder starts from ``bos``; at most ``max_len`` tokens are generated, then EOS is forced, so a
  hypothesis holds at most ``max_len + 1`` tokens including its EOS;
- per step, in this order: EOS banned while ``step < min_len``; NaN -> -inf; pad banned; unk penalty;
  everything but EOS banned at ``step == max_len``; n-gram repeat blocking over the prefix, BOS
  included;
- candidates: the top ``2 * beam`` of (cumulative score + log-prob) over all beams of a sentence (only
  beam 0 at step 0); an EOS among the first ``beam`` candidates finalises that hypothesis with score
  ``cumulative / (step + 1) ** length_penalty``; the first ``beam`` non-EOS candidates continue;
- a sentence is done once ``beam`` hypotheses are finalised; results are sorted by score.

A sentence can end without any hypothesis only when every candidate, EOS at the last step included,
scored -inf: a model emitting NaN (turned into -inf above) or -inf log-probabilities. Official OFA
does not get that far: its fork of fairseq's generator asserts that a finished sentence holds
``beam`` hypotheses and stops with ``AssertionError: 16 < 16`` (at the default 16 tokens). Here
``beam_search`` raises ``BeamSearchError`` naming the sentences and whether NaN was seen.

Unlike fairseq, finished sentences are masked rather than removed from the batch: fixed shapes and
fewer copies on GPU, identical results (a finished sentence never influences another).

Shape legend: B sentences, K beams, N = B*K hypotheses, V vocabulary, J candidates (<= 2K).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

# step_fn(tokens (N, step+1), step, reorder (N,) or None) -> float32 log-probs (N, V). ``reorder``
# says which previous hypothesis each row continues, so the caller can permute its caches.
StepFn = Callable[[torch.Tensor, int, "torch.Tensor | None"], torch.Tensor]


class BeamSearchError(RuntimeError):
    """A sentence ended with no hypothesis: the model's scores were NaN or -inf throughout.

    ``sentences`` are the positions (in the batch) of the sentences left without a hypothesis, and
    ``nan`` those of them whose log-probabilities were NaN at some step.
    """

    def __init__(self, message: str, sentences: list[int], nan: list[int]) -> None:
        super().__init__(message)
        self.sentences, self.nan = sentences, nan


@dataclasses.dataclass(kw_only=True, frozen=True)
class BeamConfig:
    beam: int = 5
    max_len: int = 16
    min_len: int = 1
    no_repeat_ngram_size: int = 3
    length_penalty: float = 1.0
    normalize_scores: bool = True
    unk_penalty: float = 0.0
    bos: int = 0
    pad: int = 1
    eos: int = 2
    unk: int = 3

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")
        if not 0 <= self.min_len <= self.max_len:
            raise ValueError(f"need 0 <= min_len <= max_len, got min_len={self.min_len} max_len={self.max_len}")


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # generated tokens, ending with EOS, BOS excluded
    score: float  # length-normalised log-probability


def block_repeated_ngrams(tokens: torch.Tensor, lprobs: torch.Tensor, n: int) -> None:
    """Set -inf (in place) on every token that would complete an n-gram already present in ``tokens``."""
    length = tokens.shape[1]
    if n <= 0 or length < n:
        return
    windows = tokens.unfold(1, n, 1)  # N, W, n
    context = tokens[:, length - n + 1 :]  # N, n-1
    match = (windows[:, :, :-1] == context[:, None, :]).all(-1) if n > 1 else torch.ones_like(windows[:, :, 0], dtype=torch.bool)
    hits = torch.zeros_like(lprobs)
    hits.scatter_add_(1, windows[:, :, -1], match.to(lprobs.dtype))
    lprobs.masked_fill_(hits > 0, float("-inf"))


def beam_search(step_fn: StepFn, batch_size: int, vocab_size: int, cfg: BeamConfig, device: torch.device | str = "cpu") -> list[list[Hypothesis]]:
    """Run the search for ``batch_size`` sentences; returns each sentence's hypotheses, best first."""
    k, b, v = cfg.beam, batch_size, vocab_size
    if v - 1 < k:
        raise ValueError(f"beam {k} needs a vocabulary of at least {k + 1} symbols, got {v}")
    n, max_len, cand_size = b * k, cfg.max_len, 2 * k
    neg_inf = float("-inf")
    tokens = torch.full((n, max_len + 2), cfg.pad, dtype=torch.long, device=device)
    tokens[:, 0] = cfg.bos
    scores = torch.zeros(n, max_len + 1, device=device)
    ignore = torch.zeros(b, k, dtype=torch.bool, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    # Finalised hypotheses; slot ``k`` is a spare that absorbs rejected candidates (see below).
    fin_tokens = torch.full((b, k + 1, max_len + 1), cfg.pad, dtype=torch.long, device=device)
    fin_scores = torch.full((b, k + 1), neg_inf, device=device)
    fin_len = torch.zeros(b, k + 1, dtype=torch.long, device=device)
    fin_count = torch.zeros(b, dtype=torch.long, device=device)
    offsets = (torch.arange(b, device=device) * k)[:, None]
    rows_b = torch.arange(b, device=device)[:, None].expand(b, k)
    done = _AllDone(torch.device(device))
    reorder: torch.Tensor | None = None
    saw_nan = torch.zeros(b, dtype=torch.bool, device=device)  # per sentence; read only on failure

    for step in range(max_len + 1):
        lprobs = step_fn(tokens[:, : step + 1], step, reorder).float()
        if step < cfg.min_len:
            lprobs[:, cfg.eos] = neg_inf
        nan = lprobs.isnan()
        saw_nan |= nan.view(b, -1).any(1)
        lprobs.masked_fill_(nan, neg_inf)
        lprobs[:, cfg.pad] = neg_inf
        lprobs[:, cfg.unk] -= cfg.unk_penalty
        if step >= max_len:
            lprobs[:, : cfg.eos] = neg_inf
            lprobs[:, cfg.eos + 1 :] = neg_inf
        block_repeated_ngrams(tokens[:, : step + 1], lprobs, cfg.no_repeat_ngram_size)

        lp = lprobs.view(b, k, v)
        lp = lp[:, :1] if step == 0 else lp + scores.view(b, k, -1)[:, :, step - 1 : step]
        flat = lp.reshape(b, -1)
        cand_scores, cand_flat = flat.topk(min(cand_size, flat.shape[1] - 1), dim=1)  # B, J
        cand_beams, cand_tokens = cand_flat // v, cand_flat % v
        cand_rows = cand_beams + offsets

        eos_mask = cand_tokens.eq(cfg.eos) & cand_scores.ne(neg_inf)
        eos_mask[:, :k] &= ~ignore
        top_eos = eos_mask[:, :k] & ~finished[:, None]
        slot = fin_count[:, None] + top_eos.long().cumsum(1) - 1
        accept = top_eos & (slot < k)
        # Dense, sync-free finalisation: every top-k candidate is written, rejected ones to the spare slot k.
        target = torch.where(accept, slot, k)  # B, K
        seq = tokens[cand_rows[:, :k], 1 : step + 2].clone()  # B, K, step+1
        seq[:, :, step] = cfg.eos
        final = cand_scores[:, :k] / (step + 1) ** cfg.length_penalty if cfg.normalize_scores else cand_scores[:, :k]
        fin_tokens[rows_b, target, : step + 1] = seq
        fin_scores[rows_b, target] = final
        fin_len[rows_b, target] = step + 1
        fin_count += accept.sum(1)
        finished |= fin_count >= k
        if step == max_len or done.check(finished):
            break

        eos_mask[:, :k] |= ignore
        active_mask = eos_mask.long() * cand_size + torch.arange(eos_mask.shape[1], device=device)
        new_ignore, active = active_mask.topk(k, dim=1, largest=False)
        ignore = new_ignore >= cand_size
        reorder = cand_rows.gather(1, active).view(-1)
        tokens[:, : step + 1] = tokens[reorder, : step + 1]
        tokens.view(b, k, -1)[:, :, step + 1] = cand_tokens.gather(1, active)
        if step > 0:
            scores[:, :step] = scores[reorder, :step]
        scores.view(b, k, -1)[:, :, step] = cand_scores.gather(1, active)

    out = _collect(fin_tokens[:, :k].cpu(), fin_scores[:, :k].cpu(), fin_len[:, :k].cpu(), fin_count.cpu())
    empty = [i for i, hyps in enumerate(out) if not hyps]
    if empty:
        nan_seen = saw_nan.cpu().tolist()
        nan_in = [i for i in empty if nan_seen[i]]
        why = (f"the model's log-probabilities were NaN for sentence(s) {nan_in[:10]}" if nan_in
               else "every continuation, EOS included, scored -inf")
        raise BeamSearchError(f"beam search ended with no hypothesis for sentence(s) {empty[:10]} of {b}: {why}",
                              empty, nan_in)
    return out


class _AllDone:
    """Answers "is every sentence finished?" without stalling a GPU.

    On CPU the answer is immediate. On GPU each step's flag is copied to pinned host memory without
    waiting, and the loop reads the previous step's flag, so the host stays one step ahead of the device
    instead of draining its queue every step. The cost is at most one extra step after the last
    sentence finishes, which changes nothing: finished sentences accept no more hypotheses.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def check(self, finished: torch.Tensor) -> bool:
        if not self.cuda:
            return bool(finished.all())
        previous, self.pending = self.pending, None
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(finished.all(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (flag, event)
        if previous is None:
            return False
        previous[1].synchronize()
        return bool(previous[0])


def _collect(fin_tokens: torch.Tensor, fin_scores: torch.Tensor, fin_len: torch.Tensor, fin_count: torch.Tensor) -> list[list[Hypothesis]]:
    out = []
    for b in range(fin_tokens.shape[0]):
        hyps = [
            Hypothesis(tokens=fin_tokens[b, j, : int(fin_len[b, j])].tolist(), score=float(fin_scores[b, j]))
            for j in range(int(fin_count[b]))
        ]
        out.append(sorted(hyps, key=lambda h: -h.score))
    return out
