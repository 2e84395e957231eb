"""Proxy-guided attention against dense attention with a hand-built block mask (float64).

Run: .venv/bin/python -m pytest tests/model/test_attention.py -q
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.attention import Attention, proxy_block_mask, proxy_guided_attention, proxy_key_mask, to_flat, to_framed


def _ours_flat(q, k, v, m, t):
    """Our attention seen from the flat layout: frame the inputs, attend, keep frame 0's proxy copy."""
    out = proxy_guided_attention(*(to_framed(x, m, t) for x in (q, k, v)), m, t)
    return to_flat(out, m, t), out


def _dense_reference(q, k, v, allowed):
    """Explicit softmax(QK^T/sqrt(d) masked) V on [B, N, H, d] inputs."""
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v)


def test_layouts_round_trip_and_proxy_key_mask():
    x = torch.arange(2 * (2 + 3 * 4)).view(2, 14, 1)  # M=2, T=3, L=4
    framed = to_framed(x, 2, 3)
    assert framed.shape == (2, 18, 1)
    assert framed[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 6, 7, 8, 9, 0, 1, 10, 11, 12, 13]
    assert torch.equal(to_flat(framed, 2, 3), x)
    keep = proxy_key_mask(2, 3, 6)
    assert keep.shape == (2, 18)
    assert keep[1].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1]


def test_block_mask_matches_the_rule_written_out():
    # M=2 proxies, T=2 frames of L=2 patches: tokens p0 p1 | a0 a1 | b0 b1.
    expected = torch.tensor([
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1],
        [1, 1, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(proxy_block_mask(2, 2, 2), expected)


@pytest.mark.parametrize("b,m,t,l,h,d", [(1, 4, 1, 9, 2, 8), (2, 4, 3, 5, 3, 4), (3, 1, 12, 4, 2, 8),
                                         (2, 4, 32, 2, 1, 16), (1, 2, 5, 7, 4, 2)])
def test_proxy_attention_equals_dense_block_masked_attention(b, m, t, l, h, d):
    g = torch.Generator().manual_seed(b * 1000 + t * 10 + l)
    n = m + t * l
    q, k, v = (torch.randn(b, n, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    ours, framed = _ours_flat(q, k, v, m, t)
    ref = _dense_reference(q, k, v, proxy_block_mask(m, t, l))
    assert ours.shape == (b, n, h, d) and framed.shape == (b, t * (m + l), h, d)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # Every frame's proxy slots carry the same proxy outputs, so the copies stay equal layer after layer.
    copies = framed.view(b, t, m + l, h, d)[:, :, :m]
    assert torch.equal(copies, copies[:, :1].expand_as(copies))


def test_proxy_attention_gradients_equal_dense_masked_sdpa():
    b, m, t, l, h, d = 2, 4, 3, 6, 2, 8
    n = m + t * l
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(b, n, h, d, generator=g, dtype=torch.float64) for _ in range(3)]
    ours_in = [x.clone().requires_grad_() for x in base]
    ref_in = [x.clone().requires_grad_() for x in base]
    ours = _ours_flat(*ours_in, m, t)[0]
    mask = proxy_block_mask(m, t, l)
    ref = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in ref_in), attn_mask=mask).transpose(1, 2)
    w = torch.randn(b, n, h, d, generator=g, dtype=torch.float64)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    for a, r in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-11, atol=1e-11)


def test_patches_never_see_other_frames():
    b, m, t, l, h, d = 1, 4, 3, 5, 2, 4
    s = m + l
    q, k, v = (to_framed(torch.randn(b, m + t * l, h, d, dtype=torch.float64), m, t) for _ in range(3))
    before = proxy_guided_attention(q, k, v, m, t)
    k2, v2 = k.clone(), v.clone()
    frame2 = slice(2 * s + m, 3 * s)  # frame 2's patches
    k2[:, frame2] += 1.0
    v2[:, frame2] -= 2.0
    after = proxy_guided_attention(q, k2, v2, m, t)
    assert torch.equal(after[:, m:s], before[:, m:s]) and torch.equal(after[:, s + m:2 * s], before[:, s + m:2 * s])
    assert not torch.allclose(after[:, :m], before[:, :m])  # proxies see everything


def test_attention_module_fused_qkv_equals_separate_projections():
    torch.manual_seed(0)
    attn = Attention(16, 4).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    q, k, v = (p(x).view(2, 7, 4, 4) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()
    expected = attn.out_proj(_dense_reference(q, k, v, allowed).reshape(2, 7, 16))
    torch.testing.assert_close(attn(x, causal=True), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4)
