"""Omnisource Cross-modal Learning (OCL) losses: contrastive terms between video, frame, subtitle and caption.

Notation: s = exp(logit_scale); A_XY = s * X @ Y.T with rows indexed by X; CE(A) is the mean over
rows of the cross-entropy with the diagonal as target. Every term SUMS its CE parts, exactly as the
official code does (so "vs" is twice CLIP's symmetric loss), and the total is the sum of the terms.

Terms (features: V video, S subtitle, F middle frame, C caption of that frame):
    vs     CE(A_VS) + CE(A_SV)                                        fine-tuning, L(V<->S)
    vc     CE(A_VC) + CE(A_CV)
    fc     CE(A_FC) + CE(A_CF)
    vsc    L(V<->S,C): CE(A_SV) + CE(A_CV) + two video-side CEs whose softmax runs over 2N-1 texts:
           the target text and every text of the other videos; the *other positive* (the same
           video's caption, resp. subtitle) is left out of the denominator.
    joint  one 2N x 2N contrast: X = [V; F], Y = [S; C]; CE(A_XY) + CE(A_YX)
Paper variants: (a) vs+fc, (b) vs+vc, (c) vs+vc+fc, (d) vsc+fc (the default, both pretrain configs).

Distributed: features are all-gathered with :func:`gather_with_grad`, so each rank computes the
loss of the *global* batch, and the backward all-reduces the gathered features' gradients before
slicing out the local part. How it reduces (``gather_grad``) sets the gradient's scale over W ranks,
DDP averaging the parameter gradients afterwards in both cases:
    "sum"   every rank's loss depends on this rank's rows, so their gradients are summed: the
            result is exactly the single-process gradient of the loss on the concatenated batch,
            for tower weights and ``logit_scale`` alike.
    "mean"  what the official code does: Horovod's allgather averages these gradients (since
            Horovod 0.22, which the released Docker image installs), so the towers' gradients are
            1/W of the single-process gradient while ``logit_scale``'s (not gathered) are not. With
            Adam the scale matters through ``eps`` and gradient clipping, which then act as in the
            paper's runs. The default; one process is unaffected.
Both are tested on 2 gloo processes against one process on the combined batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

TERMS = ("vs", "vc", "fc", "vsc", "joint")
_NEEDS = {"vs": "VS", "vc": "VC", "fc": "FC", "vsc": "VSC", "joint": "VSFC"}
_KEYS = {"V": "video_features", "S": "subtitle_features", "F": "frame_features", "C": "caption_features"}
LOGIT_SCALE_MAX = math.log(200.0)


def clamp_logit_scale_(param: torch.Tensor) -> torch.Tensor:
    """Clamp the raw logit scale in place to [0, ln 200], as the official code does every step."""
    with torch.no_grad():
        param.clamp_(0.0, LOGIT_SCALE_MAX)
    return param


GATHER_GRAD = ("mean", "sum")


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, reduce: str) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows, ctx.world, ctx.reduce = dist.get_rank(), x.shape[0], world, reduce
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        if ctx.reduce == "mean":
            grad = grad / ctx.world
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None


def gather_with_grad(x: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Concatenate ``x`` [n, E] over ranks (rank order) with gradient; identity without distributed.

    Every rank must pass the same ``n``. ``reduce`` ("mean" as the official code, or "sum") is how
    the backward combines the ranks' gradients; the module docstring gives the resulting scale.
    """
    if reduce not in GATHER_GRAD:
        raise ValueError(f"gather_grad {reduce!r}: choose one of {GATHER_GRAD}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x, reduce)


def _atleast_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _ce(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def _symmetric(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * x @ y.T  # [N,N]
    return _ce(logits) + _ce(logits.T)


def _two_positive(v: torch.Tensor, s: torch.Tensor, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """L(V<->S,C): text->video CEs for both text sets, video->text CEs over 2N-1 texts each."""
    vs = scale * v @ s.T  # [N,N], row i: video i against subtitles
    vc = scale * v @ c.T  # [N,N], row i: video i against captions
    own = torch.eye(vs.shape[0], dtype=torch.bool, device=vs.device)
    # Video i -> its subtitle: the same video's caption is not a negative, so it leaves the softmax.
    to_sub = torch.cat([vs, vc.masked_fill(own, float("-inf"))], dim=1)  # [N,2N], target column i
    to_cap = torch.cat([vc, vs.masked_fill(own, float("-inf"))], dim=1)
    return _ce(vs.T) + _ce(vc.T) + _ce(to_sub) + _ce(to_cap)


class OCLLoss(nn.Module):
    """Sum of the configured OCL terms; ``forward`` returns ``{"<term>_loss": ..., "loss": total}``.

    Args:
        terms: any of ``TERMS``; default the paper's best, L(V<->S,C) + L(F<->C). Fine-tuning
            uses ``("vs",)`` with the retrieval text passed as ``subtitle_features``.
    """

    def __init__(self, terms: tuple[str, ...] | list[str] = ("vsc", "fc"), gather_grad: str = "mean"):
        super().__init__()
        terms = tuple(terms)
        bad = [t for t in terms if t not in TERMS]
        if bad or not terms or len(set(terms)) != len(terms):
            raise ValueError(f"loss terms {terms!r}: give distinct names from {TERMS}, e.g. ('vsc', 'fc')")
        if gather_grad not in GATHER_GRAD:
            raise ValueError(f"gather_grad {gather_grad!r}: choose one of {GATHER_GRAD}")
        self.terms, self.gather_grad = terms, gather_grad
        self.letters = sorted({c for t in terms for c in _NEEDS[t]})
        self.needs = [_KEYS[c] for c in self.letters]

    def forward(self, features: dict[str, torch.Tensor], logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            features: normalised features [n, E] per modality (``video_features``, ``subtitle_features``,
                ``frame_features``, ``caption_features``; only the ones the terms need), local to this rank.
            logit_scale: the raw learnable log-scale (clamp it beforehand with :func:`clamp_logit_scale_`).
        """
        missing = [k for k in self.needs if k not in features]
        if missing:
            raise ValueError(f"loss terms {self.terms} need {missing}: pass them from the model forward "
                             f"(e.g. give frames= and caption_ids= for 'fc')")
        # Logits in fp32 at least (bf16 features under autocast), float64 stays float64 for tests.
        g = {c: gather_with_grad(_atleast_fp32(features[_KEYS[c]]), self.gather_grad)  # global batch
             for c in self.letters}
        scale = _atleast_fp32(logit_scale).exp()
        with torch.autocast(scale.device.type, enabled=False):  # keep logits fp32 inside autocast regions
            return self._terms(g, scale)

    def _terms(self, g: dict[str, torch.Tensor], scale: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for term in self.terms:
            if term == "vsc":
                out["vsc_loss"] = _two_positive(g["V"], g["S"], g["C"], scale)
            elif term == "joint":
                out["joint_loss"] = _symmetric(torch.cat([g["V"], g["F"]]), torch.cat([g["S"], g["C"]]), scale)
            else:
                out[f"{term}_loss"] = _symmetric(g[term[0].upper()], g[term[1].upper()], scale)
        out["loss"] = torch.stack([out[f"{t}_loss"] for t in self.terms]).sum()
        return out
