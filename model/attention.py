"""Self-attention of the CLIP-ViP towers, always through ``scaled_dot_product_attention``.

Shape legend: B batch (videos), T frames, M video proxies, L patches per frame,
N = M + T*L tokens, H heads, d head dim, D = H*d width.

Proxy-guided attention (spec section 2): the M proxy queries attend to all N keys; a patch query
of frame t attends to the M proxies plus the L patches of frame t. Rather than masking a dense
N x N score matrix (which costs T times the FLOPs and memory), the frames are folded into the
batch dimension so each frame runs one small dense SDPA over M + L keys; SDPA then picks its fused
kernels (flash / memory-efficient on GPU) because no mask is involved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_sdpa = F.scaled_dot_product_attention


def proxy_guided_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_proxies: int,
                           num_frames: int) -> torch.Tensor:
    """Proxy-guided attention on token-major inputs.

    Args:
        q: queries [B, N, H, d], tokens ordered ``[proxies, frame 0 patches, frame 1 patches, ...]``.
        k: keys, same layout.
        v: values, same layout.
        num_proxies: M.
        num_frames: T; N - M must be divisible by it.

    Returns:
        Attention output [B, N, H, d] in the input token order.
    """
    b, n, h, d = q.shape
    m, t = num_proxies, num_frames
    l = (n - m) // t
    assert m + t * l == n, f"{n} tokens do not split into {m} proxies + {t} frames"
    # Proxy queries: one dense SDPA over every key (transposes are free views; SDPA takes strides).
    out_p = _sdpa(q[:, :m].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B,H,M,d]
    # Patch queries: frames become batch entries; keys = the M proxy keys (broadcast, written once
    # into the concatenation) followed by the frame's own L keys.
    q_f = q[:, m:].reshape(b * t, l, h, d).transpose(1, 2)  # [BT,H,L,d]

    def per_frame(x: torch.Tensor) -> torch.Tensor:
        proxies = x[:, None, :m].expand(b, t, m, h, d)  # [B,T,M,H,d] (no copy)
        frames = x[:, m:].view(b, t, l, h, d)  # [B,T,L,H,d]
        return torch.cat([proxies, frames], dim=2).view(b * t, m + l, h, d).transpose(1, 2)  # [BT,H,M+L,d]

    out_f = _sdpa(q_f, per_frame(k), per_frame(v))  # [BT,H,L,d]
    out_f = out_f.transpose(1, 2).reshape(b, t * l, h, d)
    return torch.cat([out_p.transpose(1, 2), out_f], dim=1)  # [B,N,H,d]


def proxy_block_mask(num_proxies: int, num_frames: int, patches: int, device=None) -> torch.Tensor:
    """The dense boolean mask [N, N] (True = may attend) that proxy-guided attention equals.

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
