"""OFA transformer blocks: attention with a per-head output scale, pre-norm layers with NormFormer extras.

Shape legend: B batch (images or hypotheses), G attention groups (images when beams share K/V),
Q queries per group, S/T key and query lengths, H heads, D head dim, C model width.

Per layer, in the official order (``unify_transformer_layer.py``):
``x + attn_ln(out_proj(head_scale * attention(ln(x))))`` then
``x * w_resid + fc2(ffn_layernorm(act(fc1(final_layer_norm(x)))))``.
Queries are scaled by ``(D * attn_scale_factor) ** -0.5``, not ``D ** -0.5``.

Dropout (``dropout`` attribute, 0 unless fine-tuning sets it) sits where the official layers put it:
on each residual branch after attention (after ``attn_ln``) and after ``fc2``. It is a no-op in eval
mode, so captioning never sees it. Drop-path, which the official caption fine-tuning also uses, is
not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caption.ofa.config import OFAConfig


def aligned_bias(bias: torch.Tensor) -> torch.Tensor:
    """Same values with the last dim's stride padded to 8 elements, so fused SDPA kernels take it as is."""
    s = bias.shape[-1]
    padded = bias.new_zeros(*bias.shape[:-1], (s + 7) // 8 * 8)
    padded[..., :s] = bias
    return padded[..., :s]


def _maybe_ln(enabled: bool, dim: int) -> nn.LayerNorm | None:
    return nn.LayerNorm(dim) if enabled else None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` that costs nothing when off (p = 0 or eval mode)."""
    return F.dropout(x, p, training=True) if p > 0 and training else x


class Attention(nn.Module):
    """Multi-head attention whose callers supply an additive position bias (no causal mask needed)."""

    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.scaling = float(cfg.head_dim * cfg.attn_scale_factor) ** -0.5
        self.q_proj, self.k_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.v_proj, self.out_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.head_scale = nn.Parameter(torch.ones(cfg.heads)) if cfg.scale_heads else None

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C)`` -> ``(B, H, L, D)``."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def attend(self, q_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``q_in`` (G, Q, C) against ``k``/``v`` (G, H, S, D) with ``bias`` broadcastable to (G, H, Q, S)."""
        q = self.split(self.q_proj(q_in))  # G, H, Q, D
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scaling)
        if self.head_scale is not None:
            out = out * self.head_scale.to(out.dtype)[:, None, None]
        return self.out_proj(out.transpose(1, 2).flatten(2))  # G, Q, C


class FeedForward(nn.Module):
    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.ffn_layernorm = _maybe_ln(cfg.scale_fc, cfg.ffn_dim)
        self.gelu = cfg.activation_fn == "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h) if self.gelu else F.relu(h)
        if self.ffn_layernorm is not None:
            h = self.ffn_layernorm(h)
        return self.fc2(h)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        if not cfg.encoder_normalize_before:
            raise ValueError("post-norm OFA encoders are not supported; every released OFA is pre-norm")
        c = cfg.embed_dim
        self.self_attn = Attention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(c)
        self.attn_ln = _maybe_ln(cfg.scale_attn, c)
        self.ffn = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(c)
        self.w_resid = nn.Parameter(torch.ones(c)) if cfg.scale_resids else None
        self.dropout = 0.0

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x`` (B, S, C), ``bias`` (1, H, S, S)."""
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.kv(h)
        h = self.self_attn.attend(h, k, v, bias)
        if self.attn_ln is not None:
            h = self.attn_ln(h)
        x = x + dropout(h, self.dropout, self.training)
        h = dropout(self.ffn(self.final_layer_norm(x)), self.dropout, self.training)
        return (x if self.w_resid is None else x * self.w_resid) + h


class DecoderLayer(nn.Module):
    """One decoder layer: ``forward`` advances beam hypotheses by one position with a self-attention
    KV cache (captioning); ``forward_seq`` runs every position at once under a causal mask (teacher
    forcing in fine-tuning). Both give the same outputs for the same tokens (tested)."""

    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        if not cfg.decoder_normalize_before:
            raise ValueError("post-norm OFA decoders are not supported; every released OFA is pre-norm")
        c = cfg.embed_dim
        self.self_attn = Attention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(c)
        self.self_attn_ln = _maybe_ln(cfg.scale_attn, c)
        self.cross_attn = Attention(cfg)
        self.cross_attn_layer_norm = nn.LayerNorm(c)
        self.cross_attn_ln = _maybe_ln(cfg.scale_attn, c)
        self.ffn = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(c)
        self.w_resid = nn.Parameter(torch.ones(c)) if cfg.scale_resids else None
        self.dropout = 0.0

    def forward(
        self,
        x: torch.Tensor,
        step: int,
        self_cache: tuple[torch.Tensor, torch.Tensor],
        self_bias: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Advance hypotheses by one position.

        Args:
            x: (N, 1, C) embedding of each hypothesis' newest token, N = G * Q.
            step: position of that token; the cache holds positions ``< step`` and gets ``step`` written.
            self_cache: K and V buffers (N, H, T_max, D).
            self_bias: (1, H, 1, step + 1) position bias for this query row.
            cross_kv: encoder K and V (G, H, S, D); hypotheses ``g*Q .. g*Q+Q-1`` attend group ``g``.
            cross_bias: (1, H, 1, S) position bias, the same for every query of this step.
        """
        n = x.shape[0]
        h = self.self_attn_layer_norm(x)
        k_new, v_new = self.self_attn.kv(h)
        k_cache, v_cache = self_cache
        k_cache[:, :, step : step + 1] = k_new
        v_cache[:, :, step : step + 1] = v_new
        h = self.self_attn.attend(h, k_cache[:, :, : step + 1], v_cache[:, :, : step + 1], self_bias)
        groups = cross_kv[0].shape[0]
        return self._rest(x, h, cross_kv, cross_bias, (groups, n // groups), (n, 1))

    def forward_seq(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_bias: torch.Tensor,
    ) -> torch.Tensor:
        """All T positions of B sequences at once (teacher forcing).

        Args:
            x: (B, T, C) embeddings of the decoder inputs.
            self_bias: (1, H, T, T) position bias with the causal mask (-inf above the diagonal) added.
            cross_kv: encoder K and V (B, H, S, D), one group per sequence.
            cross_bias: (1, H, T, S).
        """
        b, t, _ = x.shape
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.kv(h)
        h = self.self_attn.attend(h, k, v, self_bias)
        return self._rest(x, h, cross_kv, cross_bias, (b, t), (b, t))

    def _rest(self, x: torch.Tensor, h: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor],
              cross_bias: torch.Tensor, grouped: tuple[int, int], flat: tuple[int, int]) -> torch.Tensor:
        """Everything after self-attention: its residual, cross-attention and the FFN. ``grouped`` is
        the (G, Q) view cross-attention takes, ``flat`` the (N, T) layout of ``x``."""
        if self.self_attn_ln is not None:
            h = self.self_attn_ln(h)
        x = x + dropout(h, self.dropout, self.training)

        h = self.cross_attn_layer_norm(x).reshape(*grouped, -1)  # G, Q, C
        h = self.cross_attn.attend(h, cross_kv[0], cross_kv[1], cross_bias).reshape(*flat, -1)
        if self.cross_attn_ln is not None:
            h = self.cross_attn_ln(h)
        x = x + dropout(h, self.dropout, self.training)

        h = dropout(self.ffn(self.final_layer_norm(x)), self.dropout, self.training)
        return (x if self.w_resid is None else x * self.w_resid) + h
