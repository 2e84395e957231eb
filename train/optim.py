"""AdamW with the official CLIP-ViP parameter groups, and the warmup + cosine schedule the official
code uses (1% linear warmup, then cosine down to a floor of 1e-8 of the base lr).

Weight decay is skipped for parameters whose name contains any of ``NO_DECAY`` - the official list,
written for BERT-style ``LayerNorm`` names. HF CLIP (and so this model) names its norms
``layer_norm1/2``, ``pre_layrnorm``, ``post_layernorm`` and ``final_layer_norm``, so their WEIGHTS
match no entry and ARE decayed (their biases are not, through 'bias'); embeddings, ``added_cls`` and
``temporal_embedding`` are decayed too. We replicate this faithfully rather than "fix" it, because the
published numbers were trained this way.

``torch.optim.AdamW`` applies the decoupled decay before the Adam update (``p*(1-lr*wd) - lr*u``);
the official HF copy applies it after (``(p - lr*u)*(1-lr*wd)``). They differ by ``lr^2*wd*u``,
about 1e-13 relative at lr 1e-6, so the standard (and fused) optimizer is used.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from train.checks import out_of_range

NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "logit_scale")


@dataclasses.dataclass(kw_only=True)
class OptimConfig:
    """AdamW, schedule and clipping; defaults are the official pretraining values."""

    lr: float = 5e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_ratio: float = 0.01
    grad_clip: float = 5.0  # max global grad norm; 0 disables
    lr_mul: float = 1.0  # learning-rate multiplier for parameters whose name starts with lr_mul_prefix
    lr_mul_prefix: str = ""  # e.g. "logit_scale" with lr_mul 10 (DiDeMo B/16)
    min_lr_ratio: float = 1e-8  # the official schedule's floor

    def problems(self, section: str = "optim") -> list[str]:
        """Values out of range, each named (empty when none): each would crash the run or train nothing."""
        p = out_of_range(f"{section}.lr", self.lr, 0, lo_open=True, hint=" (the paper's post-pretraining lr is 5e-6)")
        p += out_of_range(f"{section}.weight_decay", self.weight_decay, 0)
        p += out_of_range(f"{section}.eps", self.eps, 0, lo_open=True)
        p += out_of_range(f"{section}.warmup_ratio", self.warmup_ratio, 0, 1)
        p += out_of_range(f"{section}.grad_clip", self.grad_clip, 0, hint=" (0 disables clipping)")
        p += out_of_range(f"{section}.lr_mul", self.lr_mul, 0, lo_open=True)
        p += out_of_range(f"{section}.min_lr_ratio", self.min_lr_ratio, 0, 1)
        p += [f"{section}.betas[{i}]={beta!r} must be in [0, 1)" for i, beta in enumerate(self.betas)
              if not 0 <= beta < 1]
        return p


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Up to four groups: (decay | no decay) x (base lr | lr_mul), named for logging."""
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not any(nd in name for nd in NO_DECAY)
        mul = bool(cfg.lr_mul_prefix) and name.startswith(cfg.lr_mul_prefix)
        g = groups.setdefault((decay, mul), {
            "params": [], "names": [], "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr": cfg.lr * (cfg.lr_mul if mul else 1.0), "group": f"{'decay' if decay else 'no_decay'}"
                                                                  f"{'_lrmul' if mul else ''}"})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Fused AdamW (CUDA and CPU): one kernel per step, and it can skip a step on the device when
    told the gradients are not finite (``train_step``), so the loop never waits to find out."""
    groups = param_groups(model, cfg)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


def warmup_cosine(total_steps: int, warmup_ratio: float, floor: float = 1e-8):
    """LR multiplier: linear warmup over ``warmup_ratio * total_steps``, then cosine to the floor."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # first step trains at lr/warmup, never at 0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(floor, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


def build_scheduler(opt: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, cfg.warmup_ratio, cfg.min_lr_ratio))
