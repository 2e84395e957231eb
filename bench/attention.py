"""Proxy-guided attention: ours vs. dense masked SDPA vs. the official-style bmm formulation.

Shapes default to ViT-B/16 at T=12: 4 proxies + 12 x 196 patches, 12 heads of 64. Each
implementation gets token-major q, k, v [B, tokens, H, d] in the layout it keeps between layers
(ours: framed, proxies repeated per frame, see model/attention.py; the others: the official flat
layout) and returns the same layout; forward alone and forward+backward are timed in one run and
printed with ratios against ours. All agree numerically with a float64 reference (checked first).

    python bench/attention.py                          # CPU, batch 1, fp32
    python bench/attention.py --device cuda --batch 32 # GPU, bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.attention import proxy_block_mask, proxy_guided_attention, to_flat, to_framed  # noqa: E402


def flat_folded(q, k, v, m, t):
    """Our first version: flat layout, per-frame keys gathered by a concat of proxy and frame keys every layer."""
    b, n, h, d = q.shape
    l = (n - m) // t
    out_p = F.scaled_dot_product_attention(q[:, :m].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    q_f = q[:, m:].reshape(b * t, l, h, d).transpose(1, 2)

    def per_frame(x):
        both = torch.cat([x[:, None, :m].expand(b, t, m, h, d), x[:, m:].view(b, t, l, h, d)], dim=2)
        return both.view(b * t, m + l, h, d).transpose(1, 2)
    out_f = F.scaled_dot_product_attention(q_f, per_frame(k), per_frame(v)).transpose(1, 2).reshape(b, t * l, h, d)
    return torch.cat([out_p.transpose(1, 2), out_f], dim=1)


def dense_masked(q, k, v, m, t):
    """One SDPA over all N tokens with the [N, N] block mask (T times the score FLOPs and memory)."""
    l = (q.shape[1] - m) // t
    mask = proxy_block_mask(m, t, l, device=q.device)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)


def official_bmm(q, k, v, m, t):
    """The official ``forward2`` recipe: heads folded into batch, proxy keys tiled per frame, explicit softmax."""
    b, n, h, d = q.shape
    l = (n - m) // t

    def heads_first(x):  # [B,N,H,d] -> [B*H, N, d], a copy as in HF's _shape
        return x.transpose(1, 2).reshape(b * h, n, d)
    q, k, v = heads_first(q) * d**-0.5, heads_first(k), heads_first(v)
    qf = q[:, m:].reshape(b * h * t, l, d)
    kf = torch.cat([k[:, :m].repeat(1, t, 1).view(b * h * t, m, d), k[:, m:].reshape(b * h * t, l, d)], dim=1)
    vf = torch.cat([v[:, :m].repeat(1, t, 1).view(b * h * t, m, d), v[:, m:].reshape(b * h * t, l, d)], dim=1)
    out_f = torch.bmm(torch.softmax(torch.bmm(qf, kf.transpose(1, 2)), dim=-1), vf).view(b * h, t * l, d)
    out_p = torch.bmm(torch.softmax(torch.bmm(q[:, :m], k.transpose(1, 2)), dim=-1), v)
    out = torch.cat([out_p, out_f], dim=1)  # [B*H, N, d]
    return out.view(b, h, n, d).transpose(1, 2)


IMPLS = {"ours (framed SDPA)": proxy_guided_attention, "flat + key concat": flat_folded,
         "dense masked SDPA": dense_masked, "official bmm": official_bmm}
FRAMED = {"ours (framed SDPA)"}
BACKENDS = ("cudnn", "flash", "efficient")


def with_backend(fn, name: str):
    """``fn`` with SDPA restricted to preferring backend ``name`` (others stay as fallbacks)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
    priority = [order[name]] + [b for b in order.values() if b != order[name]] + [SDPBackend.MATH]

    def run(*args):
        with sdpa_kernel(priority, set_priority=True):
            return fn(*args)
    return run


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device: str, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--patches", type=int, default=196)
    p.add_argument("--proxies", type=int, default=4)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    b, m, t, l, h, d = args.batch, args.proxies, args.frames, args.patches, args.heads, args.head_dim
    n = m + t * l
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, n, h, d, device=args.device, dtype=dtype) for _ in range(3))
    # float64 reference: our algorithm, which tests/model/test_attention.py checks against the dense block mask.
    ref = to_flat(proxy_guided_attention(*(to_framed(x.double(), m, t) for x in (q, k, v)), m, t), m, t)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    print(f"device={args.device} dtype={dtype} B={b} M={m} T={t} L={l} N={n} H={h} d={d} "
          f"threads={torch.get_num_threads()}")
    impls = dict(IMPLS)
    if args.device == "cuda":  # which fused kernel SDPA picks matters most for the small per-frame problems
        for backend in BACKENDS:
            impls[f"ours [{backend}]"] = with_backend(proxy_guided_attention, backend)
            FRAMED.add(f"ours [{backend}]")
    rows = []
    for name, fn in impls.items():
        framed = name in FRAMED
        qi, ki, vi = (to_framed(x, m, t) for x in (q, k, v)) if framed else (q, k, v)
        try:
            out = fn(qi, ki, vi, m, t)
            out = to_flat(out, m, t) if framed else out
        except RuntimeError as e:  # a backend that does not support these shapes on this GPU
            print(f"{name}: unavailable ({str(e).splitlines()[0][:80]})")
            continue
        err = (out.double() - ref).abs().max().item()
        assert err < tol, f"{name} disagrees with the float64 reference by {err}"
        qg, kg, vg = (x.clone().requires_grad_() for x in (qi, ki, vi))
        grad = torch.randn_like(qg)

        def fwd(fn=fn, qi=qi, ki=ki, vi=vi):
            with torch.no_grad():
                fn(qi, ki, vi, m, t)

        def fwd_bwd(fn=fn, qg=qg, kg=kg, vg=vg, grad=grad):
            fn(qg, kg, vg, m, t).backward(grad)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        f_s = time_it(fwd, args.device, args.repeats)
        fb_s = time_it(fwd_bwd, args.device, args.repeats)
        mem = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
        rows.append((name, f_s, fb_s, mem, err))
    base_f, base_fb = rows[0][1], rows[0][2]
    print(f"{'implementation':22s} {'fwd ms':>9s} {'x ours':>7s} {'fwd+bwd ms':>11s} {'x ours':>7s} {'peak GiB':>9s} "
          f"{'max err':>8s}")
    for name, f_s, fb_s, mem, err in rows:
        print(f"{name:22s} {f_s * 1e3:9.1f} {f_s / base_f:7.2f} {fb_s * 1e3:11.1f} {fb_s / base_fb:7.2f} {mem:9.2f} "
              f"{err:8.1e}")


if __name__ == "__main__":
    main()
