"""Self-attention of the CLIP-ViP towers, always through ``scaled_dot_product_attention``.

Shape legend: B batch (videos), T frames, M video proxies, L patches per frame, H heads, d head
dim, D = H*d width.

Proxy-guided attention: the M proxy queries attend to every token; a patch query
of frame t attends to the M proxies plus the L patches of frame t. Two token layouts:

- flat ``[p_0..p_M-1, f0 patches, f1 patches, ...]``, N = M + T*L tokens: the official layout, used
  by the dense references in tests and benchmarks;
- framed ``[p, f0 patches, p, f1 patches, ...]``, T*(M+L) tokens: the proxies are repeated at the
  head of every frame. The vision tower keeps its hidden state in this layout (all copies stay
  equal), so per-frame keys are plain strided views of the QKV projection: no gather or concat of
  keys per layer, at the price of 2% more token-wise FLOPs (M/(M+L) for B/16).

Neither builds the N x N block mask: frames are folded into the batch, and SDPA runs one small
dense problem per frame (fused flash / cuDNN kernels on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_sdpa = F.scaled_dot_product_attention


def to_framed(x: torch.Tensor, num_proxies: int, num_frames: int) -> torch.Tensor:
    """Flat [B, M + T*L, ...] -> framed [B, T*(M+L), ...] (proxies repeated per frame)."""
    b, n = x.shape[:2]
    m, t = num_proxies, num_frames
    l = (n - m) // t
    proxies = x[:, None, :m].expand(b, t, m, *x.shape[2:])
    frames = x[:, m:].reshape(b, t, l, *x.shape[2:])
    return torch.cat([proxies, frames], dim=2).flatten(1, 2)


def to_flat(x: torch.Tensor, num_proxies: int, num_frames: int) -> torch.Tensor:
    """Framed [B, T*(M+L), ...] -> flat [B, M + T*L, ...], keeping frame 0's proxy copy."""
    b, n = x.shape[:2]
    m, t = num_proxies, num_frames
    framed = x.reshape(b, t, n // t, *x.shape[2:])
    return torch.cat([framed[:, 0, :m], framed[:, :, m:].flatten(1, 2)], dim=1)


def proxy_key_mask(num_proxies: int, num_frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Boolean [M, T*(M+L)] for the proxy queries on the framed layout: every key except the repeated proxy copies.

    This is M rows (4), not the N x N mask; it only removes duplicates so each proxy key counts once.
    """
    pos = torch.arange(num_frames * tokens_per_frame, device=device)
    keep = (pos < tokens_per_frame) | (pos % tokens_per_frame >= num_proxies)
    return keep.expand(num_proxies, -1)


def proxy_guided_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_proxies: int,
                           num_frames: int) -> torch.Tensor:
    """Proxy-guided attention on the framed layout.

    Args:
        q: queries [B, T*(M+L), H, d] in the framed layout (see the module docstring).
        k: keys, same layout.
        v: values, same layout.
        num_proxies: M.
        num_frames: T.

    Returns:
        [B, T*(M+L), H, d], framed; every frame's proxy slots hold the (same) proxy outputs.
    """
    b, n, h, d = q.shape
    m, t = num_proxies, num_frames
    s = n // t  # M + L tokens per frame
    assert s * t == n and s > m, f"{n} tokens do not split into {t} frames of {m} proxies + patches"
    # Per frame: its M+L queries over its own M+L keys; all are views (strided, last dim contiguous).
    def frames(x):
        return x.reshape(b * t, s, h, d).transpose(1, 2)  # [BT,H,M+L,d], a view
    out_f = _sdpa(frames(q), frames(k), frames(v)).transpose(1, 2).reshape(b, t, s, h, d)
    # Proxies (frame 0's copy) over all keys, each proxy key counted once.
    mask = proxy_key_mask(m, t, s, device=q.device)  # [M, T*(M+L)]
    out_p = _sdpa(q[:, :m].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                  attn_mask=mask if t > 1 else None)  # [B,H,M,d]
    # The per-frame outputs of the proxy copies are replaced by the true proxy outputs.
    out_p = out_p.transpose(1, 2)[:, None].expand(b, t, m, h, d)
    return torch.cat([out_p, out_f[:, :, m:]], dim=2).reshape(b, n, h, d)


def proxy_block_mask(num_proxies: int, num_frames: int, patches: int, device=None) -> torch.Tensor:
    """The dense boolean mask [N, N] (True = may attend) on the flat layout that proxy-guided attention equals.

    Used only by tests and benchmarks as the reference; the model never builds it.
    """
    m, t, l = num_proxies, num_frames, patches
    group = torch.cat([torch.full((m,), -1, device=device), torch.arange(t, device=device).repeat_interleave(l)])
    is_proxy = group < 0
    return is_proxy[:, None] | is_proxy[None, :] | (group[:, None] == group[None, :])


class Attention(nn.Module):
    """HF-CLIP-named attention (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) with one fused QKV GEMM.

    The three projections stay separate modules so checkpoints map 1:1 to HF CLIP; their weights
    are concatenated at run time (a few MB, negligible next to the activations) so the input is
    read once by a single [3D, D] GEMM.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}: pick heads that divide it")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mode: str = "full", num_proxies: int = 0, num_frames: int = 1,
                mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Attend within ``x`` [B, N, D].

        Args:
            x: tokens [B, N, D].
            mode: "full" (dense, optionally with ``mask``/``causal``) or "proxy" (proxy-guided).
            num_proxies: M, for mode "proxy".
            num_frames: T, for mode "proxy".
            mask: boolean [B, 1, N, N] (True = attend) for mode "full", or None.
            causal: causal attention for mode "full" (only when ``mask`` is None).
        """
        b, n, width = x.shape
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # [3D,D]
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        qkv = F.linear(x, w, bias).view(b, n, 3, self.heads, width // self.heads)  # [B,N,3,H,d]
        q, k, v = qkv.unbind(2)  # [B,N,H,d] each
        if mode == "proxy":
            out = proxy_guided_attention(q, k, v, num_proxies, num_frames)
        else:
            out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                        is_causal=causal and mask is None).transpose(1, 2)
        return self.out_proj(out.reshape(b, n, width))
