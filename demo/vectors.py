"""Synthetic embedding collections for the index tests and benchmarks.

Real CLIP-style embeddings are far from uniform on the sphere: they crowd around topics. Uniform
random vectors in 512 dimensions have no near neighbours at all (every pair is at cosine ~0), so no
approximate index can find them faster than a full scan, and benchmarks on them say nothing about
real collections. ``clustered`` draws unit vectors around ``topics`` random centres, each point a
centre plus isotropic noise, queries from the same mixture but not in the collection.
"""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, *, topics: int = 1000, noise: float = 0.6, seed: int = 0,
              dtype=np.float32) -> np.ndarray:
    """``n`` unit vectors [n, dim] around ``topics`` centres; ``noise`` is the per-axis spread relative
    to the centre's (1/sqrt(dim)) scale, so cosine to the centre is about 1/sqrt(1+noise^2)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=dtype)
    for i in range(0, n, 1 << 16):
        m = min(1 << 16, n - i)
        x = centres[rng.integers(0, topics, m)] + rng.standard_normal((m, dim)).astype(np.float32) * (noise / dim ** 0.5)
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
